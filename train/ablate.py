"""The paper's ablations (Tables V and VI) and the ReLA baseline, trained on the same data, budget and
seeds, printed in the paper's layout with the paper's numbers beside ours.

    python -m train.ablate --dataset synthgres --steps 300 --seeds 0 1 2
    python -m train.ablate --config train/configs/lite_synthgres.yaml --steps 2000 --seeds 0 1 \
        --seeds-for table5_naive=0,1,2 table5_full=0,1,2 rela=0,1,2 --eval-every 250 --val-samples 1000 \
        --set train.batch_size=8 --out runs/ablate_lite

Every variant is the base training config (`--config`, default tiny_synthgres.yaml) with the variant's
model overrides (mabp.variants.VARIANTS) and `schedule.max_steps = --steps`; each (variant, seed) run
lives in `<out>/<variant>/seed<k>/` and is resumed if it already finished or was interrupted. The final
weights (last.pt) are then evaluated with the official protocol on the first `--val-samples` val
expressions (cached in `<run>/ablation_result.json`, so a re-run only trains and evaluates what is
missing: a sweep survives stopped sessions; with `--results DIR` each result is also kept as
`DIR/<variant>/seed<k>.json`, a folder to commit, so a sweep also survives a machine whose run folders
are gone). Results: `<out>/ablation.md` (the tables with mean ± std over
seeds and the paper's numbers, breakdowns by target tag, one verdict per paper claim, wall-clock per run),
`<out>/ablation.json` (every number) and `<out>/curves.png` (val gIoU and N-acc against training steps for
Naive, full MABP and ReLA, from the runs' in-training evaluations every `--eval-every` steps).

Runs go seed-major (every variant's first seed before any second seed) and the report is rewritten after
every finished run, marked partial until the plan is complete; `--report-only` rewrites it from the
finished runs' folders without training anything.

Several runners may share one plan: start the same command more than once (e.g. two runners with
`--set train.num_threads=1` on a 2-core machine, or several processes on one GPU). Each claims a run for
its training and evaluation (`<run>/ablate.lock`, a `flock` the kernel drops if the runner dies), skips
runs another live runner holds, and writes the report from every finished run on disk.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
CLAIM_NAME = "ablate.lock"  # a runner's claim on one (variant, seed) run folder (train/run_lock.py)
METRICS = ("cIoU", "gIoU", "N-acc", "T-acc", "N-acc(MABP-code)", "Pr@0.9", "Pr@0.8", "Pr@0.7")
# The paper's claims (gRefCOCO val): (claim, baseline variant, variant, metric, paper's difference).
CLAIMS = [
    ("RSH over the naive head", "table5_naive", "table5_rsh", "gIoU", 2.83),
    ("MMD over RIA/RLA", "table5_rsh", "table5_mmd", "gIoU", 0.88),
    ("MMD helps no-target samples", "table5_rsh", "table5_mmd", "N-acc", None),
    ("query generator over random queries", "table5_mmd", "table5_full", "gIoU", 0.85),
    ("NT branch on the last head over no NT branch", "table6_nt_none", "table6_nt_last", "N-acc", 2.14),
    ("NT branch on all heads over the last head only", "table6_nt_last", "table6_full", "N-acc", 4.15),
    ("deep supervision of the main branch", "table6_main_last", "table6_full", "gIoU", 1.12),
    ("MABP over ReLA (gIoU)", "rela", "table5_full", "gIoU", 3.0),
    ("MABP over ReLA (N-acc)", "rela", "table5_full", "N-acc", 7.0),
]
TAGS = ("single", "multi-same", "multi-mixed", "no-target")
CURVE_VARIANTS = ("table5_naive", "table5_full", "rela")
# Table V's "full" and Table VI's "full" are the same model: train it once.
ALIASES = {"table6_full": "table5_full"}


def variant_overrides(name: str) -> Dict[str, Any]:
    """VARIANTS use build_mabp's section__key; the training config wants dotted model.overrides."""
    if name not in VARIANTS:
        raise SystemExit(f"error: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return {k.replace("__", "."): v for k, v in VARIANTS[name].items()}


def _median_sec_per_step(log_path: Path) -> Optional[float]:
    """The median s/step of a run's logged training intervals (None without any)."""
    try:
        rates = [r["sec_per_step"] for r in map(json.loads, log_path.read_text().splitlines())
                 if r.get("type") == "train" and r.get("sec_per_step") is not None]
    except (OSError, ValueError):
        return None
    return round(statistics.median(rates), 3) if rates else None


def _result_key(args: argparse.Namespace) -> Dict[str, Any]:
    key = {"steps": args.steps, "val_samples": args.val_samples, "split": args.split, "dataset": args.dataset}
    world = args.world_resolved
    if world is not None:  # the shapes world is the key without the field (results cached before it)
        key["world"] = world
    return key


def training_world(args: argparse.Namespace) -> Optional[str]:
    """The SynthGRES world the runs train on ("photo", "mixed"), from the base config and the --set
    overrides, or None for the shapes world and other datasets. The final evaluation uses the same world,
    and the cached results are keyed by it. Raises train.config.ConfigError for a broken config."""
    if args.dataset != "synthgres":
        return None
    from train.config import load_config

    world = load_config(args.config, list(args.override))["data"]["kwargs"].get("world")
    return None if world in (None, "shapes") else str(world)


def _mirror_path(name: str, seed: int, args: argparse.Namespace) -> Optional[Path]:
    """Where --results keeps a copy of the (variant, seed) run's ablation_result.json (None without it)."""
    return Path(args.results) / name / f"seed{seed}.json" if getattr(args, "results", None) else None


def _read_result(path: Optional[Path], args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != _result_key(args):
        return None
    if not isinstance(data.get("metrics"), dict):
        return None
    return data


def _write_mirror(path: Path, data: Dict[str, Any]) -> None:
    """Keep `data` (a run's result) at `path`, unless the file holds another budget's result: a results
    folder is one budget's, and a committed result is never overwritten by a run of another plan."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and isinstance(old.get("key"), dict) and old["key"] != data["key"]:
        print(f"warning: {path} holds a result of another budget ({old['key']}); not overwritten: give this "
              "plan its own --results folder", file=sys.stderr)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(data, indent=1).encode())


def cached_result(name: str, seed: int, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The finished (variant, seed) run's metrics from its ablation_result.json in the run folder, or from
    the --results mirror (a folder of small JSON files that can be committed: run folders hold checkpoints
    and may not outlive the machine); None when neither has it for this budget (or it is unreadable)."""
    out = Path(args.out) / name / f"seed{seed}"
    data = _read_result(out / "ablation_result.json", args)
    mirror = _mirror_path(name, seed, args)
    if data is None:
        data = _read_result(mirror, args)
    elif mirror is not None and _read_result(mirror, args) is None:
        # a run finished before --results was given (or by a runner without it): mirror it now
        _write_mirror(mirror, data)
    if data is None:
        return None
    metrics = data["metrics"]
    if metrics.get("sec_per_step") is None:  # a result cached before the field existed
        metrics["sec_per_step"] = _median_sec_per_step(out / "log.jsonl")
    return metrics


def run_variant(name: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or resume) one (variant, seed) run and evaluate its last.pt; the result is cached in the run
    folder, so a finished run is neither trained nor evaluated again."""
    import torch

    from mabp import build_mabp
    from train.data import build_dataset
    from train.evaluate import evaluate_model
    from train.fit import fit

    out = Path(args.out) / name / f"seed{seed}"
    cached = out / "ablation_result.json"
    key = _result_key(args)
    done = cached_result(name, seed, args)
    if done is not None:
        return done
    eval_every = args.eval_every or args.steps
    overrides = [f"schedule.max_steps={args.steps}", f"train.seed={seed}", f"train.output_dir={out}",
                 "train.resume=auto", f"train.eval_every={eval_every}", f"train.log_every={max(1, args.steps // 20)}"]
    extra = {"model": {"overrides": variant_overrides(name)}}
    t0 = time.time()
    summary = fit(args.config, overrides + list(args.override), extra)
    train_s = time.time() - t0
    if summary.get("interrupted"):
        raise KeyboardInterrupt
    model = build_mabp(checkpoint=out / "last.pt")
    world = args.world_resolved
    dataset = build_dataset(args.dataset, args.split, root=args.root, mode="eval",
                            **({"size": model.cfg.image_size} if args.dataset == "synthgres" else {}),
                            **({"world": world} if world is not None else {}))
    # min_pixels from the model: the NT-less variant decides emptiness by the paper's < 50 pixels rule
    res = evaluate_model(model, dataset, batch_size=args.batch_size, limit=args.val_samples, progress=False,
                         min_pixels=model.cfg.inference.min_pixels)
    metrics = {k: res["metrics"].get(k) for k in METRICS}
    by_tag = res.get("breakdowns", {}).get("target", {})
    metrics["by_tag"] = {t: {m: by_tag[t].get(m) for m in ("gIoU", "cIoU", "N-acc", "n")} for t in by_tag}
    metrics["NT-AUROC"] = res.get("nt_auroc")  # threshold-free; None for the NT-less variant
    log_path = out / "log.jsonl"
    train_records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] \
        if log_path.is_file() else []
    metrics["curve"] = [{"step": r["step"], "gIoU": r.get("gIoU"), "N-acc": r.get("N-acc"),
                         "NT-AUROC": r.get("NT-AUROC")} for r in train_records if r.get("type") == "eval"]
    # wall-clock of the training itself: this call's, or for a run resumed across sessions the sum of the
    # logged intervals (each train record covers the steps since the previous one)
    logged, prev = 0.0, 0
    for r in train_records:
        if r.get("type") == "train" and r.get("sec_per_step") is not None:
            logged += r["sec_per_step"] * max(0, r["step"] - prev)
            prev = r["step"]
    # the median logged s/step: the run's cost without the pauses (a stopped session, a paused process)
    # and the evaluations that the summed wall-clock includes
    metrics.update(train_s=round(max(train_s, logged), 1), steps=summary.get("step"), n=res["n"],
                   sec_per_step=_median_sec_per_step(log_path), threads=torch.get_num_threads(),
                   nt_rule=res["nt_rule"], params=sum(p.numel() for p in model.parameters()),
                   eval_s=round(res.get("wall_time_s", 0.0), 1))
    cached.write_text(json.dumps({"key": key, "metrics": metrics}, indent=1))
    mirror = _mirror_path(name, seed, args)
    if mirror is not None:
        _write_mirror(mirror, {"key": key, "metrics": metrics})
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
    seeds = " ".join(str(s) for s in args.seeds) + "".join(f"; {x}" for x in getattr(args, "seeds_for", []))
    world = args.world_resolved
    where = f"{args.dataset}/{args.split}" + (f" ({world} world)" if world else "")
    lines = [f"Ablations on {where} (first {args.val_samples} expressions), "
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
                 f"{next((r[0].get('nt_rule') for r in results.values() if r), '?')}; variants without an NT branch use the "
                 "paper's < 50 positive pixels rule.")
    # the NT AUROC column only once some run has it (results from before it existed lack the field)
    auroc = any(r.get("NT-AUROC") is not None for runs in results.values() for r in runs)
    lines += ["", "### gIoU by target tag (N-acc for no-target)", "",
              "| model | " + " | ".join(TAGS) + (" | NT AUROC" if auroc else "")
              + " | seeds | s / training step (median) |",
              "|---|" + "---|" * (len(TAGS) + 2 + auroc)]
    labels = {k: label for rows in ROWS.values() for k, label in rows}
    for key, runs in results.items():
        if key in ALIASES:
            continue
        cells = []
        for t in TAGS:
            m = "N-acc" if t == "no-target" else "gIoU"
            cells.append(_fmt([(r.get("by_tag") or {}).get(t, {}).get(m) for r in runs]))
        if auroc:
            cells.append(_fmt([r.get("NT-AUROC") for r in runs]))
        cost = _fmt([r["sec_per_step"] for r in runs if r.get("sec_per_step")])
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + f" | {len(runs)} | {cost} |")
    verdicts = claim_verdicts(results)
    if verdicts:
        lines += ["", "### The paper's claims on this data", "",
                  "| claim | metric | ours (variant − baseline) | noise (2 × std error) | p (Welch) | paper | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for v in verdicts:
            noise, p_value, paper = _claim_cells(v)
            lines.append(f"| {v['claim']} | {v['metric']} | {v['diff']:+.2f} | {noise} | {p_value} | {paper} | "
                         f"**{v['verdict']}** |")
        lines.append("")
        lines.append("Verdict: 'holds' when the difference is positive and larger than twice its standard error "
                     "over seeds, 'reversed' when it is negative and larger, 'within noise' otherwise (with one "
                     "seed the noise is unknown and the verdict says so). With 2-3 seeds per side that bar is "
                     "lenient; p is Welch's two-sided t-test over the seeds.")
    paired = paired_verdicts(results)
    if paired:
        lines += ["", "### The same claims, paired by seed", "",
                  "| claim | metric | seeds | per-seed differences | mean | noise (2 × std error) | p (paired t) | "
                  "paper | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for v in paired:
            noise, p_value, paper = _claim_cells(v)
            seeds = ", ".join(str(s) for s in v["seeds"])
            diffs = ", ".join(f"{d:+.2f}" for d in v["diffs"])
            lines.append(f"| {v['claim']} | {v['metric']} | {seeds} | {diffs} | {v['diff']:+.2f} | {noise} | "
                         f"{p_value} | {paper} | **{v['verdict']}** |")
        lines.append("")
        lines.append("Paired: each claim's variant minus its baseline at the same seed, over the seeds both were "
                     "run with. A seed fixes the data order for every variant (and the RNG state before the model "
                     "is built), so pairing removes any luck a seed shares across variants; p is the paired "
                     "two-sided t-test (1 degree of freedom with 2 seeds, so it stays coarse). A claim that "
                     "passes only one of the two analyses is suggestive: neither corrects for multiple tests.")
    return "\n".join(lines)


def _claim_cells(v: Dict[str, Any]) -> Tuple[str, str, str]:
    """(noise, p, paper) table cells of one verdict from claim_verdicts or paired_verdicts."""
    noise = "–" if math.isnan(v["noise"]) else f"±{v['noise']:.2f}"
    p_value = "–" if math.isnan(v["p"]) else f"{v['p']:.3f}" if v["p"] >= 0.001 else "< 0.001"
    paper = "–" if v["paper"] is None else f"+{v['paper']:.2f}"
    return noise, p_value, paper


def _verdict(diff: float, noise: float) -> str:
    """The verdict rule shared by both analyses: beyond 2 x SE either way, or within noise."""
    return "holds" if diff > noise else "reversed" if diff < -noise else "within noise"


def claim_verdicts(results: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """One verdict per paper claim whose two variants were run: holds / reversed / within noise."""
    out = []
    for claim, base, variant, metric, paper in CLAIMS:
        a = [r.get(metric) for r in results.get(base, []) if r.get(metric) is not None]
        b = [r.get(metric) for r in results.get(variant, []) if r.get(metric) is not None]
        if not a or not b:
            continue
        diff = statistics.mean(b) - statistics.mean(a)
        p_value = float("nan")
        if len(a) < 2 or len(b) < 2:
            noise, verdict = float("nan"), "one seed: noise unknown"
        else:
            noise = 2 * (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
            verdict = _verdict(diff, noise)
            if noise > 0:
                # Welch's t-test (two-sided): with 2-3 seeds per side, 2 x SE is a lenient bar, and the
                # p-value says how lenient (t with ~2-4 degrees of freedom)
                from scipy.stats import ttest_ind

                p_value = float(ttest_ind(b, a, equal_var=False).pvalue)
        out.append({"claim": claim, "metric": metric, "baseline": base, "variant": variant, "diff": diff,
                    "noise": noise, "p": p_value, "paper": paper, "verdict": verdict})
    return out


def paired_verdicts(results: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """The paper's claims tested on per-seed differences (variant − baseline at the same seed).

    Runs with one seed share its data order (train.sampler.ShardedBatchSampler is seeded by train.seed; the
    SynthGRES samples themselves are the same for every seed) and the global RNG state before the model is
    built (different architectures draw different weights from it), so a seed that is lucky for one
    variant may be lucky for the others (on the photo world, 4,000 steps, the five variants with RSH and
    an NT branch all have their seed-1 N-acc 10-17 points under their seed 0: 1 in 16 by chance).
    Differencing within a seed removes that shared part; Welch's unpaired test (claim_verdicts) counts it
    as noise. Needs the "seed" field that main() adds to each run's metrics; runs without it
    are left out. Returns one dict per claim with >= 1 common seed: seeds, per-seed diffs, their mean,
    noise = 2 x std error of the mean difference (NaN with one seed), p of the paired t-test
    (scipy.stats.ttest_rel, two-sided; NaN when undefined) and the same verdict rule as claim_verdicts.
    """
    out = []
    for claim, base, variant, metric, paper in CLAIMS:
        a, b = ({r["seed"]: r[metric] for r in results.get(k, []) if "seed" in r and r.get(metric) is not None}
                for k in (base, variant))
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diffs = [b[s] - a[s] for s in seeds]
        diff = statistics.mean(diffs)
        noise, p_value = float("nan"), float("nan")
        if len(seeds) < 2:
            verdict = "one seed: noise unknown"
        else:
            noise = 2 * statistics.stdev(diffs) / len(diffs) ** 0.5
            verdict = _verdict(diff, noise)
            if noise > 0:
                from scipy.stats import ttest_rel

                p_value = float(ttest_rel([b[s] for s in seeds], [a[s] for s in seeds]).pvalue)
        out.append({"claim": claim, "metric": metric, "baseline": base, "variant": variant, "seeds": seeds,
                    "diffs": diffs, "diff": diff, "noise": noise, "p": p_value, "paper": paper,
                    "verdict": verdict})
    return out


def plot_curves(results: Dict[str, List[Dict[str, Any]]], path: Path) -> Optional[Path]:
    """val gIoU and N-acc against training steps (mean over seeds) for Naive, full MABP and ReLA."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = {"table5_naive": "Naive", "table5_full": "full MABP", "rela": "ReLA"}
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    drawn = False
    for key in CURVE_VARIANTS:
        runs = [r.get("curve") or [] for r in results.get(key, [])]
        steps = sorted({p["step"] for c in runs for p in c})
        for ax, metric in zip(axes, ("gIoU", "N-acc")):
            ys = []
            for st in steps:
                vals = [p[metric] for c in runs for p in c if p["step"] == st and p.get(metric) is not None]
                ys.append(statistics.mean(vals) if vals else float("nan"))
            if steps:
                ax.plot(steps, ys, "-o", markersize=3, label=labels[key])
                drawn = True
    if not drawn:
        return None
    for ax, metric in zip(axes, ("val gIoU (in-training subset)", "val N-acc (ReLA's TP/(TP+FN))")):
        ax.set_xlabel("training step")
        ax.set_ylabel("%")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_report(results: Dict[str, List[Dict[str, Any]]], args: argparse.Namespace, out: Path,
                 done: int, total: int) -> str:
    """Write ablation.md / ablation.json / curves.png for the runs finished so far; returns the table."""
    table = format_tables(results, args)
    if done < total:
        table = (f"**Partial: {done} of {total} runs finished** (re-run the same command to continue; rows "
                 "with fewer seeds than planned have a larger error).\n\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "ablation.md", (table + "\n").encode())
    _write_atomic(out / "ablation.json", json.dumps({"args": vars(args), "results": results, "paper": PAPER,
                                                     "verdicts": claim_verdicts(results),
                                                     "paired_verdicts": paired_verdicts(results), "runs_done": done,
                                                     "runs_planned": total}, indent=2).encode())
    tmp = out / f".curves.{os.getpid()}.png"  # runners sharing a plan never leave a half-written figure
    if plot_curves(results, tmp) is not None:
        os.replace(tmp, out / "curves.png")
    return table


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m train.ablate`."""
    ap = argparse.ArgumentParser(prog="python -m train.ablate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthgres")
    ap.add_argument("--split", default="val")
    ap.add_argument("--root", default=None)
    ap.add_argument("--world", default=None, choices=("shapes", "photo", "mixed"),
                    help="SynthGRES world to train and evaluate on (default: the config's; shapes if unset)")
    ap.add_argument("--config", default="train/configs/tiny_synthgres.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seeds-for", nargs="+", default=[], metavar="VARIANT=S1,S2",
                    help="other seeds for some variants, e.g. table5_naive=0,1,2 rela=0,1,2")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="in-training evaluation every N steps (on data.val_samples expressions) for the curves")
    ap.add_argument("--variants", nargs="+", default=[k for rows in ROWS.values() for k, _ in rows])
    ap.add_argument("--val-samples", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="runs/ablate")
    ap.add_argument("--results", default=None, metavar="DIR",
                    help="also keep every finished run's result as DIR/<variant>/seed<k>.json and count a run "
                         "found there as finished: a folder small enough to commit, so a sweep continues on a "
                         "new machine whose run folders are gone")
    ap.add_argument("--set", dest="override", nargs="+", default=[], metavar="section.key=value",
                    help="extra training-config overrides applied to every run")
    ap.add_argument("--report-only", action="store_true",
                    help="write and print the report of the runs finished so far; train nothing")
    ap.set_defaults(world_resolved=None)  # set by main() from the config and --world (training_world)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command line (not a call from Python): run on tcmalloc (train/allocator.py)
        from train.allocator import reexec_with_tcmalloc

        reexec_with_tcmalloc("train.ablate", sys.argv[1:])
    if args.dataset != "synthgres":
        args.override = list(args.override) + [f"data.dataset={args.dataset}"]
        if args.root:
            args.override.append(f"data.root={args.root}")
    if args.world is not None:
        args.override = list(args.override) + [f"data.kwargs.world={args.world}"]
    from train.config import ConfigError

    try:
        args.world_resolved = training_world(args)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for v in args.variants:
        variant_overrides(ALIASES.get(v, v))
    seeds_for: Dict[str, List[int]] = {}
    for item in args.seeds_for:
        name, _, seeds = item.partition("=")
        try:
            seeds_for[ALIASES.get(name, name)] = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            print(f"error: --seeds-for wants VARIANT=S1,S2,..., got {item!r}", file=sys.stderr)
            return 2
        variant_overrides(ALIASES.get(name, name))
    # seed-major order: every variant's first seed before any second seed, so a sweep stopped part-way
    # (sessions end) still has a row for every variant, and the report is rewritten after every run
    bases: List[str] = []
    for v in args.variants:
        if ALIASES.get(v, v) not in bases:
            bases.append(ALIASES.get(v, v))
    per_base = {b: seeds_for.get(b, args.seeds) for b in bases}
    plan = [(b, per_base[b][i]) for i in range(max(len(s) for s in per_base.values()))
            for b in bases if i < len(per_base[b])]
    trained: Dict[str, List[Dict[str, Any]]] = {b: [] for b in bases}
    out = Path(args.out)

    def results() -> Dict[str, List[Dict[str, Any]]]:
        return {v: trained[ALIASES.get(v, v)] for v in args.variants if trained[ALIASES.get(v, v)]}

    def collect() -> int:
        """Refill `trained` from the run folders (in plan order): several runners may share one plan, so
        the report is always built from every finished run on disk, not from this process's alone."""
        finished = 0
        for b in trained:
            trained[b] = []
        for base, seed in plan:
            done = cached_result(base, seed, args)
            if done is not None:
                trained[base].append(dict(done, seed=seed))  # the seed pairs runs (paired_verdicts)
                finished += 1
        return finished

    if args.report_only:
        finished = collect()
        if not finished:
            world = f", world {args.world_resolved}" if args.world_resolved else ""
            print(f"error: no finished run in {out} for this budget (--steps {args.steps}, --val-samples "
                  f"{args.val_samples}{world})", file=sys.stderr)
            return 1
        print(write_report(results(), args, out, done=finished, total=len(plan)))
        return 0
    from train.run_lock import RunLock, RunLockedError

    table, taken = "", []
    try:
        for k, (base, seed) in enumerate(plan):
            if cached_result(base, seed, args) is not None:
                continue
            # A claim on the run for its training and evaluation: a second runner started with the same
            # command (another core, another GPU process) skips it and takes the next run of the plan.
            claim = RunLock(out / base / f"seed{seed}", name=CLAIM_NAME)
            try:
                claim.acquire()
            except RunLockedError:
                holder = RunLock.read_info(claim.path)
                print(f"== run {k + 1}/{len(plan)}: {base} seed {seed}: skipped, another runner has it "
                      f"(pid {holder.get('pid', '?')})", file=sys.stderr)
                taken.append(f"{base} seed {seed}")
                continue
            try:
                print(f"== run {k + 1}/{len(plan)}: {base} seed {seed}", file=sys.stderr)
                run_variant(base, seed, args)
            except RunLockedError as exc:  # a train.fit outside any claim (an older runner, by hand) has it
                print(f"   skipped: {' '.join(str(exc).split())}", file=sys.stderr)
                taken.append(f"{base} seed {seed}")
                continue
            finally:
                claim.release()
            finished = collect()  # first: results() reads what collect() refills
            table = write_report(results(), args, out, done=finished, total=len(plan))
        finished = collect()
        if finished:
            table = write_report(results(), args, out, done=finished, total=len(plan))
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; re-run the same command to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # the data's, a checkpoint's or the folder's fault: one line, as train.fit
        from mabp.registry import CheckpointError, CheckpointWriteError
        from train.config import ConfigError
        from train.data.refer_common import DatasetError

        if not isinstance(exc, (CheckpointError, CheckpointWriteError, ConfigError, DatasetError, RunLockedError)):
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1 if isinstance(exc, CheckpointWriteError) else 2
    if taken:
        print(f"{len(taken)} run(s) were being trained by other runners ({', '.join(taken)}); each runner "
              "rewrites the report when it finishes one", file=sys.stderr)
    print(table)
    print(f"\nwritten: {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
