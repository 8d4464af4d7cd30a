"""MeViS loader (Ding et al., ICCV 2023; the paper's §IV-D / Table VII): referring video segmentation
with motion expressions, read frame by frame as MABP treats it (each frame an independent image).

Layout (the official release; ``root`` is the folder holding the split folders)::

    root/<split>/JPEGImages/<video>/<frame>.jpg
    root/<split>/meta_expressions.json   {"videos": {video: {"frames": [frame names, no extension],
                                                            "expressions": {exp_id: {"exp": str,
                                                                "obj_id": [int], "anno_id": [int]}}}}}
    root/<split>/mask_dict.json          {str(anno_id): [COCO RLE {"size", "counts"} or null per frame]}

Splits: ``train`` and ``valid_u`` carry masks; ``valid`` has no mask_dict.json (its masks are only on the
evaluation server, so nothing can be scored here: the loader says so). The target of an expression in
a frame is the union of its anno_ids' masks in that frame — possibly empty (the GRES setting:
``no_target`` is True for that frame's sample).

Modes (the shared sample dict of ``train.data``):

* ``eval`` — one sample per (expression, frame), every frame, in file order. The J&F evaluator uses the
  clip-level view (`expressions`, `frame`, `target_mask`).
* ``train`` — §IV-D: "only one frame is sampled from five adjacent frames". One item per (expression,
  window of ``frame_window`` adjacent frames); the frame inside the window is drawn per epoch from
  (seed, epoch, item) — `set_epoch` is called by the training engine, so every epoch sees other frames
  and a resumed run sees the same ones.

Errors (missing files, malformed JSON, an expression naming an unknown anno_id, a mask list whose
length differs from the frame list) are `DatasetError`s naming the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from train.data.refer_common import DatasetError
from train.data.transforms import resize_sample

MEVIS_SPLITS = ("train", "valid_u", "valid")
MEVIS_LAYOUT = ("root/<split>/JPEGImages/<video>/<frame>.jpg + root/<split>/meta_expressions.json "
                "(+ root/<split>/mask_dict.json for train and valid_u)")
FRAME_WINDOW = 5  # §IV-D: one frame out of every five adjacent ones


@dataclass(frozen=True)
class MeViSExpression:
    """One expression of one video."""

    video: str
    exp_id: str
    sentence: str
    obj_ids: Tuple[int, ...]
    anno_ids: Tuple[int, ...]
    frames: Tuple[str, ...]
    tags: Dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.video}/{self.exp_id}"


def _load_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise DatasetError(f"MeViS {what} not found: {path}; expected layout: {MEVIS_LAYOUT}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"MeViS {what} {path} is not valid JSON: {e}") from None


def resolve_split_dir(root: str, split: str) -> str:
    """root/<split> (or root itself when it already is the split folder)."""
    if not os.path.isdir(root):
        raise DatasetError(f"MeViS root not found: {root}; expected layout: {MEVIS_LAYOUT}")
    cand = os.path.join(root, split)
    if os.path.isfile(os.path.join(cand, "meta_expressions.json")):
        return cand
    if os.path.basename(os.path.normpath(root)) == split and os.path.isfile(os.path.join(root, "meta_expressions.json")):
        return root
    raise DatasetError(f"MeViS split {split!r} not found: {os.path.join(cand, 'meta_expressions.json')} is missing; "
                       f"expected layout: {MEVIS_LAYOUT}")


class MeViS(Dataset):
    """One MeViS split as a torch Dataset of the shared sample dicts (module docstring).

    Args:
        root: folder holding the split folders (or the split folder itself).
        split: "train", "valid_u" or "valid" (any folder name is accepted; these are MeViS's).
        mode: "eval" (every frame) or "train" (one frame per window of `frame_window`).
        size: squash image (bilinear) and mask (nearest) to size×size (None = original size).
        frame_window: adjacent frames per training item (5 = §IV-D).
        seed: the training frame draw's seed.
    Raises: DatasetError for a missing or malformed file; ValueError for a bad mode / window.
    """

    def __init__(self, root: str, split: str, mode: str = "eval", size: Optional[int] = None,
                 frame_window: int = FRAME_WINDOW, seed: int = 0):
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
        if frame_window < 1:
            raise ValueError(f"frame_window must be >= 1, got {frame_window}")
        self.split, self.mode, self.size = split, mode, size
        self.frame_window, self.seed, self.epoch = int(frame_window), int(seed), 0
        self.dir = resolve_split_dir(root, split)
        self.meta_path = os.path.join(self.dir, "meta_expressions.json")
        self.mask_path = os.path.join(self.dir, "mask_dict.json")
        meta = _load_json(self.meta_path, "meta_expressions.json")
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise DatasetError(f"{self.meta_path}: expected {{\"videos\": {{video: ...}}}}")
        self.has_masks = os.path.isfile(self.mask_path)
        if mode == "train" and not self.has_masks:
            raise DatasetError(f"MeViS split {split!r} has no mask_dict.json ({self.mask_path}): it cannot be "
                               "trained on (valid's masks are only on the evaluation server); use train")
        self._masks: Dict[str, List[Optional[dict]]] = (
            _load_json(self.mask_path, "mask_dict.json") if self.has_masks else {})
        self.expressions: List[MeViSExpression] = []
        for vid in sorted(videos):
            v = videos[vid]
            try:
                frames = tuple(str(f) for f in v["frames"])
                exprs = v["expressions"]
            except (KeyError, TypeError):
                raise DatasetError(f"{self.meta_path}: video {vid!r} lacks 'frames' or 'expressions'") from None
            for eid in sorted(exprs, key=lambda k: (len(str(k)), str(k))):
                e = exprs[eid]
                if not isinstance(e, dict) or not isinstance(e.get("exp"), str):
                    raise DatasetError(f"{self.meta_path}: video {vid!r} expression {eid!r} has no 'exp' text")
                anno = tuple(int(a) for a in e.get("anno_id", []) or [])
                if self.has_masks:
                    for a in anno:
                        masks = self._masks.get(str(a))
                        if masks is None:
                            raise DatasetError(f"{self.mask_path}: anno_id {a} of {vid}/{eid} is missing")
                        if len(masks) != len(frames):
                            raise DatasetError(f"{self.mask_path}: anno_id {a} has {len(masks)} masks but video "
                                               f"{vid!r} has {len(frames)} frames")
                self.expressions.append(MeViSExpression(
                    video=vid, exp_id=str(eid), sentence=" ".join(e["exp"].split()),
                    obj_ids=tuple(int(o) for o in e.get("obj_id", []) or []), anno_ids=anno, frames=frames,
                    tags=dict(e.get("tags") or {})))
        # The flat index: (expression, frame) for eval, (expression, window start) for train.
        self._items: List[Tuple[int, int]] = []
        for i, e in enumerate(self.expressions):
            step = 1 if mode == "eval" else self.frame_window
            self._items.extend((i, t) for t in range(0, len(e.frames), step))

    # ----------------------------------------------------------------------------- clip-level view
    def frame_path(self, video: str, frame: str) -> str:
        return os.path.join(self.dir, "JPEGImages", video, f"{frame}.jpg")

    def frame(self, video: str, frame: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of one frame. DatasetError if missing or unreadable."""
        path = self.frame_path(video, frame)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"MeViS frame missing or unreadable: {path}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def target_mask(self, expr: MeViSExpression, t: int, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """(H, W) bool union of the expression's anno_id masks in frame t (empty where all are null).

        shape: (H, W) used when every mask of the frame is null (default: read from an RLE or the frame).
        Raises DatasetError on a split without masks ("valid": server-only annotations).
        """
        if not self.has_masks:
            raise DatasetError(f"MeViS split {self.split!r} has no mask_dict.json ({self.mask_path}): its masks are "
                               "only on the evaluation server, so it cannot be scored or trained on here; use valid_u")
        out = None
        for a in expr.anno_ids:
            rle = self._masks[str(a)][t]
            if rle is None:
                continue
            r = dict(rle)
            if isinstance(r.get("counts"), str):
                r["counts"] = r["counts"].encode("ascii")
            try:
                m = mask_utils.decode(r).astype(bool)
            except Exception as e:  # noqa: BLE001 - pycocotools raises bare exceptions on bad RLE
                raise DatasetError(f"{self.mask_path}: anno_id {a} frame {t}: bad RLE ({e})") from None
            out = m if out is None else (out | m)
        if out is None:
            if shape is None:
                shape = self.frame(expr.video, expr.frames[t]).shape[:2]
            out = np.zeros(shape, dtype=bool)
        return out

    @property
    def videos(self) -> List[str]:
        return sorted({e.video for e in self.expressions})

    # ----------------------------------------------------------------------------- torch Dataset view
    def __len__(self) -> int:
        return len(self._items)

    def set_epoch(self, epoch: int) -> None:
        """The training frame draw of an epoch (called by the engine before each epoch)."""
        self.epoch = int(epoch)

    def frame_index(self, k: int) -> Tuple[int, int]:
        """(expression index, frame index) of item k (train: the frame drawn in its window this epoch)."""
        i, t0 = self._items[k]
        if self.mode == "eval":
            return i, t0
        n = min(self.frame_window, len(self.expressions[i].frames) - t0)
        off = int(np.random.default_rng([self.seed, self.epoch, k]).integers(n))
        return i, t0 + off

    def __getitem__(self, k: int) -> Dict[str, Any]:
        if not 0 <= k < len(self._items):
            raise IndexError(f"index {k} out of range for {len(self._items)} items")
        i, t = self.frame_index(k)
        e = self.expressions[i]
        image = self.frame(e.video, e.frames[t])
        if self.has_masks:
            mask = self.target_mask(e, t, image.shape[:2])
            if mask.shape != image.shape[:2]:
                raise DatasetError(f"{self.mask_path}: {e.key} frame {e.frames[t]}: mask {mask.shape} does not "
                                   f"match the frame {image.shape[:2]}")
        else:
            mask = np.zeros(image.shape[:2], dtype=bool)  # unknown: valid has no annotations
        if self.size is not None:
            image, mask, _ = resize_sample(image, mask, int(self.size))
        n_obj = len(e.anno_ids)
        tags = {"target": e.tags.get("target") or ("no-target" if not mask.any() else
                                                   "single" if n_obj == 1 else "multi"),
                "type": e.tags.get("type"), "nt_kind": e.tags.get("nt_kind")}
        return {"image": image, "mask": mask, "sentence": e.sentence, "no_target": not bool(mask.any()),
                "target_ids": list(e.obj_ids), "tags": tags, "image_id": f"{e.video}/{e.frames[t]}",
                "ref_id": e.key, "sent_id": k, "split": self.split, "video": e.video, "frame": e.frames[t]}

    def __repr__(self) -> str:
        return (f"MeViS(split={self.split!r}, mode={self.mode!r}, videos={len(self.videos)}, "
                f"expressions={len(self.expressions)}, items={len(self)}, masks={self.has_masks})")


__all__ = ["MeViS", "MeViSExpression", "MEVIS_SPLITS", "FRAME_WINDOW", "resolve_split_dir"]
