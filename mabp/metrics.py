"""GRES metrics: the evaluation protocol of ReLA/MABP (MABP's and ReLA's ReferEvaluator), made unambiguous.

Unit of evaluation: one (ref, sentence) pair = one sample. Per sample, with I = |pred ∧ gt| and
U = |pred ∨ gt| computed on the **un-zeroed** predicted mask (a predicted "no target" does not clear the
mask before U is taken, exactly as both official evaluators do):

| GT          | prediction  | outcome | sample IoU                 | added to ΣI / ΣU |
|-------------|-------------|---------|----------------------------|------------------|
| no-target   | pred_nt     | TP      | 1                          | 0 / 0            |
| no-target   | not pred_nt | FN      | 0 (even for an empty mask) | 0 / |pred|       |
| has target  | pred_nt     | FP      | I forced to 0 → 0          | 0 / U            |
| has target  | not pred_nt | TN      | I/U (0 if U == 0)          | I / U            |

("Positive" = "no target": TP/FN/FP/TN are about the no-target decision.)

Metrics (all in %):
- gIoU = mean sample IoU over all samples (no-target included); cIoU = ΣI / ΣU.
- Pr@t = fraction of *target* samples (TN + FP) with IoU ≥ t (note ≥, as in the official code).
- "N-acc" / "T-acc": ReLA's definitions (after its fix 884ef17): TP/(TP+FN) and TN/(TN+FP).
- "N-acc(MABP-code)" / "T-acc(MABP-code)": the formulas still in MABP's evaluator, TP/(TP+FN+1) and
  TP/(TP+FP+1). The latter is a +1-smoothed *precision of no-target predictions*, not a target accuracy;
  the paper's "T-acc 96.40" is this quantity, so it is not comparable to ReLA's T-acc.

Undefined values: a metric whose denominator is 0 (gIoU/cIoU of an empty meter, Pr@ without target
samples, ReLA N-acc without no-target samples, ...) is reported as ``None`` — never NaN, and never a
misleading 0.0. The MABP-code formulas always have a non-zero denominator thanks to their +1.

The meter's state is a handful of flat numpy arrays plus two Python lists (sample ids, tags), so DDP
ranks can `all_gather_object` their `state_dict()` and `merge` them.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .postprocess import NT_RULES  # one definition of the no-target rules for the project

try:  # torch is optional at this API edge: numpy inputs work without it.
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency of the project
    torch = None  # type: ignore[assignment]

ArrayLike = Union[np.ndarray, "torch.Tensor"]

# Outcome codes stored in the meter (int8). Positive class = "no target".
TP, FN, FP, TN = 0, 1, 2, 3
OUTCOME_NAMES: Tuple[str, ...] = ("TP", "FN", "FP", "TN")

PR_THRESHOLDS: Tuple[float, ...] = (0.7, 0.8, 0.9)

# Column order of the paper's gRefCOCO table (MABP Table II): cIoU, gIoU, N-acc, T-acc, Pr@0.9/0.8/0.7.
TABLE_COLUMNS: Tuple[str, ...] = ("cIoU", "gIoU", "N-acc", "T-acc", "Pr@0.9", "Pr@0.8", "Pr@0.7")



def _to_numpy(x: Any) -> np.ndarray:
    """Convert a tensor / array / scalar / sequence to a numpy array (no copy when possible)."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_bool_mask(x: Any, name: str) -> np.ndarray:
    """Return `x` as a bool array; refuse floating-point inputs.

    Why refuse floats: a probability map passed by mistake would be silently binarised at "!= 0",
    i.e. at threshold 0 instead of 0.5, giving plausible-looking but wrong metrics.
    """
    a = _to_numpy(x)
    if a.dtype == np.bool_:
        return a
    if np.issubdtype(a.dtype, np.floating):
        raise TypeError(
            f"{name} has dtype {a.dtype}; pass a binary mask (threshold probabilities/logits first, "
            "e.g. sigmoid(logits) > 0.5)")
    return a.astype(bool)


def _pct(num: float, den: float) -> Optional[float]:
    """100·num/den, or None when den == 0 (undefined; see module docstring)."""
    return None if den == 0 else 100.0 * float(num) / float(den)


def _compute_from_arrays(iou: np.ndarray, inter: np.ndarray, union: np.ndarray,
                         outcome: np.ndarray) -> Dict[str, Any]:
    """All metrics from per-sample arrays (the contributed I/U, i.e. after the §4 forcing)."""
    n = int(outcome.size)
    counts = {name: int(np.count_nonzero(outcome == code)) for code, name in enumerate(OUTCOME_NAMES)}
    tp, fn, fp, tn = counts["TP"], counts["FN"], counts["FP"], counts["TN"]
    sum_i = int(inter.sum()) if n else 0
    sum_u = int(union.sum()) if n else 0
    target = (outcome == FP) | (outcome == TN)
    n_target = int(target.sum())
    res: Dict[str, Any] = {
        "gIoU": _pct(float(iou.sum()), n) if n else None,
        "cIoU": _pct(sum_i, sum_u),
    }
    for t in PR_THRESHOLDS:
        # ">=" as in ReLA/MABP; IoUs are exact float divisions of integers, so IoU == 0.7 compares equal.
        res[f"Pr@{t}"] = _pct(int(np.count_nonzero(iou[target] >= t)), n_target)
    res["N-acc"] = _pct(tp, tp + fn)
    res["T-acc"] = _pct(tn, tn + fp)
    res["N-acc(MABP-code)"] = 100.0 * tp / (tp + fn + 1)
    res["T-acc(MABP-code)"] = 100.0 * tp / (tp + fp + 1)
    res.update(counts)
    res.update({"n": n, "n_target": n_target, "n_no_target": tp + fn, "sum_I": sum_i, "sum_U": sum_u})
    return res


class GRESMeter:
    """Accumulates per-sample GRES results and computes the §4 metrics.

    Usage::

        meter = GRESMeter()
        meter.update(pred_mask, gt_mask, pred_nt, gt_nt, tags={"target": "single"}, sample_id=17)
        meter.compute()["gIoU"]

    State (see `state_dict`): per sample `iou` (float64), `I` and `U` (int64, the amounts *added to*
    ΣI/ΣU, i.e. after the table's forcing), `outcome` (int8: 0 TP, 1 FN, 2 FP, 3 TN), `pred_pixels`,
    `gt_pixels` (int64, raw mask areas, for diagnostics), plus lists `sample_ids` and `tags`.
    """

    _ARRAY_FIELDS: Tuple[Tuple[str, Any], ...] = (
        ("iou", np.float64), ("I", np.int64), ("U", np.int64), ("outcome", np.int8),
        ("pred_pixels", np.int64), ("gt_pixels", np.int64))

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every sample."""
        # Per-update chunks, concatenated lazily: appending Python scalars per sample would be slow
        # for the ~50k samples of a gRefCOCO eval.
        self._chunks: Dict[str, List[np.ndarray]] = {k: [] for k, _ in self._ARRAY_FIELDS}
        self._sample_ids: List[Any] = []
        self._tags: List[Dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._sample_ids)

    # ------------------------------------------------------------------ accumulation
    def update(self, pred_mask: ArrayLike, gt_mask: ArrayLike, pred_nt: bool, gt_nt: bool,
               tags: Optional[Mapping[str, Any]] = None, sample_id: Any = None) -> Dict[str, Any]:
        """Add one sample.

        Args:
            pred_mask: (H, W) bool predicted mask, NOT zeroed when `pred_nt` (the protocol needs the raw
                mask for U of FP samples and |pred| of FN samples).
            gt_mask: (H, W) bool ground truth (all False for no-target samples).
            pred_nt: the model's no-target decision (from the NT classifier only, see §4).
            gt_nt: whether the expression has no target.
            tags: optional labels used by `breakdown` (e.g. {"target": "multi-mixed", "type": ...}).
            sample_id: optional identifier kept in `per_sample()`.
        Returns:
            the per-sample record (as in `per_sample()`).
        """
        pred = _as_bool_mask(pred_mask, "pred_mask")
        gt = _as_bool_mask(gt_mask, "gt_mask")
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(f"pred_mask {pred.shape} and gt_mask {gt.shape} must both be (H, W)")
        self.update_batch(pred[None], gt[None], [bool(pred_nt)], [bool(gt_nt)],
                          tags=None if tags is None else [tags],
                          sample_ids=[sample_id])
        # Read the record from the chunk just appended: going through `_arrays()` would concatenate
        # all chunks on every call, making a loop of `update` calls quadratic.
        last = {k: self._chunks[k][-1][0] for k, _ in self._ARRAY_FIELDS}
        return self._make_record(last, self._sample_ids[-1], self._tags[-1])

    def update_batch(self, pred_masks: ArrayLike, gt_masks: ArrayLike, pred_nt: ArrayLike,
                     gt_nt: ArrayLike, tags: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
                     sample_ids: Optional[Sequence[Any]] = None) -> None:
        """Add a batch of B samples: masks (B, H, W) bool, `pred_nt` / `gt_nt` (B,) bool,
        `tags` a list of B dicts (or None), `sample_ids` a list of B ids (or None)."""
        pred = _as_bool_mask(pred_masks, "pred_masks")
        gt = _as_bool_mask(gt_masks, "gt_masks")
        if pred.shape != gt.shape or pred.ndim != 3:
            raise ValueError(f"pred_masks {pred.shape} and gt_masks {gt.shape} must both be (B, H, W)")
        b = pred.shape[0]
        p_nt = _to_numpy(pred_nt).astype(bool).reshape(-1)
        g_nt = _to_numpy(gt_nt).astype(bool).reshape(-1)
        if p_nt.size != b or g_nt.size != b:
            raise ValueError(f"pred_nt ({p_nt.size}) and gt_nt ({g_nt.size}) must have B={b} entries")
        if tags is not None and len(tags) != b:
            raise ValueError(f"tags has {len(tags)} entries, expected {b}")
        if sample_ids is not None and len(sample_ids) != b:
            raise ValueError(f"sample_ids has {len(sample_ids)} entries, expected {b}")

        flat_p = pred.reshape(b, -1)
        flat_g = gt.reshape(b, -1)
        raw_i = np.count_nonzero(flat_p & flat_g, axis=1).astype(np.int64)
        raw_u = np.count_nonzero(flat_p | flat_g, axis=1).astype(np.int64)
        pred_px = np.count_nonzero(flat_p, axis=1).astype(np.int64)
        gt_px = np.count_nonzero(flat_g, axis=1).astype(np.int64)

        outcome = np.where(g_nt, np.where(p_nt, TP, FN), np.where(p_nt, FP, TN)).astype(np.int8)
        # Contributed I: only TN keeps its intersection (FP: forced to 0; no-target: GT empty anyway).
        inter = np.where(outcome == TN, raw_i, 0).astype(np.int64)
        # Contributed U: TP adds nothing; FN adds |pred| (= raw U since GT is empty); FP/TN add raw U.
        union = np.where(outcome == TP, 0, raw_u).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tn_iou = np.where(raw_u > 0, raw_i / np.maximum(raw_u, 1), 0.0)
        iou = np.select([outcome == TP, outcome == TN], [1.0, tn_iou], default=0.0).astype(np.float64)

        for key, arr in (("iou", iou), ("I", inter), ("U", union), ("outcome", outcome),
                         ("pred_pixels", pred_px), ("gt_pixels", gt_px)):
            self._chunks[key].append(arr)
        self._sample_ids.extend(list(sample_ids) if sample_ids is not None else [None] * b)
        self._tags.extend([dict(t) if t else {} for t in tags] if tags is not None else [{} for _ in range(b)])

    # ------------------------------------------------------------------ state
    def _arrays(self) -> Dict[str, np.ndarray]:
        out = {}
        for key, dtype in self._ARRAY_FIELDS:
            chunks = self._chunks[key]
            if len(chunks) == 1:
                arr = chunks[0]
            else:
                arr = np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
                self._chunks[key] = [arr]  # keep it concatenated so repeated calls are cheap
            out[key] = arr
        return out

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """The numeric per-sample state as flat numpy arrays (no ids, no tags)."""
        return {k: v.copy() for k, v in self._arrays().items()}

    def state_dict(self) -> Dict[str, Any]:
        """Picklable state: the arrays of `to_arrays()` plus `sample_ids` and `tags` lists."""
        state: Dict[str, Any] = self.to_arrays()
        state["sample_ids"] = list(self._sample_ids)
        state["tags"] = [dict(t) for t in self._tags]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this meter's content by `state` (as produced by `state_dict`)."""
        n = int(np.asarray(state["outcome"]).size)
        self.reset()
        for key, dtype in self._ARRAY_FIELDS:
            arr = np.asarray(state[key], dtype=dtype).reshape(-1)
            if arr.size != n:
                raise ValueError(f"state field {key!r} has {arr.size} entries, expected {n}")
            self._chunks[key] = [arr.copy()]
        ids = list(state.get("sample_ids", [None] * n))
        tags = [dict(t) for t in state.get("tags", [{}] * n)]
        if len(ids) != n or len(tags) != n:
            raise ValueError("sample_ids/tags length does not match the arrays")
        self._sample_ids, self._tags = ids, tags

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "GRESMeter":
        """Build a meter from `state_dict()` output (e.g. one gathered from another DDP rank)."""
        m = cls()
        m.load_state_dict(state)
        return m

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], sample_ids: Optional[Sequence[Any]] = None,
                    tags: Optional[Sequence[Mapping[str, Any]]] = None) -> "GRESMeter":
        """Build a meter from `to_arrays()` output (ids and tags optional)."""
        n = int(np.asarray(arrays["outcome"]).size)
        state = dict(arrays, sample_ids=list(sample_ids) if sample_ids is not None else [None] * n,
                     tags=list(tags) if tags is not None else [{}] * n)
        return cls.from_state_dict(state)

    def merge(self, other: Union["GRESMeter", Mapping[str, Any]]) -> "GRESMeter":
        """Append all samples of `other` (a meter or a `state_dict`) to this meter; returns self."""
        state = other.state_dict() if isinstance(other, GRESMeter) else other
        n = int(np.asarray(state["outcome"]).size)
        for key, dtype in self._ARRAY_FIELDS:
            self._chunks[key].append(np.asarray(state[key], dtype=dtype).reshape(-1).copy())
        self._sample_ids.extend(list(state.get("sample_ids", [None] * n)))
        self._tags.extend(dict(t) for t in state.get("tags", [{}] * n))
        return self

    # ------------------------------------------------------------------ results
    def compute(self) -> Dict[str, Any]:
        """All metrics over every sample so far.

        Keys: "gIoU", "cIoU", "Pr@0.7", "Pr@0.8", "Pr@0.9", "N-acc", "T-acc" (ReLA),
        "N-acc(MABP-code)", "T-acc(MABP-code)" (all in %, None when undefined), counts "TP", "FN",
        "FP", "TN", "n", "n_target", "n_no_target", and the sums "sum_I", "sum_U".
        """
        a = self._arrays()
        return _compute_from_arrays(a["iou"], a["I"], a["U"], a["outcome"])

    def breakdown(self, key: str) -> Dict[str, Dict[str, Any]]:
        """`compute()` per value of `tags[key]` (e.g. "target" → single / multi-same / multi-mixed /
        no-target). Values are stringified; samples without the tag go to the group "None"."""
        a = self._arrays()
        values = np.array([str(t.get(key)) for t in self._tags], dtype=object)
        out: Dict[str, Dict[str, Any]] = {}
        for v in sorted(set(values.tolist())):
            sel = values == v
            out[v] = _compute_from_arrays(a["iou"][sel], a["I"][sel], a["U"][sel], a["outcome"][sel])
        return out

    @staticmethod
    def _make_record(v: Mapping[str, Any], sample_id: Any, tags: Mapping[str, Any]) -> Dict[str, Any]:
        return {"sample_id": sample_id, "iou": float(v["iou"]), "I": int(v["I"]), "U": int(v["U"]),
                "outcome": OUTCOME_NAMES[int(v["outcome"])], "pred_pixels": int(v["pred_pixels"]),
                "gt_pixels": int(v["gt_pixels"]), "tags": dict(tags)}

    def per_sample(self) -> List[Dict[str, Any]]:
        """One dict per sample: sample_id, iou, I and U (as added to ΣI/ΣU), outcome
        ("TP"/"FN"/"FP"/"TN"), pred_pixels, gt_pixels (raw areas) and tags. JSON-serialisable as long
        as the ids and tags are."""
        a = self._arrays()
        return [self._make_record({k: a[k][i] for k in a}, self._sample_ids[i], self._tags[i])
                for i in range(len(self))]


# ---------------------------------------------------------------------- decisions
def decide_no_target(nt_logits: Union[ArrayLike, Sequence[ArrayLike]], rule: str = "any",
                     threshold: float = 0.5) -> np.ndarray:
    """Turn the NT heads' logits into a per-sample no-target decision.

    Args:
        nt_logits: a list of (B, 2) logits/probabilities, one per NT head in head order (MABP has 4:
            three scale heads and the final head), or a single (B, 2) array. Class 1 = no target.
        rule: "first" — head 0 only (what produced the paper's numbers, a bug per the README);
              "last"  — the final head only;
              "any"   — OR over all heads (the official repo / README numbers).
        threshold: a head votes no target on argmax (0.5) or when its NT probability exceeds this
            (then `nt_logits` must be logits: the probability is their softmax).
    Returns:
        (B,) bool array, True = predicted no target. Ties (equal logits) go to class 0, as argmax does.
    """
    if rule not in NT_RULES:
        raise ValueError(f"rule must be one of {NT_RULES}, got {rule!r}")
    heads = [nt_logits] if (not isinstance(nt_logits, (list, tuple))) else list(nt_logits)
    if not heads:
        raise ValueError("nt_logits is empty")
    arrays = [_to_numpy(h) for h in heads]
    for k, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"NT head {k} has shape {a.shape}, expected (B, 2)")
    # One rule for the whole project: the model-side decision (torch) applied to these arrays.
    import torch

    from .postprocess import decide_no_target as _decide

    decision, _ = _decide([torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in arrays], rule, threshold)
    return decision.numpy()


def apply_min_pixels(mask: ArrayLike, min_pixels: int = 50) -> Tuple[np.ndarray, Union[bool, np.ndarray]]:
    """The paper-only rule (CGFormer and the "NT branch removed" ablation): a predicted mask with fewer
    than `min_pixels` positive pixels is treated as empty / no target.

    Args:
        mask: (H, W) or (B, H, W) bool.
    Returns:
        (mask with the small ones cleared, is_empty) where is_empty is a bool for (H, W) input and a
        (B,) bool array for batched input. Not used by the official MABP evaluation (§4).
    """
    m = _as_bool_mask(mask, "mask").copy()
    if m.ndim == 2:
        empty = int(np.count_nonzero(m)) < min_pixels
        if empty:
            m[:] = False
        return m, bool(empty)
    if m.ndim == 3:
        empty_b = np.count_nonzero(m.reshape(m.shape[0], -1), axis=1) < min_pixels
        m[empty_b] = False
        return m, empty_b
    raise ValueError(f"mask must be (H, W) or (B, H, W), got {m.shape}")


# ---------------------------------------------------------------------- reference numbers
# Published numbers (paper Tables I-VI; buptLwz/MABP README). The paper's and README's N-acc / T-acc were produced by MABP's
# evaluator, i.e. with the pre-fix formulas, so they are stored under the "(MABP-code)" keys only.
PAPER_RESULTS: Dict[str, Dict[str, Dict[str, Any]]] = {
    # MABP paper, gRefCOCO (NT decision from head 0 only).
    "grefcoco": {
        "val": {"cIoU": 65.69, "gIoU": 68.79, "N-acc(MABP-code)": 64.55, "T-acc(MABP-code)": 96.40,
                "Pr@0.9": 26.17, "Pr@0.8": 58.92, "Pr@0.7": 70.45, "nt_rule": "first"},
        "testA": {"cIoU": 71.60, "gIoU": 72.79, "nt_rule": "first"},
        "testB": {"cIoU": 62.75, "gIoU": 64.01, "nt_rule": "first"},
    },
    # Official repo README: OR over the 4 NT heads.
    "grefcoco-readme": {
        "val": {"cIoU": 65.72, "gIoU": 68.86, "N-acc(MABP-code)": 64.73, "T-acc(MABP-code)": 96.35,
                "Pr@0.9": 26.17, "Pr@0.8": 58.92, "Pr@0.7": 70.45, "nt_rule": "any"},
    },
    # ReLA, for context (its own paper; the released checkpoint per ReLA issue #10, approximate).
    "grefcoco-rela-paper": {"val": {"cIoU": 62.42, "gIoU": 63.60}},
    "grefcoco-rela-released": {"val": {"cIoU": 63.10, "gIoU": 66.34}},
    # Classic RES, MABP paper Table I (cIoU = oIoU).
    "refcoco": {"val": {"cIoU": 74.48}, "testA": {"cIoU": 76.73}, "testB": {"cIoU": 71.07}},
    "refcoco+": {"val": {"cIoU": 65.99}, "testA": {"cIoU": 71.76}, "testB": {"cIoU": 57.22}},
    "refcocog": {"val": {"cIoU": 65.38}, "test": {"cIoU": 66.64}},  # umd split (val-U, test-U)
    "refcocog-google": {"val": {"cIoU": 62.84}},  # val-G
}


def get_paper_row(name: str, split: str) -> Optional[Dict[str, Any]]:
    """The published row for dataset key `name` (a key of PAPER_RESULTS) and `split`, or None."""
    return PAPER_RESULTS.get(name, {}).get(split)


# ---------------------------------------------------------------------- tables
_ACC_FAMILIES = {"mabp-code": ("N-acc(MABP-code)", "T-acc(MABP-code)"), "rela": ("N-acc", "T-acc")}
_ACC_NOTES = {
    "mabp-code": "N-acc = TP/(TP+FN+1), T-acc = TP/(TP+FP+1) (MABP's evaluator; the paper's numbers)",
    "rela": "N-acc = TP/(TP+FN), T-acc = TN/(TN+FP) (ReLA's fixed evaluator)",
}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.2f}"


def _acc_keys(acc: str) -> Tuple[str, str]:
    if acc not in _ACC_FAMILIES:
        raise ValueError(f"acc must be one of {tuple(_ACC_FAMILIES)}, got {acc!r}")
    return _ACC_FAMILIES[acc]


def _row_values(row: Mapping[str, Any], acc: str) -> List[str]:
    n_key, t_key = _acc_keys(acc)
    out = []
    for col in TABLE_COLUMNS:
        key = {"N-acc": n_key, "T-acc": t_key}.get(col, col)
        out.append(_fmt(row.get(key)))
    return out


def format_table(results: Mapping[str, Any], paper_row: Optional[Mapping[str, Any]] = None,
                 acc: str = "mabp-code", name: str = "ours", nt_rule: Optional[str] = None) -> str:
    """A Markdown table in the paper's layout (cIoU, gIoU, N-acc, T-acc, Pr@0.9, Pr@0.8, Pr@0.7).

    Args:
        results: `GRESMeter.compute()` output.
        paper_row: optional published row (e.g. `get_paper_row("grefcoco", "val")`), shown beside.
        acc: which N-acc/T-acc family fills the two accuracy columns: "mabp-code" (default, the one
            the paper's numbers use, so rows are comparable) or "rela". A footnote names the formulas.
        name: label of our row.
        nt_rule: the no-target rule used for our row ("first"/"last"/"any"); stated in the footnote.
    """
    head = "| | " + " | ".join(TABLE_COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = [head, sep, f"| {name} | " + " | ".join(_row_values(results, acc)) + " |"]
    if paper_row is not None:
        lines.append("| paper | " + " | ".join(_row_values(paper_row, acc)) + " |")
    note = f"\nN-acc/T-acc: {_ACC_NOTES[acc]}. Pr@t counts IoU ≥ t over target samples."
    if nt_rule is not None:
        note += f" No-target rule of '{name}': {nt_rule}."
    if paper_row is not None and paper_row.get("nt_rule"):
        note += f" Paper row no-target rule: {paper_row['nt_rule']}."
    if "n" in results:
        note += f" n = {results['n']} samples."
    return "\n".join(lines) + "\n" + note


def format_breakdown(breakdown: Mapping[str, Mapping[str, Any]], key: str = "group",
                     acc: str = "rela") -> str:
    """A Markdown table with one row per group of `GRESMeter.breakdown(key)`: n, the paper columns
    and the TP/FN/FP/TN counts. Defaults to ReLA's accuracies since per-group MABP-code T-acc (a
    precision of no-target predictions) is hard to read inside a group."""
    cols = ("n",) + TABLE_COLUMNS + ("TP", "FN", "FP", "TN")
    lines = [f"| {key} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for group, res in breakdown.items():
        vals = [_fmt(res.get("n"))] + _row_values(res, acc) + [_fmt(res.get(c)) for c in ("TP", "FN", "FP", "TN")]
        lines.append(f"| {group} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + f"\n\nN-acc/T-acc: {_ACC_NOTES[acc]}."


__all__ = [
    "GRESMeter", "decide_no_target", "apply_min_pixels", "format_table", "format_breakdown",
    "PAPER_RESULTS", "get_paper_row", "TABLE_COLUMNS", "PR_THRESHOLDS", "OUTCOME_NAMES",
]
