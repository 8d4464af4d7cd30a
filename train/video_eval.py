"""J&F evaluation of an MABP checkpoint on a MeViS-layout split (paper §IV-D, Table VII), frame by frame.

    python -m train.evaluate --checkpoint C --dataset mevis --split valid_u --root DIR

Protocol (MeViS's ``eval_mevis.py`` with the DAVIS 2017 metrics, `mabp.video_metrics`):

* every frame of every video is segmented as an independent image (`MABPPredictor.predict_video`: the
  frame squashed to the model size, each expression encoded once per clip), the mask brought back to the
  frame's size (bilinear logits, threshold), emptied when the no-target branch says "nothing" (the
  predictor's `mask`, what a GRES model outputs);
* per expression: J and F averaged over its frames; then averaged over expressions; J&F = (J + F) / 2;
* empty cases as the DAVIS code decides them (empty GT and empty prediction: J = F = 1).

The `valid` split has no masks (MeViS scores it on its server only): the evaluator refuses it with a
message. `train.evaluate` dispatches `--dataset mevis` here (`main_from_args`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from mabp.video_metrics import PAPER_MEVIS, VideoJFMeter


def evaluate_video(model: torch.nn.Module, dataset: Any, limit: Optional[int] = None,
                   threshold: Optional[float] = None, nt_rule: Optional[str] = None,
                   progress: bool = True, nt_threshold: Optional[float] = None) -> Dict[str, Any]:
    """J, F, J&F (×100) of `model` on a `train.data.mevis.MeViS` split (any mode; masks required).

    Args:
        model: an MABP (wrapped in an `MABPPredictor` here).
        dataset: a MeViS dataset with masks.
        limit: evaluate only the first `limit` expressions (file order).
        threshold, nt_rule, nt_threshold: as `MABPPredictor.predict` (default: the model config's).
        progress: a tqdm bar over frames.
    Returns: {"metrics": {J, F, J&F, n_expressions, n_frames}, "breakdown": {target tag: metrics},
              "per_expression": [...], "frames_per_s", "wall_time_s", "nt_rule", "threshold"}.
    Raises: ValueError when the split has no masks or nothing to evaluate.
    """
    from tqdm import tqdm

    from mabp.predictor import MABPPredictor

    if not getattr(dataset, "has_masks", False):
        raise ValueError(f"MeViS split {getattr(dataset, 'split', '?')!r} has no mask_dict.json: its masks are only on "
                         "the evaluation server, so J&F cannot be computed here; use valid_u")
    exprs = list(dataset.expressions)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        exprs = exprs[:limit]
    if not exprs:
        raise ValueError("the split has no expressions to evaluate")
    by_video: Dict[str, List[Any]] = {}
    for e in exprs:
        by_video.setdefault(e.video, []).append(e)
    predictor = MABPPredictor(model)
    meter = VideoJFMeter()
    n_frames = sum(len(v[0].frames) for v in by_video.values())
    t0 = time.perf_counter()
    was_training = model.training
    try:
        with tqdm(total=n_frames, desc=f"mevis {dataset.split}", unit="frame", disable=not progress) as bar:
            for video, vexprs in by_video.items():
                frames = vexprs[0].frames
                texts = [e.sentence for e in vexprs]
                stream = ((t, dataset.frame(video, name)) for t, name in enumerate(frames))
                for fr in predictor.predict_video(stream, texts, threshold=threshold, nt_rule=nt_rule,
                                                  nt_threshold=nt_threshold):
                    for e, r in zip(vexprs, fr.results):
                        gt = dataset.target_mask(e, fr.index, r.image_size)
                        meter.update(e.key, r.mask, gt, tags={"target": e.tags.get("target") or (
                            "single" if len(e.anno_ids) == 1 else "multi" if e.anno_ids else "no-target"),
                            "sentence": e.sentence})
                    bar.update(1)
                    if bar.n % 20 == 0:
                        m = meter.compute()
                        bar.set_postfix({"J&F": f"{m['J&F']:.1f}"}, refresh=False)
    finally:
        model.train(was_training)
    wall = time.perf_counter() - t0
    inf = model.cfg.inference
    return {"metrics": meter.compute(), "breakdown": meter.breakdown("target"),
            "per_expression": meter.per_expression(), "frames_per_s": n_frames / wall if wall > 0 else None,
            "wall_time_s": wall, "n_frames": n_frames, "nt_rule": nt_rule or inf.nt_rule,
            "threshold": float(threshold if threshold is not None else inf.threshold),
            "nt_threshold": float(nt_threshold if nt_threshold is not None else inf.nt_threshold)}


def _f(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}"


def format_video_report(result: Mapping[str, Any], split: str, paper: bool = True) -> str:
    """Markdown: ours (J&F, J, F) with the paper's Table VII row for the split beside it, and the breakdown."""
    m = result["metrics"]
    lines = [f"## MeViS {split} — {m['n_expressions']} expressions, {m['n_frames']} expression-frames, "
             f"threshold {result['threshold']}, no-target rule '{result['nt_rule']}'", "",
             "| model | J&F | J | F |", "|---|---:|---:|---:|",
             f"| ours | {_f(m['J&F'])} | {_f(m['J'])} | {_f(m['F'])} |"]
    row = PAPER_MEVIS.get(split) if paper else None
    if row is not None:
        lines.append(f"| paper (Table VII, MABP) | {row['J&F']:.1f} | {row['J']:.1f} | {row['F']:.1f} |")
    lines += ["", "J = region IoU, F = boundary F-measure (tolerance 0.008 × image diagonal), per expression "
              "averaged over its frames, then over expressions (DAVIS/MeViS); an empty GT answered with an "
              "empty mask scores J = F = 1.", "", "### By target tag", "", "| target | n | J&F | J | F |",
              "|---|---:|---:|---:|---:|"]
    for k, v in result["breakdown"].items():
        lines.append(f"| {k} | {v['n_expressions']} | {_f(v['J&F'])} | {_f(v['J'])} | {_f(v['F'])} |")
    lines += ["", f"{result['n_frames']} frames in {result['wall_time_s']:.1f} s "
              f"({_f(result['frames_per_s'])} frames/s, every expression of a frame included)."]
    return "\n".join(lines)


def is_synthetic(dataset: Any) -> bool:
    """A SynthGRES video export (its videos are named synth_<split>_<index>)."""
    return any(v.startswith("synth_") for v in dataset.videos[:8])


def main_from_args(args: Any) -> int:
    """`train.evaluate --dataset mevis` (args from `train.evaluate.build_parser`); 0 ok, 2 bad input."""
    from mabp.registry import build_mabp, load_checkpoint
    from train.data import build_dataset
    from train.data.refer_common import DatasetError

    def fail(msg: str) -> int:
        print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2

    ckpt_path = Path(args.checkpoint)
    if not ckpt_path.is_file():
        return fail(f"checkpoint not found: {ckpt_path} (pass the .pt file written by training)")
    if args.size is not None or args.amp or args.min_pixels or args.split_by:
        return fail("--size, --amp, --min-pixels and --split-by do not apply to mevis")
    if args.device != "cpu" and not torch.cuda.is_available():
        return fail("--device cuda requested but CUDA is not available; use --device cpu")
    for name, val in (("--limit", args.limit), ("--threads", args.threads)):
        if val is not None and val < 1:
            return fail(f"{name} must be >= 1, got {val}")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        return fail(f"--threshold must be strictly between 0 and 1, got {args.threshold}")
    root = args.root if args.root is not None else None
    try:
        dataset = build_dataset("mevis", args.split, root=root, mode="eval")
    except (DatasetError, ValueError) as e:
        return fail(str(e))
    if not dataset.has_masks:
        return fail(f"MeViS split {args.split!r} has no mask_dict.json: its masks are only on the evaluation "
                    "server, so it cannot be scored here; evaluate valid_u, or submit predictions to the server")
    try:
        model = build_mabp(checkpoint=load_checkpoint(ckpt_path))
    except (FileNotFoundError, ValueError) as e:
        return fail(f"cannot use checkpoint {ckpt_path}: {e}")
    model.to(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        result = evaluate_video(model, dataset, limit=args.limit, threshold=args.threshold, nt_rule=args.nt_rule,
                                nt_threshold=args.nt_threshold,
                                progress=not args.no_progress)
    except (DatasetError, ValueError) as e:
        return fail(str(e))
    synth = is_synthetic(dataset)
    if synth:
        print("note: this folder is a SynthGRES video export, so the paper's MeViS row is not shown")
    print(format_video_report(result, args.split, paper=not synth))
    out_dir = Path(args.out) if args.out else Path("runs") / "eval" / f"{ckpt_path.stem}-mevis-{args.split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "per_expression"}
    summary.update({"checkpoint": str(ckpt_path.resolve()), "dataset": "mevis", "split": args.split,
                    "root": args.root, "synthetic_export": synth,
                    "paper_row": None if synth else PAPER_MEVIS.get(args.split)})
    tmp = out_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / "results.json")
    tmp = out_dir / ".per_expression.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in result["per_expression"]))
    os.replace(tmp, out_dir / "per_expression.jsonl")
    print(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'per_expression.jsonl'}")
    return 0


__all__ = ["evaluate_video", "format_video_report", "main_from_args", "is_synthetic"]
