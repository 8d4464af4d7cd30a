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
from typing import Any, Dict, List, Optional, Sequence, Union

from mabp.mask_refine import REFINE_MODES, GuidedRefine, refine_label
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
                     flip_tta: Optional[bool] = None, refine: Union[None, bool, GuidedRefine] = None) -> Path:
    """Copy checkpoint `src` to `dst` with config.inference.nt_threshold = `threshold` and the
    `nt_calibration` record; weights untouched, checksum renewed. `flip_tta` (not None) also sets
    config.inference.flip_tta: the threshold was chosen on flip-averaged answers. `refine` (not None)
    sets the mask refinement the threshold was chosen with: False = inference.refine "none", a
    GuidedRefine = "guided" with its radius and eps. Raises CheckpointError / FileNotFoundError for an
    unreadable source and CheckpointWriteError when `dst` cannot be written."""
    from mabp.registry import content_digest, load_checkpoint, write_checkpoint_file

    ckpt = load_checkpoint(src)
    ckpt["config"].setdefault("inference", {})["nt_threshold"] = float(threshold)
    if flip_tta is not None:
        ckpt["config"]["inference"]["flip_tta"] = bool(flip_tta)
    if refine is False:
        ckpt["config"]["inference"]["refine"] = "none"
    elif isinstance(refine, GuidedRefine):
        ckpt["config"]["inference"].update(refine="guided", refine_radius=int(refine.radius),
                                           refine_eps=float(refine.eps))
    elif refine is not None:
        raise ValueError(f"refine must be None, False or a GuidedRefine, got {refine!r}")
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


def refine_candidates(inference: Any, mode: Optional[str], radii: Optional[Sequence[int]],
                      eps: Optional[Sequence[float]]) -> Optional[List[Union[bool, GuidedRefine]]]:
    """The mask refinements to choose among: None when nothing was asked (the checkpoint's setting is
    kept), [False] for "none", else False (no refinement, first, so it wins ties) and every guided
    filter of radii x eps (each defaulting to the checkpoint's value). Raises ValueError for invalid
    values or radii / eps given with mode "none"."""
    if mode is None and radii is None and eps is None:
        return None
    if mode == "none":
        if radii is not None or eps is not None:
            raise ValueError("--refine-radii / --refine-eps do not go with --refine none")
        return [False]
    rs = list(radii) if radii is not None else [int(inference.refine_radius)]
    es = list(eps) if eps is not None else [float(inference.refine_eps)]
    return [False] + [GuidedRefine(int(r), float(e)) for r in rs for e in es]


def format_refine_grid(table: Dict[str, Dict[str, Any]], chosen: str) -> str:
    """A markdown table of each refinement's gIoU / cIoU / Pr@0.9, the choice marked."""
    def f(v: Optional[float]) -> str:
        return "–" if v is None else f"{v:.2f}"

    lines = ["| mask refinement | gIoU | cIoU | Pr@0.9 | |", "|---|---|---|---|---|"]
    for key, m in table.items():
        lines.append(f"| {key} | {f(m.get('gIoU'))} | {f(m.get('cIoU'))} | {f(m.get('Pr@0.9'))} | "
                     f"{'**chosen**' if key == chosen else ''} |")
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
    p.add_argument("--refine", choices=REFINE_MODES, default=None,
                   help="mask refinement to calibrate with and store in --out: none, or guided (the guided "
                        "filter, mabp/mask_refine.py; not the paper's protocol) with --refine-radii / "
                        "--refine-eps (default: the checkpoint's setting, kept as it is)")
    p.add_argument("--refine-radii", type=int, nargs="+", default=None, metavar="R",
                   help="guided filter radii to choose from (pixels of the model input; default: the checkpoint's)")
    p.add_argument("--refine-eps", type=float, nargs="+", default=None, metavar="E",
                   help="guided filter regularisers to choose from (squared [0, 1] colour units; default: the "
                        "checkpoint's)")
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
    try:
        candidates = refine_candidates(model.cfg.inference, args.refine, args.refine_radii, args.refine_eps)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refine: Union[None, bool, GuidedRefine] = None  # None: the checkpoint's setting, kept
    refine_table: Dict[str, Dict[str, Any]] = {}
    if candidates is not None and len(candidates) > 1:
        # Pass 1: every refinement at the checkpoint's NT decision (the masks do not move the decision);
        # pass 2 below chooses the NT threshold with the chosen one (a false "no target" costs its IoU).
        options = [None if c is False else c for c in candidates]  # the loop's "no refinement" is None
        first = evaluate_model(model, dataset, batch_size=args.batch_size, nt_rule=args.nt_rule, limit=args.samples,
                               progress=not args.no_progress, desc="calibrate masks", flip_tta=args.flip_tta,
                               refine=False, refine_options=options)
        refine_table = {k: {m: v.get(m) for m in ("gIoU", "cIoU", "Pr@0.9")} for k, v in first["per_refine"].items()}
        keys = [refine_label(o) for o in options]
        # the best gIoU; ties go to the earlier candidate ("none" comes first)
        best = max(range(len(candidates)), key=lambda i: (refine_table[keys[i]]["gIoU"], -i))
        refine = candidates[best]
        print("mask refinement on the calibration set (checkpoint's no-target threshold "
              f"{current:g}):\n\n{format_refine_grid(refine_table, keys[best])}\n")
    elif candidates is not None:
        refine = candidates[0]
    res = evaluate_model(model, dataset, batch_size=args.batch_size, nt_rule=args.nt_rule, limit=args.samples,
                         progress=not args.no_progress, nt_thresholds=grid, desc="calibrate",
                         flip_tta=args.flip_tta, refine=refine, refine_options=())
    per = res["per_nt_threshold"]
    chosen = choose_threshold(per)
    where = (f"synthgres {split} stream, {world} world, base seed {args.seed}" if synth
             else f"{args.dataset} {split}")
    print(f"calibration on {res['n']} expressions ({where}), no-target rule '{res['nt_rule']}'"
          f"{', flip TTA' if res['flip_tta'] else ''}, mask refinement {res['refine']}:\n")
    print(format_grid(per, chosen, current))
    print(f"\nchosen no-target threshold: {chosen:g} (gIoU {per[chosen]['gIoU']:.2f} against "
          f"{per[0.5]['gIoU']:.2f} at 0.5, the official argmax)")
    if args.out:
        record: Dict[str, Any] = {
            "data": where, "dataset": args.dataset, "split": split, "world": world,
            "seed": args.seed if synth else None, "n": int(res["n"]), "nt_rule": res["nt_rule"],
            "criterion": "gIoU", "chosen": chosen, "previous": current, "flip_tta": bool(res["flip_tta"]),
            "refine": res["refine"], "refine_grid": refine_table or None,
            "grid": {f"{t:g}": {k: per[t].get(k) for k in ("gIoU", "cIoU", "N-acc", "T-acc")} for t in grid},
        }
        try:
            dst = write_calibrated(src, Path(args.out), chosen, record, flip_tta=args.flip_tta, refine=refine)
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {dst} ({dst.stat().st_size / 2**20:.1f} MB): inference.nt_threshold = {chosen:g}"
              f", inference.flip_tta = {bool(res['flip_tta'])}, mask refinement {res['refine']}")
    return 0


__all__: List[str] = ["CALIBRATION_SEED", "DEFAULT_GRID", "choose_threshold", "write_calibrated", "format_grid",
                      "refine_candidates", "format_refine_grid", "main"]

if __name__ == "__main__":
    sys.exit(main())
