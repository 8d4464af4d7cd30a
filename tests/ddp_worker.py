"""Run by tests/test_ddp.py under torchrun: one rank of a tiny DDP training run.

    python -m torch.distributed.run --nproc_per_node=2 ... tests/ddp_worker.py OUT_DIR [key=value ...]

Trains through `train.fit.fit` (the CLI's code path) and, at the last step, writes this rank's weights
to OUT_DIR/rank<r>.pt so the test can check that every rank ends with the same model.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.fit import fit  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)

    def dump(trainer) -> None:
        if trainer.step == trainer.cfg["schedule"]["max_steps"]:
            torch.save(trainer.bare_model.state_dict(), out / f"rank{trainer.dist.rank}.pt")

    fit(str(ROOT / "train" / "configs" / "tiny_synthgres.yaml"),
        [f"train.output_dir={out}"] + sys.argv[2:], hooks=[dump])


if __name__ == "__main__":
    main()
