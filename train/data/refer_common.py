"""Shared core of the real referring-segmentation loaders (gRefCOCO, RefCOCO, RefCOCO+, G-Ref).

`ReferSource` loads a refs file (json or pickle) and a COCO `instances.json` once, normalises the refs
and answers per-split questions (`scan_split`); `ReferDataset` is the torch Dataset view of one split.
Both gRefCOCO and the classic refer-API datasets share this: only the file layout and whether
no-target refs are allowed differ.

Sample schema (identical to SynthGRES):
    {"image": (H, W, 3) uint8 RGB, "mask": (H, W) bool, "sentence": str, "no_target": bool,
     "target_ids": list[int], "tags": {"target": ..., "type": None, "nt_kind": None},
     "image_id": int, "ref_id": int, "sent_id": int, "split": str}
    (a SynthGRES export fills "type" and "nt_kind" from its refs' "synthgres_tags").

Data decisions (gRefCOCO / refer API formats; ReLA and gRefCOCO issue threads), all counted in the split report, never silent:
- refs without sentences are skipped (gRefCOCO issue #3);
- crowd instances (iscrowd=1) are left out of the mask; a target ref whose instances are all crowd
  keeps an empty mask and `no_target=False` (it still has a target), listed as "crowd-only";
- polygons with < 3 points (< 6 numbers) are dropped, as ReLA does;
- the image is found through `image_id` → instances.json `file_name`, never through the ref's own
  `file_name` (which carries an extra `_x` suffix in gRefCOCO);
- `ann_id` may be a bare int; it is normalised to a list; no-target = `ann_id == [-1]` or
  `no_target: true`.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from train.data.transforms import RESIZE_MODES, letterbox_geometry, resize_sample, squash_geometry

log = logging.getLogger(__name__)

TEXT_FIELDS = ("sent", "raw")
MODES = ("eval", "train")


class DatasetError(Exception):
    """A dataset file is missing, malformed or inconsistent. The message names the file."""


# ---------------------------------------------------------------------- file helpers
def load_refs_file(path: str) -> List[Dict[str, Any]]:
    """Load a refs file: JSON (`grefs(unc).json`) or pickle (`refs(unc).p`, `grefs(unc).p`)."""
    if not os.path.isfile(path):
        raise DatasetError(f"refs file not found: {path}")
    try:
        if path.endswith(".json"):
            with open(path, "r", encoding="utf-8") as f:
                refs = json.load(f)
        else:
            with open(path, "rb") as f:
                try:
                    refs = pickle.load(f)
                except UnicodeDecodeError:
                    # The refer-API pickles were written by Python 2; byte strings need latin1.
                    f.seek(0)
                    refs = pickle.load(f, encoding="latin1")
    except (ValueError, pickle.UnpicklingError, EOFError) as e:
        raise DatasetError(f"cannot parse refs file {path}: {e}") from e
    if not isinstance(refs, list):
        raise DatasetError(f"refs file {path} must hold a list of refs, got {type(refs).__name__}")
    return refs


def load_instances(path: str) -> Dict[str, Any]:
    """Load a COCO instances.json."""
    if not os.path.isfile(path):
        raise DatasetError(f"instances file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            coco = json.load(f)
    except ValueError as e:
        raise DatasetError(f"cannot parse instances file {path}: {e}") from e
    if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
        raise DatasetError(f"instances file {path} is not COCO-style (needs 'images' and 'annotations')")
    return coco


@dataclass
class Ref:
    """One normalised ref."""

    ref_id: int
    image_id: int
    split: str
    ann_ids: List[int]  # referred annotation ids, -1 removed; empty for no-target
    no_target: bool
    sentences: List[Dict[str, Any]]
    file_name: Optional[str] = None  # the ref's own file_name (may carry a `_x` suffix); unused for paths
    nt_inconsistent: bool = False  # `no_target: true` but real ann ids listed (treated as no-target)
    extra_tags: Dict[str, Any] = field(default_factory=dict)  # a SynthGRES export's "synthgres_tags"


@dataclass
class SplitScan:
    """What `ReferSource.scan_split` learns about one split without decoding masks or images."""

    split: str
    refs: List[Ref]  # usable refs (with sentences), sorted by ref_id
    report: Dict[str, Any] = field(default_factory=dict)
    target_tags: Dict[int, str] = field(default_factory=dict)  # ref_id → target tag


def _seg_form(seg: Any) -> str:
    """Classify a COCO segmentation: 'polygons', 'rle-list', 'rle-str' or 'unknown'."""
    if isinstance(seg, list):
        if all(isinstance(p, (list, tuple)) and all(isinstance(v, (int, float)) for v in p) for p in seg):
            return "polygons"
        return "unknown"
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        c = seg["counts"]
        if isinstance(c, list):
            return "rle-list"
        if isinstance(c, (str, bytes)):
            return "rle-str"
    return "unknown"


class ReferSource:
    """A loaded refs file + instances.json, shared by the splits of one dataset.

    Args:
        refs_path: refs file (json or pickle).
        instances_path: COCO instances.json.
        image_root: folder holding the images named by instances.json `file_name`.
        name: dataset name for messages.
        layout_hint: text describing the expected layout, appended to error messages.
        allow_no_target: False for RefCOCO/+/g (every ref must have a target).
    """

    def __init__(self, refs_path: str, instances_path: str, image_root: str, name: str,
                 layout_hint: str = "", allow_no_target: bool = True) -> None:
        self.refs_path = refs_path
        self.instances_path = instances_path
        self.image_root = image_root
        self.name = name
        self.layout_hint = layout_hint
        self.allow_no_target = allow_no_target
        if not os.path.isfile(instances_path):
            raise DatasetError(f"{name} instances file not found: {instances_path}; expected layout: {layout_hint}")
        raw_refs = load_refs_file(refs_path)
        coco = load_instances(instances_path)
        try:
            self.images: Dict[int, Dict[str, Any]] = {int(im["id"]): im for im in coco["images"]}
            self.anns: Dict[int, Dict[str, Any]] = {int(a["id"]): a for a in coco["annotations"]}
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"malformed images/annotations entry in {instances_path}: {e!r}") from e
        self.categories: Dict[int, str] = {int(c["id"]): str(c.get("name", c["id"]))
                                           for c in coco.get("categories", [])}
        self.refs: List[Ref] = [self._normalise(r, k) for k, r in enumerate(raw_refs)]
        self._scans: Dict[str, SplitScan] = {}
        self._rle_cache: Dict[int, Optional[Dict[str, Any]]] = {}

    # ------------------------------------------------------------------ refs
    def _normalise(self, r: Any, k: int) -> Ref:
        if not isinstance(r, dict):
            raise DatasetError(f"ref #{k} in {self.refs_path} is a {type(r).__name__}, expected a dict")
        for key in ("ref_id", "image_id", "split"):
            if key not in r:
                raise DatasetError(f"ref #{k} in {self.refs_path} has no '{key}' field")
        raw_ann = r.get("ann_id", [])
        ann_list = list(raw_ann) if isinstance(raw_ann, (list, tuple)) else [raw_ann]
        try:
            ann_list = [int(a) for a in ann_list]
        except (TypeError, ValueError) as e:
            raise DatasetError(f"ref {r['ref_id']} in {self.refs_path}: bad ann_id {raw_ann!r}") from e
        ann_ids = [a for a in ann_list if a != -1]
        flag = bool(r.get("no_target", False))
        no_target = flag or not ann_ids
        sentences = r.get("sentences") or []
        sent_ids = r.get("sent_ids") or []
        norm_sents = []
        for j, s in enumerate(sentences):
            s = dict(s)
            if "sent_id" not in s:
                s["sent_id"] = sent_ids[j] if j < len(sent_ids) else -1
            norm_sents.append(s)
        # A SynthGRES export carries the generator's expression type / no-target kind; keep them so the
        # export's evaluation has the same breakdowns as the generated split. Real gRefCOCO has none.
        extra = r.get("synthgres_tags")
        extra = {k: v for k, v in extra.items() if k in ("type", "nt_kind")} if isinstance(extra, dict) else {}
        return Ref(ref_id=int(r["ref_id"]), image_id=int(r["image_id"]), split=str(r["split"]),
                   ann_ids=[] if no_target else ann_ids, no_target=no_target, sentences=norm_sents,
                   file_name=r.get("file_name"), nt_inconsistent=flag and bool(ann_ids), extra_tags=extra)

    def split_names(self) -> List[str]:
        """All split names present in the refs file, in first-seen order."""
        return list(dict.fromkeys(r.split for r in self.refs))

    def scan_split(self, split: str) -> SplitScan:
        """Validate one split and count everything the integrity report needs (cached).

        Raises DatasetError for an empty split, images/annotations missing from instances.json,
        segmentations of an unknown form, or (RefCOCO) a ref without target.
        """
        if split in self._scans:
            return self._scans[split]
        in_split = [r for r in self.refs if r.split == split]
        if not in_split:
            avail = Counter(r.split for r in self.refs)
            raise DatasetError(f"split '{split}' has no refs in {self.refs_path}; available splits: "
                               + ", ".join(f"{s} ({n} refs)" for s, n in avail.items()))
        no_sent = sorted(r.ref_id for r in in_split if not r.sentences)
        usable = sorted((r for r in in_split if r.sentences), key=lambda r: r.ref_id)

        crowd_only, bad_image, bad_ann, wrong_image, nt_refs_not_allowed = [], [], [], [], []
        used_anns: Dict[int, Dict[str, Any]] = {}
        tags: Dict[int, str] = {}
        suffix_names = 0
        for r in in_split:
            if r.image_id not in self.images:
                bad_image.append(r.ref_id)
                continue
            img_name = self.images[r.image_id].get("file_name")
            if r.file_name is not None and r.file_name != img_name:
                suffix_names += 1
            if r.no_target:
                if not self.allow_no_target:
                    nt_refs_not_allowed.append(r.ref_id)
                tags[r.ref_id] = "no-target"
                continue
            missing = [a for a in r.ann_ids if a not in self.anns]
            if missing:
                bad_ann.append((r.ref_id, missing))
                continue
            anns = [self.anns[a] for a in r.ann_ids]
            if any(int(a["image_id"]) != r.image_id for a in anns):
                wrong_image.append(r.ref_id)
                continue
            for a in anns:
                used_anns[int(a["id"])] = a
            if all(a.get("iscrowd", 0) for a in anns):
                crowd_only.append(r.ref_id)
            # The tag describes the expression (all referred instances, crowd included).
            if len(anns) == 1:
                tags[r.ref_id] = "single"
            else:
                cats = {a.get("category_id") for a in anns}
                tags[r.ref_id] = "multi-same" if len(cats) == 1 else "multi-mixed"

        def _fail(what: str, items: Sequence[Any]) -> None:
            raise DatasetError(f"{len(items)} ref(s) of split '{split}' in {self.refs_path} {what}: "
                               f"{list(items)[:10]}{' ...' if len(items) > 10 else ''}")

        if bad_image:
            _fail(f"have an image_id missing from {self.instances_path}", bad_image)
        if bad_ann:
            _fail(f"refer to annotation ids missing from {self.instances_path}", bad_ann)
        if wrong_image:
            _fail(f"refer to annotations of another image in {self.instances_path}", wrong_image)
        if nt_refs_not_allowed:
            _fail(f"have no target, which {self.name} does not allow", nt_refs_not_allowed)

        polys_dropped, crowd_skipped = 0, 0
        for a in used_anns.values():
            form = _seg_form(a.get("segmentation"))
            if form == "unknown":
                raise DatasetError(
                    f"annotation {a['id']} (image {a['image_id']}) in {self.instances_path} has a "
                    f"segmentation of unknown form: {str(a.get('segmentation'))[:80]!r}; expected "
                    "polygons (list of [x1, y1, x2, y2, ...]) or RLE ({'size', 'counts'})")
            if a.get("iscrowd", 0):
                crowd_skipped += 1
                continue
            if form == "polygons":
                for p in a["segmentation"]:
                    if len(p) % 2:
                        raise DatasetError(f"annotation {a['id']} in {self.instances_path} has a polygon "
                                           f"with an odd number of coordinates ({len(p)})")
                    if len(p) < 6:
                        polys_dropped += 1

        usable_ids = {r.ref_id for r in usable}
        tag_refs = Counter(tags[r.ref_id] for r in usable)
        tag_expr = Counter()
        for r in usable:
            tag_expr[tags[r.ref_id]] += len(r.sentences)
        report = {
            "split": split,
            "refs_in_file_split": len(in_split),
            "refs": len(usable),
            "expressions": sum(len(r.sentences) for r in usable),
            "images": len({r.image_id for r in usable}),
            "refs_without_sentences": len(no_sent),
            "refs_without_sentences_ids": no_sent,
            "target_tags_refs": dict(tag_refs),
            "target_tags_expressions": dict(tag_expr),
            "no_target_refs": tag_refs.get("no-target", 0),
            "no_target_expressions": tag_expr.get("no-target", 0),
            "multi_target_refs": tag_refs.get("multi-same", 0) + tag_refs.get("multi-mixed", 0),
            "multi_target_expressions": tag_expr.get("multi-same", 0) + tag_expr.get("multi-mixed", 0),
            "crowd_only_refs": [i for i in crowd_only if i in usable_ids],
            "crowd_instances_skipped": crowd_skipped,
            "polygons_dropped": polys_dropped,
            "no_target_flag_inconsistent": sorted(r.ref_id for r in usable if r.nt_inconsistent),
            "ref_file_name_differs": suffix_names,
        }
        scan = SplitScan(split=split, refs=usable, report=report, target_tags=tags)
        self._scans[split] = scan
        if no_sent:
            log.info("%s %s: skipped %d refs without sentences", self.name, split, len(no_sent))
        return scan

    # ------------------------------------------------------------------ images and masks
    def image_info(self, image_id: int) -> Dict[str, Any]:
        """The instances.json `images` entry of `image_id`."""
        return self.images[image_id]

    def image_path(self, image_id: int) -> str:
        """Path of an image, resolved through instances.json (so gRefCOCO's `_x` suffixes are moot)."""
        return os.path.join(self.image_root, self.images[image_id]["file_name"])

    def load_image(self, ref: Ref) -> np.ndarray:
        """Decode the image of `ref` as (H, W, 3) uint8 RGB, checking its size against instances.json."""
        path = self.image_path(ref.image_id)
        if not os.path.isfile(path):
            hint = "" if os.path.isdir(self.image_root) else f" (the image root {self.image_root} does not exist)"
            raise DatasetError(f"image not found: {path} (ref_id {ref.ref_id}, image_id {ref.image_id}){hint}")
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"cannot decode image {path} (ref_id {ref.ref_id}, image_id {ref.image_id})")
        info = self.images[ref.image_id]
        h, w = int(info["height"]), int(info["width"])
        if bgr.shape[:2] != (h, w):
            raise DatasetError(f"image {path} is {bgr.shape[1]}x{bgr.shape[0]} but {self.instances_path} "
                               f"says {w}x{h} (image_id {ref.image_id})")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _ann_rle(self, ann: Dict[str, Any], h: int, w: int) -> Optional[Dict[str, Any]]:
        """The compressed RLE of one annotation (None if all its polygons were dropped)."""
        seg = ann["segmentation"]
        form = _seg_form(seg)
        if form == "polygons":
            polys = [[float(v) for v in p] for p in seg if len(p) >= 6]
            if not polys:
                return None
            return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        if form in ("rle-list", "rle-str"):
            size = [int(v) for v in seg["size"]]
            if size != [h, w]:
                raise DatasetError(f"annotation {ann['id']} in {self.instances_path}: RLE size {size} "
                                   f"differs from its image size {[h, w]}")
            if form == "rle-list":
                return mask_utils.frPyObjects(seg, h, w)  # uncompressed → compressed RLE
            counts = seg["counts"]
            return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        raise DatasetError(f"annotation {ann['id']} in {self.instances_path} has a segmentation of "
                           f"unknown form: {str(seg)[:80]!r}")

    def ref_mask(self, ref: Ref) -> np.ndarray:
        """(H, W) bool union of the ref's non-crowd instances (all False for no-target).

        The union is cached per ref as a compressed RLE: a few hundred bytes instead of a full-size bool
        array, so caching every ref of gRefCOCO train stays cheap; decoding it back is sub-millisecond.
        """
        info = self.images[ref.image_id]
        h, w = int(info["height"]), int(info["width"])
        if ref.ref_id not in self._rle_cache:
            rles = []
            for a in ref.ann_ids:
                ann = self.anns[a]
                if ann.get("iscrowd", 0):
                    continue
                rle = self._ann_rle(ann, h, w)
                if rle is not None:
                    rles.append(rle)
            self._rle_cache[ref.ref_id] = mask_utils.merge(rles) if rles else None
        rle = self._rle_cache[ref.ref_id]
        if rle is None:
            return np.zeros((h, w), dtype=bool)
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=bool)


class ReferDataset(Dataset):
    """Torch Dataset over one split of a `ReferSource`.

    Modes:
        "eval": one sample per (ref, sentence); refs ordered by ref_id, sentences in file order.
        "train": one sample per ref; the sentence is drawn uniformly with a generator seeded by
            (seed, epoch, index), so a run is reproducible and every epoch sees other sentences.
            Call `set_epoch(e)` at the start of each epoch (as with DistributedSampler).

    Args:
        source: the loaded files.
        split: split name.
        mode: "eval" or "train".
        seed: base seed of the train-mode sentence draw.
        text_field: "sent" (processed lower-case text; what MABP tokenises) or "raw" (original text;
            what ReLA tokenises). A sentence lacking the field falls back to the other (counted in
            `report["sentences_missing_text_field"]`).
        size: if given, every sample is resized to size×size with `resize_mode`; None keeps the original
            resolution.
        resize_mode: "squash" (the paper) or "letterbox" (use `resize_meta(i)` to map predictions back).
    """

    def __init__(self, source: ReferSource, split: str, mode: str = "eval", seed: int = 0,
                 text_field: str = "sent", size: Optional[int] = None, resize_mode: str = "squash") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if text_field not in TEXT_FIELDS:
            raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.source = source
        self.split = split
        self.mode = mode
        self.seed = int(seed)
        self.epoch = 0
        self.text_field = text_field
        self.size = size
        self.resize_mode = resize_mode
        scan = source.scan_split(split)
        self.refs: List[Ref] = scan.refs
        self._tags = scan.target_tags
        # Eval index: flat (ref position, sentence position) pairs.
        self._pairs: List[Tuple[int, int]] = [(i, j) for i, r in enumerate(self.refs)
                                              for j in range(len(r.sentences))]
        other = "raw" if text_field == "sent" else "sent"
        missing = sum(1 for r in self.refs for s in r.sentences if text_field not in s)
        self.report: Dict[str, Any] = dict(scan.report, refs_file=source.refs_path,
                                           instances_file=source.instances_path,
                                           image_root=source.image_root,
                                           sentences_missing_text_field=missing)
        for r in self.refs:
            for s in r.sentences:
                if text_field not in s and other not in s:
                    raise DatasetError(f"ref {r.ref_id} sentence {s.get('sent_id')} in {source.refs_path} "
                                       "has neither 'sent' nor 'raw'")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the train-mode sentence draw."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.refs) if self.mode == "train" else len(self._pairs)

    def locate(self, index: int) -> Tuple[Ref, int]:
        """(ref, sentence position) of sample `index`, without decoding anything."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        if self.mode == "eval":
            i, j = self._pairs[index]
            return self.refs[i], j
        ref = self.refs[index]
        # A fresh generator per (seed, epoch, index): independent of worker count and access order.
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return ref, int(rng.integers(len(ref.sentences)))

    def _text(self, sent: Dict[str, Any]) -> str:
        if self.text_field in sent:
            return str(sent[self.text_field])
        return str(sent["raw" if self.text_field == "sent" else "sent"])

    def image_size(self, index: int) -> Tuple[int, int]:
        """(H, W) of sample `index`'s original image, from instances.json (no decoding)."""
        ref, _ = self.locate(index)
        info = self.source.image_info(ref.image_id)
        return int(info["height"]), int(info["width"])

    def resize_meta(self, index: int) -> Optional[Dict[str, Any]]:
        """The resize meta of sample `index` (None when `size` is None), for `unletterbox_mask`."""
        if self.size is None:
            return None
        h, w = self.image_size(index)
        geom = letterbox_geometry if self.resize_mode == "letterbox" else squash_geometry
        return geom(h, w, self.size)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        ref, j = self.locate(index)
        sent = ref.sentences[j]
        image = self.source.load_image(ref)
        mask = self.source.ref_mask(ref)
        if self.size is not None:
            image, mask, _ = resize_sample(image, mask, self.size, self.resize_mode)
        return {
            "image": image,
            "mask": mask,
            "sentence": self._text(sent),
            "no_target": ref.no_target,
            "target_ids": list(ref.ann_ids),
            "tags": {"target": self._tags[ref.ref_id], "type": None, "nt_kind": None, **ref.extra_tags},
            "image_id": ref.image_id,
            "ref_id": ref.ref_id,
            "sent_id": int(sent["sent_id"]),
            "split": self.split,
        }


_SOURCE_CACHE: Dict[Tuple[Any, ...], ReferSource] = {}


def _stamp(path: str) -> Tuple[str, int, int]:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def get_source(refs_path: str, instances_path: str, image_root: str, name: str, layout_hint: str = "",
               allow_no_target: bool = True) -> ReferSource:
    """A `ReferSource`, shared by every dataset of this process that reads the same (unchanged) files.

    Why: the train and val datasets of one run read the same multi-hundred-MB instances.json; parsing it
    once halves start-up time and memory. The key includes mtime and size, so edited files are reloaded.
    """
    if not os.path.isfile(refs_path):
        raise DatasetError(f"{name} refs file not found: {refs_path}; expected layout: {layout_hint}")
    if not os.path.isfile(instances_path):
        raise DatasetError(f"{name} instances file not found: {instances_path}; expected layout: {layout_hint}")
    key = (_stamp(refs_path), _stamp(instances_path), os.path.abspath(image_root), name, allow_no_target)
    if key not in _SOURCE_CACHE:
        if len(_SOURCE_CACHE) >= 8:  # tests create many tiny sources; keep the cache bounded
            _SOURCE_CACHE.pop(next(iter(_SOURCE_CACHE)))
        _SOURCE_CACHE[key] = ReferSource(refs_path, instances_path, image_root, name, layout_hint,
                                         allow_no_target)
    return _SOURCE_CACHE[key]


def first_existing(candidates: Sequence[Tuple[str, ...]]) -> Optional[Tuple[str, ...]]:
    """The first candidate tuple whose first path (the refs file) exists."""
    for c in candidates:
        if os.path.isfile(c[0]):
            return c
    return None


__all__ = ["DatasetError", "Ref", "ReferSource", "ReferDataset", "SplitScan", "load_refs_file",
           "load_instances", "first_existing", "get_source"]
