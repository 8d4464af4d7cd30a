"""The paper's ablations (Tables V and VI) and the ReLA baseline, trained on the same data, budget and
seeds, printed in the paper's layout with the paper's numbers beside ours.

    python -m train.ablate --dataset synthgres --steps 300 --seeds 0 1 2
    python -m train.ablate --config train/configs/lite_synthgres.yaml --steps 2000 --variants table5_full rela \
        --set train.batch_size=8

Every variant is the base training config (`--config`, default tiny_synthgres.yaml) with the variant's
model overrides (mabp.variants.VARIANTS) and `schedule.max_steps = --steps`; each (variant, seed) run
lives in `<out>/<variant>/seed<k>/` and is resumed if it already finished or was interrupted. The final
weights (last.pt) are then evaluated with the official protocol on the first `--val-samples` val
expressions. Results: `<out>/ablation.md` (the tables) and `<out>/ablation.json` (every number).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mabp.variants import VARIANTS

# Paper numbers on gRefCOCO val (paper Tables V, VI): cIoU, gIoU, N-acc (MABP's evaluator).
PAPER = {
    "table5_naive": {"cIoU": 63.07, "gIoU": 64.23},
    "table5_rsh": {"cIoU": 64.87, "gIoU": 67.06},
    "table5_mmd": {"cIoU": 65.21, "gIoU": 67.94},
    "table5_full": {"cIoU": 65.69, "gIoU": 68.79, "N-acc(MABP-code)": 64.55},
    "table6_main_last": {"cIoU": 64.73, "gIoU": 67.67, "N-acc(MABP-code)": 62.21},
    "table6_nt_none": {"cIoU": 64.08, "gIoU": 66.49, "N-acc(MABP-code)": 58.26},
    "table6_nt_last": {"cIoU": 64.90, "gIoU": 67.36, "N-acc(MABP-code)": 60.40},
    "table6_full": {"cIoU": 65.69, "gIoU": 68.79, "N-acc(MABP-code)": 64.55},
    "rela": {"cIoU": 62.42, "gIoU": 63.60},  # the ReLA paper (the MABP paper lists 64.20 / 65.50)
}
ROWS = {
    "Table V (decoder components)": [("table5_naive", "Naive (RIA/RLA + random queries + naive head)"),
                                     ("table5_rsh", "+ RSH"), ("table5_mmd", "+ MMD"),
                                     ("table5_full", "+ QG (full MABP)")],
    "Table VI (deep supervision)": [("table6_main_last", "main branch: last head only"),
                                    ("table6_nt_none", "NT branch removed (< 50 px rule)"),
                                    ("table6_nt_last", "NT branch: last head only"),
                                    ("table6_full", "full (all heads)")],
    "Baseline": [("rela", "ReLA (100 queries, RIA/RLA, minimap aggregation)")],
}
METRICS = ("cIoU", "gIoU", "N-acc", "T-acc", "N-acc(MABP-code)", "Pr@0.9", "Pr@0.8", "Pr@0.7")
# Table V's "full" and Table VI's "full" are the same model: train it once.
ALIASES = {"table6_full": "table5_full"}


def variant_overrides(name: str) -> Dict[str, Any]:
    """VARIANTS use build_mabp's section__key; the training config wants dotted model.overrides."""
    if name not in VARIANTS:
        raise SystemExit(f"error: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return {k.replace("__", "."): v for k, v in VARIANTS[name].items()}


def run_variant(name: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from mabp import build_mabp
    from train.data import build_dataset
    from train.evaluate import evaluate_model
    from train.fit import fit

    out = Path(args.out) / name / f"seed{seed}"
    overrides = [f"schedule.max_steps={args.steps}", f"train.seed={seed}", f"train.output_dir={out}",
                 "train.resume=auto", f"train.eval_every={args.steps}", f"train.log_every={max(1, args.steps // 20)}"]
    extra = {"model": {"overrides": variant_overrides(name)}}
    t0 = time.time()
    summary = fit(args.config, overrides + list(args.override), extra)
    train_s = time.time() - t0
    if summary.get("interrupted"):
        raise KeyboardInterrupt
    model = build_mabp(checkpoint=out / "last.pt")
    dataset = build_dataset(args.dataset, args.split, root=args.root, mode="eval",
                            **({"size": model.cfg.image_size} if args.dataset == "synthgres" else {}))
    # min_pixels from the model: the NT-less variant decides emptiness by the paper's < 50 pixels rule
    res = evaluate_model(model, dataset, batch_size=args.batch_size, limit=args.val_samples, progress=False,
                         min_pixels=model.cfg.inference.min_pixels)
    metrics = {k: res["metrics"].get(k) for k in METRICS}
    metrics.update(train_s=round(train_s, 1), steps=summary.get("step"), n=res["n"], nt_rule=res["nt_rule"],
                   params=sum(p.numel() for p in model.parameters()))
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return metrics


def _fmt(values: List[Optional[float]]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def format_tables(results: Dict[str, List[Dict[str, Any]]], args: argparse.Namespace) -> str:
    seeds = " ".join(str(s) for s in args.seeds)
    lines = [f"Ablations on {args.dataset}/{args.split} (first {args.val_samples} expressions), "
             f"{args.steps} steps per run, base config `{args.config}`, seeds {seeds} (mean ± std over seeds). "
             "Paper columns: gRefCOCO val (paper Tables V, VI); N-acc there is the official evaluator's "
             "TP/(TP+FN+1).", ""]
    for title, rows in ROWS.items():
        present = [(k, label) for k, label in rows if k in results]
        if not present:
            continue
        lines += [f"### {title}", "",
                  "| model | cIoU | gIoU | N-acc | T-acc | Pr@0.9 | paper cIoU | paper gIoU | paper N-acc |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, label in present:
            runs = results[key]
            paper = PAPER.get(key, {})
            cells = [_fmt([r.get(m) for r in runs]) for m in ("cIoU", "gIoU", "N-acc", "T-acc", "Pr@0.9")]
            pcells = [f"{paper[m]:.2f}" if m in paper else "–" for m in ("cIoU", "gIoU", "N-acc(MABP-code)")]
            lines.append(f"| {label} | " + " | ".join(cells + pcells) + " |")
        lines.append("")
    lines.append("N-acc / T-acc here: ReLA's definitions (TP/(TP+FN), TN/(TN+FP)); no-target rule "
                 f"{next(iter(results.values()))[0].get('nt_rule', '?')}; variants without an NT branch use the "
                 "paper's < 50 positive pixels rule.")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.ablate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthgres")
    ap.add_argument("--split", default="val")
    ap.add_argument("--root", default=None)
    ap.add_argument("--config", default="train/configs/tiny_synthgres.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=[k for rows in ROWS.values() for k, _ in rows])
    ap.add_argument("--val-samples", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="runs/ablate")
    ap.add_argument("--set", dest="override", nargs="+", default=[], metavar="section.key=value",
                    help="extra training-config overrides applied to every run")
    args = ap.parse_args(argv)
    if args.dataset != "synthgres":
        args.override = list(args.override) + [f"data.dataset={args.dataset}"]
        if args.root:
            args.override.append(f"data.root={args.root}")
    for v in args.variants:
        variant_overrides(ALIASES.get(v, v))
    results: Dict[str, List[Dict[str, Any]]] = {}
    trained: Dict[str, List[Dict[str, Any]]] = {}
    try:
        for v in args.variants:
            base = ALIASES.get(v, v)
            if base not in trained:
                trained[base] = []
                for seed in args.seeds:
                    print(f"== {base} seed {seed}", file=sys.stderr)
                    trained[base].append(run_variant(base, seed, args))
            results[v] = trained[base]
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; re-run the same command to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # the data's, a checkpoint's or the folder's fault: one line, as train.fit
        from mabp.registry import CheckpointError, CheckpointWriteError
        from train.config import ConfigError
        from train.data.refer_common import DatasetError
        from train.run_lock import RunLockedError

        if not isinstance(exc, (CheckpointError, CheckpointWriteError, ConfigError, DatasetError, RunLockedError)):
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1 if isinstance(exc, CheckpointWriteError) else 2
    table = format_tables(results, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    (out / "ablation.json").write_text(json.dumps({"args": vars(args), "results": results, "paper": PAPER}, indent=2))
    print(table)
    print(f"\nwritten: {out / 'ablation.md'}, {out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
