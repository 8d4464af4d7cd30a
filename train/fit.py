"""Train MABP: `python -m train.fit --config train/configs/NAME.yaml [section.key=value ...]`.

Examples::

    python -m train.fit --config train/configs/tiny_synthgres.yaml
    python -m train.fit --config train/configs/lite_synthgres.yaml train.batch_size=4 optim.lr=1e-4
    python -m train.fit --config train/configs/paper_grefcoco.yaml \\
        model.overrides.text.path=/models/bert-base-uncased model.overrides.visual.weights=/models/swin_base.pth
    torchrun --nproc_per_node=2 -m train.fit --config train/configs/paper_grefcoco.yaml ...
    python -m train.fit --config ... --print-config       # show the resolved config and exit

Overrides are `section.key=value` with YAML values (numbers, null, [lists], {maps}). `train.batch_size`
is per process: the total batch is batch_size x the number of processes.

Exit codes: 0 finished, 130 stopped by Ctrl-C/SIGTERM (last.pt saved; run the same command to resume),
1 the run failed (non-finite losses, a checkpoint that could not be written, e.g. disk full: the previous
one is kept), 2 bad config/arguments, bad dataset files, an unusable checkpoint (model.checkpoint, or a
last.pt to resume from with no good previous one), or a run folder in use by another run. Errors are
one line.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.fit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default=None, help="YAML training config (train/configs/*.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (YAML values)")
    return p


def fit(config: Optional[str] = None, overrides: Sequence[str] = (), extra: Optional[Dict[str, Any]] = None,
        hooks: Sequence[Callable] = ()) -> Dict[str, Any]:
    """Library entry point: resolve the config, train, clean up the process group. Returns the summary
    of `Trainer.fit()` (step, best, interrupted, last_metrics, output_dir)."""
    # Imported here so `--help` and config errors answer before torch is loaded.
    from train import distributed as D
    from train.config import check_placeholders, load_config
    from train.engine import Trainer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation happens in DataLoader workers
    cfg = load_config(config, overrides, extra)
    check_placeholders(cfg)
    try:
        return Trainer(cfg, hooks=hooks).fit()
    finally:
        D.cleanup()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command line (not a call from Python): run on tcmalloc (train/allocator.py)
        from train.allocator import reexec_with_tcmalloc

        reexec_with_tcmalloc("train.fit", sys.argv[1:])
    from train.config import ConfigError, load_config
    from train.data.synthgres.photo import PhotoWorldUnavailable

    try:
        if args.print_config:
            print(yaml.safe_dump(load_config(args.config, args.overrides), sort_keys=False), end="")
            return 0
        from mabp.registry import CheckpointError, CheckpointWriteError
        from train.engine import NonFiniteLossError
        from train.data.refer_common import DatasetError
        from train.run_lock import RunLockedError

        try:
            result = fit(args.config, args.overrides)
        except (NonFiniteLossError, CheckpointWriteError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (CheckpointError, RunLockedError, DatasetError) as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
    except (ConfigError, FileNotFoundError, PhotoWorldUnavailable) as exc:  # the last names the apt packages
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return 130 if result["interrupted"] else 0
    if result["interrupted"]:
        print(f"interrupted at step {result['step']}; resume with the same command", file=sys.stderr)
        return 130
    best = result.get("best") or {}
    if best.get("value") is not None:
        print(f"done: step {result['step']}, best val {best['metric']} {best['value']:.2f} at step {best['step']} "
              f"({result['output_dir']}/best.pt)")
    else:
        print(f"done: step {result['step']} ({result['output_dir']}/last.pt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
