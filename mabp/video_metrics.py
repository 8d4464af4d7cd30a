"""Referring video segmentation metrics: J (region IoU), F (boundary F-measure) and J&F, as MeViS reports them.

Source: the DAVIS 2017 evaluation code (``davis2017/metrics.py``: ``db_eval_iou``, ``f_measure``,
``_seg2bmap``), which the MeViS evaluation script (``eval_mevis.py``) imports unchanged, and its
aggregation: per expression, J and F are the means over the expression's annotated frames; the
dataset's J and F are the means over expressions; J&F = (J + F) / 2. Reported ×100.

Empty cases, decided exactly as that code decides them (and tested here):

* J: intersection / union; a frame where both masks are empty (union 0) scores J = 1.
* F: boundaries are the 1-px maps of ``_seg2bmap``; each is dilated with a disk of radius
  ``ceil(0.008 * image diagonal)`` pixels (``bound_th = 0.008`` < 1 means a fraction of the diagonal);
  precision = predicted boundary pixels within the tolerance of the GT boundary / predicted boundary
  pixels, recall likewise. With n_fg / n_gt the boundary pixel counts:
  n_fg = 0 and n_gt > 0 → P = 1, R = 0 (F = 0); n_fg > 0 and n_gt = 0 → P = 0, R = 1 (F = 0);
  both 0 → P = R = 1 (F = 1); P + R = 0 → F = 0.

So in the GRES setting (an expression may refer to nothing in a frame), answering "nothing" on an
empty frame scores J = F = 1, and any predicted pixel there scores J = F = 0.

The disk is scikit-image's ``disk(r)`` (x² + y² ≤ r² on the integer grid), built here with numpy; the
dilation is OpenCV's, as in the DAVIS code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np

BOUND_TH = 0.008  # DAVIS / MeViS default: the tolerance is 0.8 % of the image diagonal


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"J/F expect 2-D masks (H, W), got {pred.shape} and {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size; resize the "
                         "prediction to the annotation's size (nearest) first")
    return pred.astype(bool), gt.astype(bool)


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """J = |pred ∩ gt| / |pred ∪ gt| of two (H, W) masks (any dtype, nonzero = foreground).

    Returns 1.0 when both are empty (DAVIS ``db_eval_iou``). Raises ValueError on shape mismatch.
    """
    pred, gt = _check_pair(pred, gt)
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred & gt)) / union


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-px boundary map of a (H, W) mask, bool (DAVIS ``_seg2bmap`` at the mask's own size).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour; on the
    last row only the east neighbour counts, on the last column only the south one, and the corner
    pixel never does — so the boundary lies half a pixel towards the origin, as in the original.
    """
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk footprint: x² + y² ≤ r² (scikit-image ``morphology.disk``)."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"disk radius must be >= 0, got {radius}")
    c = np.arange(-r, r + 1)
    return ((c[None, :] ** 2 + c[:, None] ** 2) <= r * r).astype(np.uint8)


def boundary_tolerance(shape: Tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance radius in pixels: bound_th itself if ≥ 1, else ceil(bound_th · √(H² + W²))."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_prf(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> Tuple[float, float, float]:
    """(F, precision, recall) of the boundaries of two (H, W) masks (DAVIS ``f_measure``).

    Empty cases as the module docstring lists them. Raises ValueError on shape mismatch.
    """
    pred, gt = _check_pair(pred, gt)
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        foot = disk(boundary_tolerance(pred.shape, bound_th))
        fg_dil = cv2.dilate(fg_b.view(np.uint8), foot).astype(bool)
        gt_dil = cv2.dilate(gt_b.view(np.uint8), foot).astype(bool)
        precision = int(np.count_nonzero(fg_b & gt_dil)) / n_fg
        recall = int(np.count_nonzero(gt_b & fg_dil)) / n_gt
    if precision + recall == 0:
        return 0.0, precision, recall
    return 2 * precision * recall / (precision + recall), precision, recall


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of two (H, W) masks in [0, 1] (see `boundary_prf`)."""
    return boundary_prf(pred, gt, bound_th)[0]


@dataclass
class _Expr:
    j: List[float] = field(default_factory=list)
    f: List[float] = field(default_factory=list)
    tags: Dict[str, object] = field(default_factory=dict)


class VideoJFMeter:
    """Accumulates per-frame J and F per expression; `compute()` gives J, F, J&F (×100) as MeViS does.

    Usage::

        meter = VideoJFMeter()
        meter.update("vid/exp0", pred_mask, gt_mask)      # once per annotated frame
        meter.compute()   # {"J": .., "F": .., "J&F": .., "n_expressions": .., "n_frames": ..}
    """

    def __init__(self, bound_th: float = BOUND_TH):
        self.bound_th = bound_th
        self._exprs: Dict[str, _Expr] = {}

    def __len__(self) -> int:
        return len(self._exprs)

    def update(self, key: str, pred: np.ndarray, gt: np.ndarray, tags: Optional[Dict[str, object]] = None) -> Tuple[float, float]:
        """Score one frame of expression `key`; returns its (J, F) in [0, 1]."""
        j = region_j(pred, gt)
        f = boundary_f(pred, gt, self.bound_th)
        e = self._exprs.setdefault(key, _Expr())
        e.j.append(j)
        e.f.append(f)
        if tags:
            e.tags.update(tags)
        return j, f

    def per_expression(self) -> List[Dict[str, object]]:
        """One dict per expression: key, J, F, J&F (×100), frames, tags."""
        out = []
        for key, e in self._exprs.items():
            j, f = 100.0 * float(np.mean(e.j)), 100.0 * float(np.mean(e.f))
            out.append({"key": key, "J": j, "F": f, "J&F": (j + f) / 2, "frames": len(e.j), "tags": dict(e.tags)})
        return out

    @staticmethod
    def summarize(rows: Iterable[Dict[str, object]]) -> Dict[str, Optional[float]]:
        rows = list(rows)
        if not rows:
            return {"J": None, "F": None, "J&F": None, "n_expressions": 0, "n_frames": 0}
        j = float(np.mean([r["J"] for r in rows]))
        f = float(np.mean([r["F"] for r in rows]))
        return {"J": j, "F": f, "J&F": (j + f) / 2, "n_expressions": len(rows),
                "n_frames": int(sum(int(r["frames"]) for r in rows))}

    def compute(self) -> Dict[str, Optional[float]]:
        """{"J", "F", "J&F"} ×100 (None when empty), "n_expressions", "n_frames"."""
        return self.summarize(self.per_expression())

    def breakdown(self, tag: str) -> Dict[str, Dict[str, Optional[float]]]:
        """The same summary per value of a tag (e.g. "target": single / multi / no-target)."""
        groups: Dict[str, List[Dict[str, object]]] = {}
        for r in self.per_expression():
            groups.setdefault(str(r["tags"].get(tag)), []).append(r)
        return {k: self.summarize(v) for k, v in sorted(groups.items())}


# Table VII of the paper (MeViS; J&F, J, F).
PAPER_MEVIS = {
    "valid": {"J&F": 43.4, "J": 39.9, "F": 46.9},
    "valid_u": {"J&F": 50.1, "J": 46.2, "F": 54.7},
}

__all__ = ["BOUND_TH", "region_j", "seg2bmap", "disk", "boundary_tolerance", "boundary_prf", "boundary_f",
           "VideoJFMeter", "PAPER_MEVIS"]
