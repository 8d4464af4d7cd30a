"""Evaluate an MABP checkpoint on SynthGRES, gRefCOCO or RefCOCO/+/g with the official protocol (§4).

    python -m train.evaluate --checkpoint runs/x/best.pt --dataset synthgres --split val
    python -m train.evaluate --checkpoint C --dataset synthgres --world photo --split testA   # real objects
    python -m train.evaluate --checkpoint C --dataset grefcoco --split val --root datasets
    python -m train.evaluate --checkpoint C --dataset grefcoco --split val --root <a SynthGRES export>
    python -m train.evaluate --checkpoint C --dataset mevis --split valid_u --root DIR   (J, F, J&F: train/video_eval.py)

Protocol (MABP's ReferEvaluator):
- every (ref, sentence) pair is one sample;
- the image is squashed (bilinear) to the model size S×S and the GT mask is resized to S×S with
  NEAREST (MABP scores against the nearest-resized PNG; ReLA's polygon rasterisation is not used);
- the predicted mask is sigmoid(final head logits upsampled bilinearly to S×S) > threshold;
- "no target" is decided by the NT classifier only, combined over the heads by a rule (first / last /
  any; default: the model config's `inference.nt_rule`);
- the *un-zeroed* predicted mask is scored (a no-target prediction still inflates U), see
  `mabp.metrics.GRESMeter`.

The core is `evaluate_model(model, dataset, ...)`, also called by the training engine. Batches come
from the engine's shared `train.collate.Collator`, which squashes image (bilinear) and GT (nearest) to
S×S with `resize_sample`, exactly the §4 preprocessing, so training-time validation and this CLI see
identical inputs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mabp.flip_tta import FlipTTA
from mabp.mask_refine import REFINE_MODES, GuidedRefine, refine_from_config, refine_label, resolve_refine
from mabp.metrics import (GRESMeter, format_breakdown, format_table, get_paper_row)
from mabp.postprocess import NT_RULES, binarize_masks, decide_no_target, nt_probabilities, postprocess
from mabp.tokenizer import TextTokenizer
from mabp.variants import has_nt_branch
from train.collate import Collator
from train.data import DATASET_NAMES, build_dataset
from train.data.refer_common import DatasetError

# Tag keys broken down when the dataset carries them (SynthGRES has the first three; the real loaders
# only "target", derived from the referred instances; SynthGRES's photo / mixed worlds add "group", the
# top-level taxonomy group of the targets — animals, food, vehicles ... — and "world").
BREAKDOWN_KEYS = ("target", "type", "nt_kind", "group", "world")
ACC_FAMILIES = ("mabp-code", "rela")


class EvalInputError(Exception):
    """Bad command-line input (missing file, unknown split, impossible option). `main` turns it into a
    one-line message and exit code 2."""


# ---------------------------------------------------------------------------------------- helpers
def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - MABP always has parameters
        return torch.device("cpu")


def _head_counts() -> Dict[str, int]:
    return {"TP": 0, "FN": 0, "FP": 0, "TN": 0}


def _nt_summary(c: Mapping[str, int]) -> Dict[str, Any]:
    """No-target classification figures from TP/FN/FP/TN counts (positive class = no target)."""
    tp, fn, fp, tn = c["TP"], c["FN"], c["FP"], c["TN"]
    n = tp + fn + fp + tn

    def pct(a: int, b: int) -> Optional[float]:
        return None if b == 0 else 100.0 * a / b

    return {"acc": pct(tp + tn, n), "N-acc": pct(tp, tp + fn), "T-acc": pct(tn, tn + fp),
            "N-acc(MABP-code)": 100.0 * tp / (tp + fn + 1), "T-acc(MABP-code)": 100.0 * tp / (tp + fp + 1),
            **dict(c), "n": n}


def _json_safe(x: Any) -> Any:
    """numpy scalars / tensors / tuples → plain JSON values; NaN → None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, torch.Tensor):
        return _json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------------------------- core
def cli_refine(model: torch.nn.Module, mode: Optional[str], radius: Optional[int],
               eps: Optional[float]) -> Union[None, bool, GuidedRefine]:
    """`evaluate_model`'s refine from command-line values: mode None keeps the checkpoint's setting
    (with radius / eps overridden when given), "none" turns it off, "guided" turns it on with the given
    or the checkpoint's radius / eps. Raises ValueError for invalid settings."""
    inf = model.cfg.inference
    if mode == "none":
        return False
    if mode is None and radius is None and eps is None:
        return None
    if mode is None and refine_from_config(inf) is None:
        raise ValueError("--refine-radius / --refine-eps need --refine guided (this checkpoint does not refine)")
    return GuidedRefine(int(inf.refine_radius if radius is None else radius),
                        float(inf.refine_eps if eps is None else eps))


def effective_min_pixels(model: torch.nn.Module, min_pixels: int = 0) -> int:
    """The min-pixels rule an evaluation applies: `min_pixels` when > 0; else, for a model built without
    any no-target branch (Table VI "branch removed", `decoder.nt_supervision: none`), the model's own
    `inference.min_pixels` (50, the paper's rule, set by `mabp.variants.resolve_variant`), since such a
    model has no other way to say "no target" and would otherwise score N-acc 0 by construction; else 0
    (the official protocol)."""
    if min_pixels > 0:
        return int(min_pixels)
    return 0 if has_nt_branch(model.cfg) else int(model.cfg.inference.min_pixels)


def evaluation_loop(model: torch.nn.Module, loader: Any, device: torch.device, nt_rule: str, threshold: float,
                    min_pixels: int = 0, amp: bool = False, criterion: Optional[torch.nn.Module] = None,
                    progress: bool = True, desc: str = "eval", total: Optional[int] = None,
                    sample_indices: Optional[Sequence[int]] = None,
                    amp_dtype: torch.dtype = torch.float16, nt_threshold: float = 0.5,
                    nt_thresholds: Sequence[float] = (), flip_tta: Optional[bool] = None,
                    refine: Union[None, bool, GuidedRefine] = None,
                    refine_options: Sequence[Optional[GuidedRefine]] = ()) -> Dict[str, Any]:
    """The one evaluation loop (this CLI and the training engine): every batch of `loader` (collated by
    `train.collate.Collator`, S x S) through `model` on `device`, scored with the §4 protocol.

    `nt_threshold` is the NT probability above which a head votes "no target" (0.5: argmax, the official
    decision); each of `nt_thresholds` gets its own meter scored from the same pass (train.calibrate).
    `flip_tta` (None: `model.cfg.inference.flip_tta`) answers every sample twice, the second time mirrored
    with left/right swapped, and scores the average (mabp/flip_tta.py). `refine` is the mask refinement
    (mabp/mask_refine.py): None = `model.cfg.inference`'s, False = none, or a GuidedRefine; each of
    `refine_options` (None meaning no refinement) gets its own meter at the loop's rule and NT threshold
    ("refine_meters", keyed by `refine_label`), scored from the same pass (train.calibrate).

    Returns {"meter": GRESMeter, "rule_meters": {rule: GRESMeter}, "threshold_meters": {nt threshold:
    GRESMeter}, "refine_meters": {refine key: GRESMeter}, "head_counts": [per-head TP/FN/FP/TN], "records": [per-sample dicts], "loss_sum",
    "loss_n"}. Under torch.distributed every entry is merged
    over the ranks (meters and records in rank order, counts and loss sums added), so each rank's
    loader may hold a shard; `sample_indices` are the dataset indices of this rank's samples in loader
    order (default 0, 1, 2, ...). The model's device and train/eval mode are restored afterwards.
    """
    from tqdm import tqdm

    from train import distributed as D

    min_pixels = effective_min_pixels(model, min_pixels)
    size = int(model.cfg.image_size)
    home = _model_device(model)
    was_training = model.training
    meter = GRESMeter()
    rule_meters: Dict[str, GRESMeter] = {}
    threshold_meters: Dict[float, GRESMeter] = {float(t): GRESMeter() for t in nt_thresholds}
    head_counts: List[Dict[str, int]] = []
    records: List[Dict[str, Any]] = []
    loss_sum, loss_n = 0.0, 0
    model.to(device).eval()
    if flip_tta is None:
        flip_tta = model.cfg.inference.flip_tta
    forward = FlipTTA.for_model(model) if flip_tta else model
    refine = resolve_refine(model.cfg.inference, refine)
    refine_meters: Dict[str, GRESMeter] = {refine_label(o): GRESMeter() for o in refine_options}
    try:
        with torch.inference_mode(), tqdm(total=total, desc=desc, unit="sample", disable=not progress,
                                          leave=False, dynamic_ncols=True) as bar:
            for step, batch in enumerate(loader):
                images = batch["images"].to(device, non_blocking=True)
                ids, att = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                b_size = images.shape[0]
                first = len(records)
                indices = list(range(first, first + b_size)) if sample_indices is None else \
                    [int(i) for i in sample_indices[first:first + b_size]]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    out = forward(images, ids, att)
                out = {k: [t.float() if isinstance(t, torch.Tensor) else t for t in v] if isinstance(v, list) else v
                       for k, v in out.items()}
                nt_logits = out["nt_logits"]
                post = postprocess(out["pred_masks"], nt_logits, (size, size),
                                   threshold=threshold, nt_rule=nt_rule, min_pixels=min_pixels, model_size=(size, size),
                                   nt_threshold=nt_threshold, refine=refine, guidance=images)
                raw = post.raw_masks.cpu()
                pred_nt = post.no_target.cpu()
                gt = batch["gt_masks"] > 0.5  # the collator ships {0, 1} floats (training targets)
                gt_nt = batch["no_target"]
                meter.update_batch(raw, gt, pred_nt, gt_nt, tags=batch["tags"], sample_ids=indices)
                for option in refine_options:  # the NT decision is the same; only the masks differ
                    raw_o = raw if option == refine else binarize_masks(
                        out["pred_masks"], (size, size), threshold, refine=option, guidance=images,
                        model_size=(size, size)).cpu()
                    refine_meters[refine_label(option)].update_batch(raw_o, gt, pred_nt, gt_nt, tags=batch["tags"],
                                                                   sample_ids=indices)
                if criterion is not None:
                    loss = criterion(out, batch["gt_masks"].to(device), batch["no_target"].to(device))["loss"]
                    loss_sum += float(loss) * b_size
                    loss_n += b_size

                heads = [x for x in nt_logits if x is not None]
                head_probs = nt_probabilities(heads).cpu() if heads else None
                if heads:
                    # The same decision for every rule (and the heads alone), so the first/last/any
                    # difference is visible from one pass. min_pixels applies to all alike.
                    small = (raw.flatten(1).sum(-1) < min_pixels) if min_pixels > 0 else torch.zeros_like(pred_nt)
                    for r in NT_RULES:
                        dec = decide_no_target(heads, r, nt_threshold)[0].cpu() | small
                        rule_meters.setdefault(r, GRESMeter()).update_batch(raw, gt, dec, gt_nt)
                    for t, m in threshold_meters.items():
                        dec = decide_no_target(heads, nt_rule, t)[0].cpu() | small
                        m.update_batch(raw, gt, dec, gt_nt, tags=batch["tags"], sample_ids=indices)
                    if not head_counts:
                        head_counts = [_head_counts() for _ in heads]
                    for k, logit in enumerate(heads):
                        vote = (logit.argmax(-1) == 1).cpu()
                        c = head_counts[k]
                        c["TP"] += int((vote & gt_nt).sum())
                        c["FN"] += int((~vote & gt_nt).sum())
                        c["FP"] += int((vote & ~gt_nt).sum())
                        c["TN"] += int((~vote & ~gt_nt).sum())

                nt_prob = post.nt_prob.float().cpu()
                for b in range(b_size):
                    records.append({"index": indices[b], "sample_id": batch["sample_ids"][b],
                                    "image_id": batch["image_ids"][b], "ref_id": batch["ref_ids"][b],
                                    "sent_id": batch["sent_ids"][b], "sentence": batch["sentences"][b],
                                    "truncated": bool(batch["truncated"][b]), "nt_prob": float(nt_prob[b]),
                                    "gt_nt": bool(gt_nt[b]),
                                    "nt_probs": [] if head_probs is None else [float(p) for p in head_probs[:, b]]})
                bar.update(b_size)
                if step % 25 == 0:  # compute() scans every sample so far: not on every batch
                    bar.set_postfix(gIoU=f"{meter.compute()['gIoU']:.1f}", refresh=False)
    finally:
        model.train(was_training)
        model.to(home)
    if D.is_dist():  # rank-merged: every rank returns the whole evaluation
        meter = D.gather_meter(meter)
        rule_meters = {r: D.gather_meter(rule_meters.get(r, GRESMeter())) for r in NT_RULES
                       if D.all_reduce_max_flag(r in rule_meters, device)}
        threshold_meters = {t: D.gather_meter(m) for t, m in threshold_meters.items()}
        refine_meters = {k: D.gather_meter(m) for k, m in refine_meters.items()}
        n_heads = max(D.all_gather_object(len(head_counts)))
        flat = {f"{k}.{key}": float(head_counts[k][key]) if k < len(head_counts) else 0.0
                for k in range(n_heads) for key in ("TP", "FN", "FP", "TN")}
        sums = D.all_reduce_sums(dict(flat, _loss=loss_sum, _n=float(loss_n)), device)
        head_counts = [{key: int(sums[f"{k}.{key}"]) for key in ("TP", "FN", "FP", "TN")} for k in range(n_heads)]
        loss_sum, loss_n = sums["_loss"], int(sums["_n"])
        records = [r for part in D.all_gather_object(records) for r in part]
    return {"meter": meter, "rule_meters": rule_meters, "threshold_meters": threshold_meters,
            "refine_meters": refine_meters, "head_counts": head_counts, "records": records, "loss_sum": loss_sum, "loss_n": loss_n}


def nt_auroc(per_sample: Sequence[Mapping[str, Any]]) -> Optional[float]:
    """Area under the ROC curve of the no-target probability, in % (threshold-free NT quality).

    N-acc and T-acc depend on the NT threshold (0.5), and a short training run can sit on either side of
    it from one evaluation to the next; the AUROC asks only whether no-target samples get a higher
    no-target probability than target samples (100 = perfectly ranked, 50 = chance). It scores the
    probability that decides under the run's rule ("nt_prob": head 0, the last head or the max over
    heads; mabp.postprocess.decide_no_target), with scikit-learn's roc_auc_score (ties count one half).

    Args:
        per_sample: evaluation_loop's records or evaluate_model's "per_sample" ("nt_prob" float,
            "nt_probs" list, "gt_nt" bool).
    Returns:
        the AUROC in [0, 100], or None when it is undefined: a model without an NT branch (its
        emptiness is the pixel rule: no probability to rank) or samples of one kind only.
    """
    if not per_sample or not all(r.get("nt_probs") for r in per_sample):
        return None
    labels = [bool(r["gt_nt"]) for r in per_sample]
    if all(labels) or not any(labels):
        return None
    from sklearn.metrics import roc_auc_score

    return 100.0 * float(roc_auc_score(labels, [float(r["nt_prob"]) for r in per_sample]))


def evaluate_model(model: torch.nn.Module, dataset: Any, batch_size: int = 8, nt_rule: Optional[str] = None,
                   threshold: Optional[float] = None, min_pixels: int = 0, limit: Optional[int] = None,
                   device: Optional[str] = None, progress: bool = True, amp: bool = False,
                   num_workers: int = 0, desc: str = "eval", nt_threshold: Optional[float] = None,
                   nt_thresholds: Sequence[float] = (), flip_tta: Optional[bool] = None,
                   refine: Union[None, bool, GuidedRefine] = None,
                   refine_options: Optional[Sequence[Optional[GuidedRefine]]] = None) -> Dict[str, Any]:
    """Run the §4 evaluation of `model` on `dataset` (any dataset yielding the shared sample dict).

    Args:
        model: an `MABP` (uses `model.cfg.image_size`, `.text`, `.inference`).
        dataset: samples {"image", "mask", "sentence", "no_target", "tags", ids...} of any size; they
            are squashed to the model size S×S (image bilinear, GT nearest).
        batch_size: samples per forward pass.
        nt_rule: "first" / "last" / "any"; None = `model.cfg.inference.nt_rule`.
        threshold: mask threshold on sigmoid probabilities; None = `model.cfg.inference.threshold`.
        min_pixels: > 0 applies the paper-only rule (masks with fewer pixels at S×S count as no target);
            0 (default) is the official protocol, except for a model without an NT branch, which uses
            its own `inference.min_pixels` (see `effective_min_pixels`).
        limit: evaluate only the first `limit` samples.
        device: "cpu" / "cuda" / ...; None = where the model already is. The model is moved back and
            its train/eval mode restored afterwards, so the training engine can call this mid-run.
        progress: show a tqdm bar.
        amp: fp16 autocast (CUDA only).
        num_workers: DataLoader workers for image decoding (0 = in this process).
        desc: progress-bar label.
        nt_threshold: NT probability above which a head votes "no target"; None =
            `model.cfg.inference.nt_threshold` (0.5 = argmax, the official decision).
        nt_thresholds: more NT thresholds scored from the same pass ("per_nt_threshold").
        flip_tta: also answer each sample mirrored, left/right swapped, and score the average
            (mabp/flip_tta.py; not the paper's protocol); None = `model.cfg.inference.flip_tta`.
        refine: the mask refinement (mabp/mask_refine.py; not the paper's protocol): None = the model
            config's `inference.refine`, False = none, True = the config's radius / eps, or a GuidedRefine.
        refine_options: more refinements (None = none) scored from the same pass at the same NT decision
            ("per_refine", keyed by `refine_label`); default: "none" beside a refined evaluation, so every
            refined figure comes with the unrefined one.
    Returns:
        {"metrics": GRESMeter.compute(), "breakdowns": {tag key: {group: metrics}},
         "per_head_nt": [per NT head accuracy figures], "per_rule": {rule: metrics},
         "per_sample": [one dict per sample], "per_nt_threshold": {threshold: metrics},
         "nt_auroc" (% or None; see nt_auroc), "nt_rule",
         "threshold", "nt_threshold", "min_pixels", "flip_tta", "refine" (refine_label), "per_refine",
         "eval_size", "n",
         "wall_time_s", "samples_per_s", "device", "amp"}
    """
    from tqdm import tqdm

    cfg = model.cfg
    rule = nt_rule if nt_rule is not None else cfg.inference.nt_rule
    if rule not in NT_RULES:
        raise ValueError(f"nt_rule must be one of {NT_RULES}, got {rule!r}")
    thr = float(threshold if threshold is not None else cfg.inference.threshold)
    if not 0.0 < thr < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1 (a sigmoid probability), got {thr}")
    if min_pixels < 0:
        raise ValueError(f"min_pixels must be >= 0, got {min_pixels}")
    min_pixels = effective_min_pixels(model, min_pixels)
    nt_thr = float(nt_threshold if nt_threshold is not None else cfg.inference.nt_threshold)
    flip = bool(cfg.inference.flip_tta if flip_tta is None else flip_tta)
    refine_used = resolve_refine(model.cfg.inference, refine)
    if refine_options is None:
        refine_options = () if refine_used is None else (None,)
    for t in (nt_thr, *nt_thresholds):
        if not 0.0 < float(t) < 1.0:
            raise ValueError(f"no-target thresholds must be strictly between 0 and 1, got {t}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_total = len(dataset)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    n = min(n_total, limit) if limit is not None else n_total
    if n == 0:
        raise ValueError("the dataset has no samples to evaluate")

    home = _model_device(model)
    dev = torch.device(device) if device is not None else home
    if amp and dev.type != "cuda":
        raise ValueError("amp (fp16 autocast) is only supported on CUDA; drop it or use device='cuda'")
    size = int(cfg.image_size)
    # Under torch.distributed each rank evaluates its shard and the loop merges the ranks' meters.
    from train import distributed as D
    from train.sampler import eval_shard

    shard = eval_shard(n, D.get_rank(), D.get_world_size()) if D.is_dist() else list(range(n))
    subset = dataset if len(shard) == n_total else Subset(dataset, shard)
    # Sequential order (shuffle=False): the k-th sample seen is dataset index k, recorded as "index". Its
    # own generator: evaluating never moves the global RNG (training-time dropout depends on it).
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=Collator(TextTokenizer(cfg.text), size), pin_memory=dev.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    acc = evaluation_loop(model, loader, dev, rule, thr, min_pixels, amp, progress=progress, desc=desc,
                          total=len(shard), sample_indices=shard, nt_threshold=nt_thr, nt_thresholds=nt_thresholds,
                          flip_tta=flip, refine=refine_used if refine_used is not None else False,
                          refine_options=refine_options)
    wall = time.perf_counter() - t0
    meter, rule_meters, head_counts, records = acc["meter"], acc["rule_meters"], acc["head_counts"], acc["records"]

    per_sample = []
    for rec, m in zip(records, meter.per_sample()):
        per_sample.append({**rec, "iou": m["iou"], "outcome": m["outcome"], "pred_nt": m["outcome"] in ("TP", "FP"),
                           "I": m["I"], "U": m["U"],  # "gt_nt" comes with the loop's record
                           "pred_pixels": m["pred_pixels"], "gt_pixels": m["gt_pixels"], "tags": m["tags"]})
    tags = [r["tags"] for r in per_sample]
    breakdowns = {key: meter.breakdown(key) for key in BREAKDOWN_KEYS
                  if any(t.get(key) is not None for t in tags)}
    if "nt_kind" in breakdowns:  # target samples have no nt_kind: their "None" group only repeats them
        breakdowns["nt_kind"].pop("None", None)
    if "group" in breakdowns:  # mixed world: shapes samples have no taxonomy group ("By world" has them)
        breakdowns["group"].pop("None", None)
    return {
        "metrics": meter.compute(),
        "nt_auroc": nt_auroc(per_sample),
        "breakdowns": breakdowns,
        "per_head_nt": [dict(_nt_summary(c), head=k) for k, c in enumerate(head_counts)],
        "per_rule": {r: m.compute() for r, m in rule_meters.items()},
        # empty for a model without an NT branch (its emptiness is the min_pixels rule alone)
        "per_nt_threshold": {t: m.compute() for t, m in acc["threshold_meters"].items() if len(m)},
        "per_sample": per_sample,
        "nt_rule": rule,
        "threshold": thr,
        "nt_threshold": nt_thr,
        "min_pixels": int(min_pixels),
        "flip_tta": flip,
        "refine": refine_label(refine_used),
        "per_refine": {k: m.compute() for k, m in acc["refine_meters"].items()},
        "eval_size": size,
        "n": n,
        "wall_time_s": wall,
        "samples_per_s": n / wall if wall > 0 else None,
        "device": str(dev),
        "amp": bool(amp),
    }


# ---------------------------------------------------------------------------------------- reporting
def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def format_nt_heads(result: Mapping[str, Any]) -> str:
    """Markdown: no-target accuracy of every NT head alone, then every combination rule."""
    lines = ["| NT decision | acc | N-acc | T-acc | TP | FN | FP | TN |", "|---|" + "---:|" * 7]
    for h in result["per_head_nt"]:
        lines.append(f"| head {h['head']} alone | " + " | ".join(
            _fmt(h[k]) for k in ("acc", "N-acc", "T-acc", "TP", "FN", "FP", "TN")) + " |")
    for r, m in result["per_rule"].items():
        acc = None if m["n"] == 0 else 100.0 * (m["TP"] + m["TN"]) / m["n"]
        mark = " (used)" if r == result["nt_rule"] else ""
        lines.append(f"| rule {r}{mark} | " + " | ".join(
            _fmt(v) for v in (acc, m["N-acc"], m["T-acc"], m["TP"], m["FN"], m["FP"], m["TN"])) + " |")
    rules = ", ".join(f"{r}: gIoU {_fmt(m['gIoU'])} / cIoU {_fmt(m['cIoU'])}" for r, m in result["per_rule"].items())
    return ("\n".join(lines) + "\n\nN-acc = TP/(TP+FN), T-acc = TN/(TN+FP) (ReLA's formulas; positive = no "
            f"target); heads ordered coarse → final. Metrics under each rule: {rules}.")


def _paper_rows(dataset: str, split: str, split_by: Optional[str]) -> List[tuple]:
    """(label, published row) pairs to show beside ours."""
    key = dataset
    if dataset == "refcocog" and split_by == "google":
        key = "refcocog-google"
    rows = []
    row = get_paper_row(key, split)
    if row is not None:
        rows.append(("paper", row))
    if dataset == "grefcoco":
        readme = get_paper_row("grefcoco-readme", split)
        if readme is not None:
            rows.append(("README (rule any)", readme))
    return rows


def is_synthgres_export(dataset: Any) -> bool:
    """True for a gRefCOCO-format folder written by the SynthGRES exporter (its images are named
    synthgres_<split>_<index>.png): the published gRefCOCO rows must not be shown beside it."""
    images = getattr(getattr(dataset, "source", None), "images", None) or {}
    return any(str(im.get("file_name", "")).startswith(("synthgres_", "synthgres-"))
               for im in list(images.values())[:16])


def published_split_mismatch(dataset: Any, name: str, split: str, split_by: Optional[str] = None) -> Optional[str]:
    """None when `dataset` (a real-format loader) has the published size of `name`/`split` (refs,
    expressions, images as far as published: train.data.check.KNOWN_SIZES), else why not -- the paper's
    row is only meaningful beside the real split, not beside any folder in the same format."""
    from train.data.check import KNOWN_SIZES
    from train.data.refcoco import DEFAULT_SPLIT_BY

    report = getattr(dataset, "report", None)
    if report is None:
        return "the dataset has no split report"
    key = (name, split_by or ("unc" if name == "grefcoco" else DEFAULT_SPLIT_BY.get(name, "unc")))
    known = KNOWN_SIZES.get(key, {}).get(split)
    if not known or all(v is None for v in known.values()):
        return f"no published size is known for {name} {split}"
    for field in ("refs", "expressions", "images"):
        want = known.get(field)
        if want is not None and report.get(field) != want:
            return f"it has {report.get(field):,} {field} where the published {name} {split} has {want:,}"
    return None


def format_report(result: Mapping[str, Any], dataset: str, split: str, acc: str = "mabp-code",
                  split_by: Optional[str] = None, paper: bool = True) -> str:
    """The full printed report: paper-layout table (+ published rows), both accuracy families,
    breakdowns, and the per-head no-target table."""
    m = result["metrics"]
    rows = _paper_rows(dataset, split, split_by) if paper else []
    table = format_table(m, rows[0][1] if rows else None, acc=acc, nt_rule=result["nt_rule"])
    if len(rows) > 1:
        # format_table shows one published row; the others are spliced in as extra rows of the same layout.
        lines = table.split("\n")
        extra = [format_table(r, acc=acc, name=label).split("\n")[2] for label, r in rows[1:]]
        table = "\n".join(lines[:4] + extra + lines[4:])
    out = [f"## {dataset} {split} — n = {result['n']}, S = {result['eval_size']}, threshold {result['threshold']}, "
           f"no-target rule '{result['nt_rule']}'" + (f", min_pixels {result['min_pixels']}" if result["min_pixels"] else "")
           + (f", no-target threshold {result['nt_threshold']:g} (calibrated; 0.5 = argmax)"
              if result.get("nt_threshold", 0.5) != 0.5 else "")
           + (", flip TTA (not the paper's protocol)" if result.get("flip_tta") else "")
           + (f", masks refined: {result['refine']} (not the paper's protocol)"
              if result.get("refine", "none") != "none" else ""),
           "", table, "",
           "Both accuracy families: "
           f"MABP-code N-acc {_fmt(m['N-acc(MABP-code)'])}, T-acc {_fmt(m['T-acc(MABP-code)'])} "
           "(TP/(TP+FN+1), TP/(TP+FP+1)); "
           f"ReLA N-acc {_fmt(m['N-acc'])}, T-acc {_fmt(m['T-acc'])} (TP/(TP+FN), TN/(TN+FP)). "
           f"Outcomes TP {m['TP']} FN {m['FN']} FP {m['FP']} TN {m['TN']}."
           + (f" No-target AUROC {_fmt(result['nt_auroc'])} (threshold-free: how well the no-target "
              "probability ranks no-target above target samples; 50 = chance)."
              if result.get("nt_auroc") is not None else "")]
    titles = {"target": "By target tag", "type": "By expression type", "nt_kind": "By no-target kind",
              "group": "By taxonomy group (photo world)", "world": "By world"}
    for key, bd in result["breakdowns"].items():
        out += ["", f"### {titles.get(key, key)}", "", format_breakdown(bd, key=key)]
    if result["per_head_nt"]:
        out += ["", "### No-target decision per head and per rule", "", format_nt_heads(result)]
    if result.get("per_nt_threshold"):
        out += ["", "### Other no-target thresholds (same pass, same masks)", "", format_nt_thresholds(result)]
    if result.get("per_refine"):
        out += ["", "### Mask refinement (same pass, same no-target decisions)", "", format_refine(result)]
    out += ["", f"{result['n']} samples in {result['wall_time_s']:.1f} s "
            f"({_fmt(result['samples_per_s'])} samples/s) on {result['device']}."]
    return "\n".join(out)


def format_refine(result: Mapping[str, Any]) -> str:
    """Markdown table: this run's mask refinement and each of `result["per_refine"]` (gIoU, cIoU,
    Pr@0.7/0.8/0.9); N-acc is the same for all (the refinement changes masks, not decisions)."""
    rows = ["| mask refinement | gIoU | cIoU | Pr@0.7 | Pr@0.8 | Pr@0.9 | |", "|---|---|---|---|---|---|---|"]
    entries = [(result.get("refine", "none"), result["metrics"], "this run's")]
    entries += [(k, m, "") for k, m in result["per_refine"].items() if k != result.get("refine", "none")]
    for key, m, mark in entries:
        rows.append(f"| {key} | {_fmt(m['gIoU'])} | {_fmt(m['cIoU'])} | {_fmt(m['Pr@0.7'])} | {_fmt(m['Pr@0.8'])} | "
                    f"{_fmt(m['Pr@0.9'])} | {mark} |")
    return "\n".join(rows)


def format_nt_thresholds(result: Mapping[str, Any]) -> str:
    """Markdown table of `result["per_nt_threshold"]` (train.evaluate --nt-thresholds): one row per
    no-target threshold with gIoU, cIoU and both accuracy families; the run's own threshold is marked."""
    rows = ["| NT threshold | gIoU | cIoU | N-acc | T-acc | N-acc (MABP code) | |", "|---|---|---|---|---|---|---|"]
    own = result.get("nt_threshold")
    for t, m in sorted(result["per_nt_threshold"].items(), key=lambda kv: float(kv[0])):
        mark = "this run's" if own is not None and abs(float(t) - float(own)) < 1e-9 else ""
        rows.append(f"| {float(t):g} | {_fmt(m['gIoU'])} | {_fmt(m['cIoU'])} | {_fmt(m['N-acc'])} | "
                    f"{_fmt(m['T-acc'])} | {_fmt(m['N-acc(MABP-code)'])} | {mark} |")
    return "\n".join(rows)


def sha256_file(path: os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (streamed: checkpoints can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_results(result: Mapping[str, Any], out_dir: os.PathLike, meta: Mapping[str, Any]) -> Dict[str, Path]:
    """results.json (everything but the per-sample list, plus `meta`) and per_sample.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "per_sample"}
    summary.update(meta)
    paths = {"results": out / "results.json", "per_sample": out / "per_sample.jsonl"}
    with open(paths["results"], "w", encoding="utf-8") as f:
        json.dump(_json_safe(summary), f, indent=2)
    with open(paths["per_sample"], "w", encoding="utf-8") as f:
        for rec in result["per_sample"]:
            f.write(json.dumps(_json_safe(rec)) + "\n")
    return paths


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate",
                                description="Evaluate an MABP checkpoint with the official GRES protocol (§4).")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by save_checkpoint (rebuilds the model)")
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--split", required=True, help="val / testA / testB / test / train")
    p.add_argument("--root", default=None, help="dataset folder (gRefCOCO/RefCOCO layout or a SynthGRES export); "
                   "default $MABP_DATASETS or ./datasets; not used by synthgres")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--nt-rule", choices=NT_RULES, default=None,
                   help="no-target rule over the 4 NT heads (default: the checkpoint's inference.nt_rule)")
    p.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the checkpoint's, 0.5)")
    p.add_argument("--nt-threshold", type=float, default=None,
                   help="NT probability above which a head votes no target (default: the checkpoint's "
                        "inference.nt_threshold; 0.5 = argmax, the official decision)")
    p.add_argument("--nt-thresholds", type=float, nargs="+", default=(), metavar="T",
                   help="more no-target thresholds scored from the same pass (e.g. 0.5 beside a calibrated "
                        "checkpoint's own): a table in the report, 'per_nt_threshold' in results.json")
    p.add_argument("--min-pixels", type=int, default=0,
                   help="paper-only rule: masks with fewer pixels count as no target (0 = official protocol; a "
                        "checkpoint without an NT branch uses its own, 50)")
    p.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                   help="also answer each sample on the mirrored image with left/right swapped and score the "
                        "average (mabp/flip_tta.py; not the paper's protocol; default: the checkpoint's "
                        "inference.flip_tta)")
    p.add_argument("--refine", choices=REFINE_MODES, default=None,
                   help="mask refinement before the threshold: guided (the guided filter with the image as guide, "
                        "mabp/mask_refine.py; not the paper's protocol) or none (default: the checkpoint's "
                        "inference.refine); a refined evaluation also scores the unrefined masks")
    p.add_argument("--refine-radius", type=int, default=None,
                   help="guided filter radius in pixels of the model input (default: the checkpoint's)")
    p.add_argument("--refine-eps", type=float, default=None,
                   help="guided filter regulariser, squared [0, 1] colour units (default: the checkpoint's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/<ckpt-stem>-<dataset>-<split>/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only)")
    p.add_argument("--size", type=int, default=None,
                   help="synthgres only: the generated canvas side (default 320, the benchmark); evaluation "
                        "always happens at the model's S×S")
    p.add_argument("--split-by", default=None, help="refs file variant (refcocog: umd or google)")
    p.add_argument("--world", choices=("shapes", "photo", "mixed"), default=None,
                   help="synthgres only: the world (default shapes; photo = real object cut-outs, needs the "
                        "Debian packages tuxpaint-stamps-default mate-backgrounds gnome-backgrounds)")
    p.add_argument("--photographic-only", action="store_true",
                   help="synthgres photo / mixed: photographs only (no drawn stamps)")
    p.add_argument("--acc", choices=ACC_FAMILIES, default="mabp-code",
                   help="which N-acc/T-acc formulas fill the table (both are in results.json)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (image decoding)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 is often faster for small models on a busy machine")
    p.add_argument("--no-progress", action="store_true")
    return p


def _setup(args: argparse.Namespace):
    """Validate the arguments, load the model and the dataset; EvalInputError for anything wrong."""
    from mabp.registry import build_mabp, load_checkpoint

    ckpt_path = Path(args.checkpoint)
    if not ckpt_path.is_file():
        raise EvalInputError(f"checkpoint not found: {ckpt_path} (pass the .pt file written by training)")
    for name, val, lo in (("--batch-size", args.batch_size, 1), ("--limit", args.limit, 1),
                          ("--min-pixels", args.min_pixels, 0), ("--workers", args.workers, 0),
                          ("--size", args.size, 32), ("--threads", args.threads, 1)):
        if val is not None and val < lo:
            raise EvalInputError(f"{name} must be >= {lo}, got {val}")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise EvalInputError(f"--threshold must be strictly between 0 and 1, got {args.threshold}")
    if args.nt_threshold is not None and not 0.0 < args.nt_threshold < 1.0:
        raise EvalInputError(f"--nt-threshold must be strictly between 0 and 1, got {args.nt_threshold}")
    for t in args.nt_thresholds:
        if not 0.0 < t < 1.0:
            raise EvalInputError(f"--nt-thresholds must each be strictly between 0 and 1, got {t}")
    dev = args.device
    try:
        dev_t = torch.device(dev)
    except RuntimeError:
        raise EvalInputError(f"--device {dev!r} is not a device; use cpu or cuda[:i]") from None
    if dev_t.type == "cuda" and not torch.cuda.is_available():
        raise EvalInputError("--device cuda requested but CUDA is not available; use --device cpu")
    if args.amp and dev_t.type != "cuda":
        raise EvalInputError("--amp (fp16 autocast) needs --device cuda; drop --amp on CPU")
    if args.size is not None and args.dataset != "synthgres":
        raise EvalInputError(f"--size applies to synthgres only; {args.dataset} images are evaluated from their "
                             "original resolution squashed to the model size")
    kw: Dict[str, Any] = {}
    if (args.world is not None or args.photographic_only) and args.dataset != "synthgres":
        raise EvalInputError("--world / --photographic-only apply to synthgres only")
    if args.dataset == "synthgres":
        if args.world is not None:
            kw["world"] = args.world
        if args.photographic_only:
            kw["photographic_only"] = True
        from train.data.synthgres import SPLITS

        if args.split not in SPLITS:
            raise EvalInputError(f"SynthGRES has no split {args.split!r}; choose one of {tuple(SPLITS)}")
        if args.root is not None:
            raise EvalInputError("--root is not used by synthgres (generated on the fly); to evaluate a SynthGRES "
                                 "export use --dataset grefcoco --root <export dir>")
        if args.split == "train":
            kw["length"] = args.limit or None
    elif args.split_by is not None:
        kw["split_by"] = args.split_by
    root = args.root
    if root is not None and not os.path.isdir(root):
        raise EvalInputError(f"dataset root not found: {root} (pass --root with the dataset folder)")
    try:
        dataset = build_dataset(args.dataset, args.split, root=root, mode="eval", size=args.size, **kw)
    except DatasetError as e:
        raise EvalInputError(str(e)) from None
    except (ValueError, FileNotFoundError) as e:
        raise EvalInputError(f"cannot open {args.dataset} {args.split}: {e}") from None
    except RuntimeError as e:  # the photo world without its Debian packages: the message says what to install
        raise EvalInputError(str(e)) from None
    if len(dataset) == 0:
        raise EvalInputError(f"{args.dataset} {args.split} has no samples")
    # The model last: a paper checkpoint takes seconds to load, so cheap input mistakes fail first.
    try:
        ckpt = load_checkpoint(ckpt_path)
        model = build_mabp(checkpoint=ckpt)
    except (FileNotFoundError, ValueError) as e:
        raise EvalInputError(f"cannot use checkpoint {ckpt_path}: {e}") from None
    return ckpt_path, ckpt, model, dataset


def _one_line(e: BaseException, limit: int = 500) -> str:
    """An exception message on one line (torch.load's unpickling errors span many lines)."""
    msg = " ".join(str(e).split())
    return msg if len(msg) <= limit else msg[:limit] + " ..."


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.dataset == "mevis":  # video: J / F / J&F, frame by frame (train/video_eval.py)
        from train.video_eval import main_from_args
        return main_from_args(args)
    try:
        ckpt_path, ckpt, model, dataset = _setup(args)
    except EvalInputError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rule = args.nt_rule or model.cfg.inference.nt_rule
    try:
        refine = cli_refine(model, args.refine, args.refine_radius, args.refine_eps)
    except ValueError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    nt_thr = args.nt_threshold if args.nt_threshold is not None else model.cfg.inference.nt_threshold
    src = "--nt-rule" if args.nt_rule else "the checkpoint's inference.nt_rule"
    print(f"no-target rule: {rule} (from {src}); threshold "
          f"{args.threshold if args.threshold is not None else model.cfg.inference.threshold}; "
          f"no-target threshold {nt_thr:g}; "
          f"flip TTA {'on' if (model.cfg.inference.flip_tta if args.flip_tta is None else args.flip_tta) else 'off'}; "
          f"mask refinement {refine_label(resolve_refine(model.cfg.inference, refine))}; "
          f"model size {model.cfg.image_size}; {min(len(dataset), args.limit or len(dataset))} samples", flush=True)
    try:
        result = evaluate_model(model, dataset, batch_size=args.batch_size, nt_rule=args.nt_rule,
                                threshold=args.threshold, min_pixels=args.min_pixels, limit=args.limit,
                                device=args.device, progress=not args.no_progress, amp=args.amp,
                                num_workers=args.workers, desc=f"{args.dataset} {args.split}",
                                nt_threshold=args.nt_threshold,
                                nt_thresholds=sorted(set(args.nt_thresholds)), flip_tta=args.flip_tta,
                                refine=refine)
    except DatasetError as e:  # a file that went missing / is corrupt mid-run: still the data's fault
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    export = args.dataset != "synthgres" and is_synthgres_export(dataset)
    mismatch = None if args.dataset == "synthgres" else published_split_mismatch(dataset, args.dataset, args.split,
                                                                                  args.split_by)
    if export:
        print("note: this folder is a SynthGRES export, so no published gRefCOCO row is shown")
    elif mismatch:
        print(f"note: no published row is shown: {mismatch}")
    world = f"-{args.world}" if args.world and args.world != "shapes" else ""
    report = format_report(result, args.dataset + (f" ({args.world} world)" if world else ""), args.split,
                           acc=args.acc, split_by=args.split_by, paper=not export and not mismatch)
    print(report)
    out_dir = Path(args.out) if args.out else Path("runs") / "eval" / f"{ckpt_path.stem}-{args.dataset}{world}-{args.split}"
    meta = {
        "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_sha256": sha256_file(ckpt_path)[:16],
        "checkpoint_info": {k: ckpt[k] for k in ("step", "epoch", "iteration") if k in ckpt},
        "dataset": args.dataset, "world": args.world, "split": args.split, "root": args.root,
        "synthgres_export": export,
        "published_split": mismatch is None if args.dataset != "synthgres" else None,
        "model_config": model.cfg.to_dict(),
        "args": vars(args),
        "acc_table": args.acc,
        "protocol": "MABP §4: image squashed bilinear to S×S, GT nearest to S×S, un-zeroed prediction scored, "
                    "no-target from the NT heads only",
    }
    paths = write_results(result, out_dir, meta)
    (out_dir / "report.md").write_text(report + "\n", encoding="utf-8")
    print(f"\nwrote {paths['results']}, {paths['per_sample']} and {out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
