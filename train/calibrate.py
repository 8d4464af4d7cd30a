"""Choose a checkpoint's no-target threshold on held-out data and write it into the checkpoint.

    python -m train.calibrate --checkpoint assets/checkpoints/mabp-lite-synthgres.pt --world mixed \\
        --samples 1000 --out runs/calibrated/mabp-lite-synthgres.pt

MABP decides "no target" by the argmax of each NT head (official `inference`: a head votes no target
when its no-target probability exceeds 0.5) and combines the heads by the no-target rule (`any` by
default). A model trained briefly may rank no-target expressions well and still put many of them
below 0.5. This tool scores a grid of thresholds on a calibration set, from one forward pass, and
keeps the one with the highest gIoU there (gIoU counts a correct "no target" as 1 and a false one as 0,
so it weighs N-acc against T-acc and the masks). Ties go to the threshold nearest 0.5.

The calibration set is never a split that is reported. SynthGRES: its *train* distribution drawn from
a stream that training does not read (base seed `CALIBRATION_SEED`, the training stream uses the
default base seed), so val / testA / testB figures measured afterwards stay held-out estimates.
A real dataset: `--dataset grefcoco --root ... --split <a split you do not report>`.

The written checkpoint is the input with `config.inference.nt_threshold` set and an `nt_calibration`
record (data, seed, n, rule, every threshold's figures, the choice); the weights are untouched and the
checksum is renewed. `python -m train.evaluate` and the app use the stored threshold by default;
`--nt-threshold 0.5` restores the official argmax.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mabp.postprocess import NT_RULES
from mabp.variants import has_nt_branch

# The base seed of the calibration stream: any value other than the training stream's default
# (train.data.synthgres.dataset.DEFAULT_BASE_SEED) gives scenes that training never saw.
CALIBRATION_SEED = 0xCA11B

DEFAULT_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95, 0.5 included


def choose_threshold(per_threshold: Dict[float, Dict[str, Any]], metric: str = "gIoU") -> float:
    """The threshold with the best `metric`; ties go to the one nearest 0.5 (the official argmax).

    Args:
        per_threshold: {threshold: metrics dict} (train.evaluate's "per_nt_threshold").
        metric: the key to maximise.
    Raises: ValueError when no threshold has a value for `metric`.
    """
    scored = [(float(m[metric]), -abs(t - 0.5), t) for t, m in per_threshold.items() if m.get(metric) is not None]
    if not scored:
        raise ValueError(f"no threshold has a {metric} value")
    return max(scored)[2]


def write_calibrated(src: Path, dst: Path, threshold: float, record: Dict[str, Any],
                     flip_tta: Optional[bool] = None) -> Path:
    """Copy checkpoint `src` to `dst` with config.inference.nt_threshold = `threshold` and the
    `nt_calibration` record; weights untouched, checksum renewed. `flip_tta` (not None) also sets
    config.inference.flip_tta: the threshold was chosen on flip-averaged answers. Raises CheckpointError /
    FileNotFoundError for an unreadable source and CheckpointWriteError when `dst` cannot be written."""
    from mabp.registry import content_digest, load_checkpoint, write_checkpoint_file

    ckpt = load_checkpoint(src)
    ckpt["config"].setdefault("inference", {})["nt_threshold"] = float(threshold)
    if flip_tta is not None:
        ckpt["config"]["inference"]["flip_tta"] = bool(flip_tta)
    ckpt["nt_calibration"] = record
    ckpt.pop("checksum", None)
    ckpt["checksum"] = {"sha256": content_digest(ckpt)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    return write_checkpoint_file(ckpt, dst)


def format_grid(per_threshold: Dict[float, Dict[str, Any]], chosen: float, current: float) -> str:
    """A markdown table of every threshold's gIoU / cIoU / N-acc / T-acc, the choice and the current one marked."""
    def f(v: Optional[float]) -> str:
        return "–" if v is None else f"{v:.2f}"

    lines = ["| NT threshold | gIoU | cIoU | N-acc | T-acc | |", "|---|---|---|---|---|---|"]
    for t in sorted(per_threshold):
        m = per_threshold[t]
        mark = " ".join(x for x, on in (("**chosen**", t == chosen), ("current", t == current)) if on)
        lines.append(f"| {t:g} | {f(m.get('gIoU'))} | {f(m.get('cIoU'))} | {f(m.get('N-acc'))} | "
                     f"{f(m.get('T-acc'))} | {mark} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="an MABP checkpoint of this project")
    p.add_argument("--out", default=None, help="where to write the calibrated checkpoint (default: only report)")
    p.add_argument("--dataset", default="synthgres", help="synthgres (default) or a real dataset name")
    p.add_argument("--split", default=None,
                   help="synthgres: train (default; the calibration stream); a real dataset: a split you do not report")
    p.add_argument("--root", default=None, help="real datasets: their folder")
    p.add_argument("--world", choices=("shapes", "photo", "mixed"), default=None,
                   help="synthgres world (default: the one in the checkpoint's training config, else shapes)")
    p.add_argument("--samples", type=int, default=1000, help="calibration expressions (default 1000)")
    p.add_argument("--seed", type=int, default=CALIBRATION_SEED, help="synthgres: base seed of the calibration stream")
    p.add_argument("--grid", type=float, nargs="+", default=list(DEFAULT_GRID), help="thresholds to score")
    p.add_argument("--nt-rule", choices=NT_RULES, default=None, help="no-target rule (default: the checkpoint's)")
    p.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                   help="calibrate on flip-averaged answers (mabp/flip_tta.py) and store inference.flip_tta in "
                        "--out (default: the checkpoint's setting, kept as it is)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    return p


def _world_of(ckpt: Dict[str, Any]) -> Optional[str]:
    train_cfg = ckpt.get("train_config") or {}
    kw = (train_cfg.get("data") or {}).get("kwargs") or {}
    return kw.get("world")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from mabp.registry import CheckpointError, build_mabp, load_checkpoint
    from train.data import build_dataset
    from train.evaluate import evaluate_model

    if args.samples < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        print("error: --samples, --batch-size and --threads must be >= 1", file=sys.stderr)
        return 2
    bad = [t for t in args.grid if not 0.0 < t < 1.0]
    if bad:
        print(f"error: thresholds must be strictly between 0 and 1, got {bad}", file=sys.stderr)
        return 2
    src = Path(args.checkpoint)
    try:
        ckpt = load_checkpoint(src)
        model = build_mabp(checkpoint=ckpt).eval()
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not has_nt_branch(model.cfg):
        print("error: this model has no no-target branch (it decides emptiness by min_pixels): nothing to "
              "calibrate", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    synth = args.dataset.lower() == "synthgres"
    split = args.split or ("train" if synth else None)
    if split is None:
        print("error: a real dataset needs --split (one you do not report on)", file=sys.stderr)
        return 2
    world = args.world or (_world_of(ckpt) if synth else None) or ("shapes" if synth else None)
    kw: Dict[str, Any] = {"size": model.cfg.image_size, "world": world, "seed": args.seed,
                          "length": args.samples} if synth else {}
    try:
        dataset = build_dataset(args.dataset, split, root=args.root, mode="eval", **kw)
    except Exception as exc:  # noqa: BLE001 - a missing package / folder: say what, not a traceback
        print(f"error: cannot build the calibration data: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    grid = sorted({round(float(t), 4) for t in args.grid} | {0.5})
    current = float(model.cfg.inference.nt_threshold)
    res = evaluate_model(model, dataset, batch_size=args.batch_size, nt_rule=args.nt_rule, limit=args.samples,
                         progress=not args.no_progress, nt_thresholds=grid, desc="calibrate",
                         flip_tta=args.flip_tta)
    per = res["per_nt_threshold"]
    chosen = choose_threshold(per)
    where = (f"synthgres {split} stream, {world} world, base seed {args.seed}" if synth
             else f"{args.dataset} {split}")
    print(f"calibration on {res['n']} expressions ({where}), no-target rule '{res['nt_rule']}'"
          f"{', flip TTA' if res['flip_tta'] else ''}:\n")
    print(format_grid(per, chosen, current))
    print(f"\nchosen no-target threshold: {chosen:g} (gIoU {per[chosen]['gIoU']:.2f} against "
          f"{per[0.5]['gIoU']:.2f} at 0.5, the official argmax)")
    if args.out:
        record: Dict[str, Any] = {
            "data": where, "dataset": args.dataset, "split": split, "world": world,
            "seed": args.seed if synth else None, "n": int(res["n"]), "nt_rule": res["nt_rule"],
            "criterion": "gIoU", "chosen": chosen, "previous": current, "flip_tta": bool(res["flip_tta"]),
            "grid": {f"{t:g}": {k: per[t].get(k) for k in ("gIoU", "cIoU", "N-acc", "T-acc")} for t in grid},
        }
        try:
            dst = write_calibrated(src, Path(args.out), chosen, record, flip_tta=args.flip_tta)
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {dst} ({dst.stat().st_size / 2**20:.1f} MB): inference.nt_threshold = {chosen:g}"
              f", inference.flip_tta = {bool(res['flip_tta'])}")
    return 0


__all__: List[str] = ["CALIBRATION_SEED", "DEFAULT_GRID", "choose_threshold", "write_calibrated", "format_grid", "main"]

if __name__ == "__main__":
    sys.exit(main())
