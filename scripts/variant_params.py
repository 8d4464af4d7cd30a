"""Parameter counts of the paper-size ablation variants and the ReLA baseline (derived analytically from the module shapes; the paper gives none).

    .venv/bin/python scripts/variant_params.py [preset]

Builds each variant of mabp.variants.VARIANTS (random weights, ~6 s each at `paper` size) and prints
the total, the decoder's share, and the difference to the full MABP.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mabp import build_mabp  # noqa: E402
from mabp.variants import VARIANTS  # noqa: E402


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(preset: str = "paper") -> None:
    rows = []
    for name, overrides in VARIANTS.items():
        t0 = time.perf_counter()
        model = build_mabp(preset, **overrides)
        rows.append((name, count(model), count(model.decoder), time.perf_counter() - t0))
        del model
    full = next(total for name, total, _, _ in rows if not VARIANTS[name])
    print(f"{'variant':<18} {'total':>13} {'decoder':>12} {'vs full':>12}  build")
    for name, total, dec, seconds in rows:
        print(f"{name:<18} {total:>13,} {dec:>12,} {total - full:>+12,}  {seconds:.1f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
