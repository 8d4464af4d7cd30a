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
- polygons with < 3 points (< 6 numbers) are dropped, as ReLA does; a target ref left with nothing to
  rasterise (`segmentation: []`, only degenerate polygons, an RLE without foreground) is listed as an
  "empty-mask" ref, as crowd-only refs are, and empty segmentations are counted;
- every field read is type-checked (train.data.validate); polygons with non-finite or far-out-of-image
  coordinates and RLEs whose counts do not add up to height x width are errors naming the file and the
  annotation id -- found when the split is opened, so `train.data.check` and the loaders agree;
- Python-2 pickles: byte strings are decoded as UTF-8, falling back to Latin-1 with a warning;
- images are read in their stored pixel frame (COCO annotations are): the EXIF orientation is ignored
  when the stored size matches instances.json (and applied only when the rotated size is the one it
  states); a missing, unreadable or mis-sized image is listed and its refs are left out of the split
  (a warning), never aborting it -- unless no image of the split is readable at all;
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
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from train.data.transforms import RESIZE_MODES, letterbox_geometry, resize_sample, squash_geometry
from train.data.validate import (FieldError, as_flag, as_int, as_str, check_segmentation,
                                 decode_py2_strings)

log = logging.getLogger(__name__)

TEXT_FIELDS = ("sent", "raw")
MODES = ("eval", "train")


class DatasetError(Exception):
    """A dataset file is missing, malformed or inconsistent. The message names the file.

    `problems` lists every problem found (the message shows the first few), for `train.data.check`.
    """

    def __init__(self, message: str, problems: Optional[List[str]] = None) -> None:
        super().__init__(message)
        self.problems: List[str] = list(problems) if problems else [message]


MAX_IN_MESSAGE = 5


# ---------------------------------------------------------------------- file helpers
def load_refs_file(path: str, notes: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Load a refs file: JSON (`grefs(unc).json`) or pickle (`refs(unc).p`, `grefs(unc).p`).

    The refer-API pickles were written by Python 2: their byte strings are decoded as UTF-8 and, only
    where that fails, as Latin-1 -- with a warning (also appended to `notes`), since Latin-1 accepts any
    byte and would turn UTF-8 "café" into "cafÃ©" unnoticed.
    """
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
                    f.seek(0)
                    refs = pickle.load(f, encoding="bytes")
                    stats: Dict[str, Any] = {}
                    refs = decode_py2_strings(refs, stats)
                    if stats.get("latin1"):
                        msg = (f"{path}: {stats['latin1']:,} Python-2 byte string(s) are not UTF-8 and were "
                               f"decoded as Latin-1 (e.g. {stats['examples']}); check the sentences")
                        warnings.warn(msg)
                        if notes is not None:
                            notes.append(msg)
    except (ValueError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            TypeError) as e:
        raise DatasetError(f"cannot parse refs file {path}: {' '.join(str(e).split())}") from e
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
    image_ids: List[int] = field(default_factory=list)  # images of the refs with sentences
    bad_images: Dict[int, str] = field(default_factory=dict)  # image_id → problem (refs left out)


def _orientation(im: Any) -> int:
    """The EXIF orientation tag of a PIL image (1 when absent or unreadable)."""
    try:
        return int(im.getexif().get(274, 1))
    except Exception:
        return 1


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
        self.notes: List[str] = []  # things the integrity report should say (e.g. Latin-1 fallbacks)
        raw_refs = load_refs_file(refs_path, self.notes)
        coco = load_instances(instances_path)
        self.images: Dict[int, Dict[str, Any]] = self._read_entries(coco["images"], "images", self._image_entry)
        self.anns: Dict[int, Dict[str, Any]] = self._read_entries(coco["annotations"], "annotations",
                                                                  self._ann_entry)
        cats = coco.get("categories", [])
        self.categories: Dict[int, str] = self._read_entries(cats if cats is not None else [], "categories",
                                                             self._category_entry)
        self.refs: List[Ref] = [self._normalise(r, k) for k, r in enumerate(raw_refs)]
        self._scans: Dict[str, SplitScan] = {}
        self._rle_cache: Dict[int, Optional[Dict[str, Any]]] = {}
        self._image_checks: Dict[int, Tuple[Optional[Tuple[int, int]], Optional[str]]] = {}

    # ------------------------------------------------------------------ instances.json entries
    def _read_entries(self, items: Any, key: str, read) -> Dict[int, Any]:
        """{id: entry} of instances.json's `key` list, every entry checked by `read(entry, k)`."""
        if not isinstance(items, list):
            raise DatasetError(f"{self.instances_path}: '{key}' must be a list, got {type(items).__name__}")
        out: Dict[int, Any] = {}
        problems: List[str] = []
        for k, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise FieldError(f"is a {type(item).__name__}, expected an object")
                if "id" not in item:
                    raise FieldError("has no 'id'")
                i = as_int(item["id"], "'id'")
                if i in out:
                    raise FieldError(f"repeats id {i}")
                out[i] = read(item)
            except FieldError as e:
                ident = f" (id {item.get('id')!r:.20})" if isinstance(item, dict) and "id" in item else ""
                problems.append(f"{self.instances_path}: {key} entry #{k}{ident}: {e}")
        if problems:
            raise DatasetError(self._summary(problems, f"malformed {key} entries"), problems)
        return out

    @staticmethod
    def _image_entry(im: Dict[str, Any]) -> Dict[str, Any]:
        h, w = as_int(im.get("height"), "'height'"), as_int(im.get("width"), "'width'")
        if h <= 0 or w <= 0:
            raise FieldError(f"has a non-positive size {w}x{h}")
        name = as_str(im.get("file_name"), "'file_name'")
        return dict(im, height=h, width=w, file_name=name)

    @staticmethod
    def _ann_entry(a: Dict[str, Any]) -> Dict[str, Any]:
        out = dict(a, id=as_int(a["id"], "'id'"), image_id=as_int(a.get("image_id"), "'image_id'"),
                   iscrowd=int(as_flag(a.get("iscrowd", 0), "'iscrowd'")))
        if a.get("category_id") is not None:
            out["category_id"] = as_int(a["category_id"], "'category_id'")
        if "segmentation" not in a:
            raise FieldError("has no 'segmentation'")
        return out

    @staticmethod
    def _category_entry(c: Dict[str, Any]) -> str:
        name = c.get("name", c["id"])
        return name if isinstance(name, str) else str(as_int(name, "'name'"))

    def _summary(self, problems: Sequence[str], what: str) -> str:
        head = "; ".join(problems[:MAX_IN_MESSAGE])
        more = f" (and {len(problems) - MAX_IN_MESSAGE} more)" if len(problems) > MAX_IN_MESSAGE else ""
        return f"{len(problems)} {what}: {head}{more}"

    # ------------------------------------------------------------------ refs
    def _normalise(self, r: Any, k: int) -> Ref:
        if not isinstance(r, dict):
            raise DatasetError(f"ref #{k} in {self.refs_path} is a {type(r).__name__}, expected a dict")
        for key in ("ref_id", "image_id", "split"):
            if key not in r:
                raise DatasetError(f"ref #{k} in {self.refs_path} has no '{key}' field")
        where = f"ref #{k} (ref_id {r['ref_id']!r:.20}) in {self.refs_path}"
        try:
            return self._normalise_fields(r)
        except FieldError as e:
            raise DatasetError(f"{where}: {e}") from None

    def _normalise_fields(self, r: Dict[str, Any]) -> Ref:
        ref_id = as_int(r["ref_id"], "'ref_id'")
        image_id = as_int(r["image_id"], "'image_id'")
        split = as_str(r["split"], "'split'")
        raw_ann = r.get("ann_id", [])
        ann_list = list(raw_ann) if isinstance(raw_ann, (list, tuple)) else [raw_ann]
        ann_list = [as_int(a, "'ann_id'") for a in ann_list]
        ann_ids = [a for a in ann_list if a != -1]
        flag = as_flag(r.get("no_target", False), "'no_target'")
        no_target = flag or not ann_ids
        sentences = r.get("sentences") or []
        sent_ids = r.get("sent_ids") or []
        if not isinstance(sentences, list):
            raise FieldError(f"'sentences' must be a list, got {type(sentences).__name__}")
        if not isinstance(sent_ids, list):
            raise FieldError(f"'sent_ids' must be a list, got {type(sent_ids).__name__}")
        norm_sents = []
        for j, s in enumerate(sentences):
            if not isinstance(s, dict):
                raise FieldError(f"sentence {j} must be an object with 'sent'/'raw', got {type(s).__name__}")
            s = dict(s)
            if "sent_id" not in s:
                s["sent_id"] = sent_ids[j] if j < len(sent_ids) else -1
            s["sent_id"] = as_int(s["sent_id"], f"sentence {j} 'sent_id'")
            for key in ("sent", "raw"):
                if key in s:
                    as_str(s[key], f"sentence {j} '{key}'")
            norm_sents.append(s)
        file_name = r.get("file_name")
        if file_name is not None:
            as_str(file_name, "'file_name'")
        # A SynthGRES export carries the generator's expression type / no-target kind; keep them so the
        # export's evaluation has the same breakdowns as the generated split. Real gRefCOCO has none.
        extra = r.get("synthgres_tags")
        extra = {k: v for k, v in extra.items() if k in ("type", "nt_kind")} if isinstance(extra, dict) else {}
        return Ref(ref_id=ref_id, image_id=image_id, split=split,
                   ann_ids=[] if no_target else ann_ids, no_target=no_target, sentences=norm_sents,
                   file_name=file_name, nt_inconsistent=flag and bool(ann_ids), extra_tags=extra)

    def split_names(self) -> List[str]:
        """All split names present in the refs file, in first-seen order."""
        return list(dict.fromkeys(r.split for r in self.refs))

    def scan_split(self, split: str) -> SplitScan:
        """Validate one split and count everything the integrity report needs (cached).

        Raises DatasetError for an empty split, images/annotations missing from instances.json,
        segmentations of an unknown form, or (RefCOCO) a ref without target.
        """
        if split in self._scans:
            scan = self._scans[split]
            # Image files may have been fixed or broken since: the cheap header checks are redone.
            if self._bad_images(scan.image_ids) == scan.bad_images:
                return scan
            del self._scans[split]
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

        # Every segmentation a mask of this split is built from is checked here, before any decoding,
        # so the integrity check and the loader see the same problems.
        polys_dropped, crowd_skipped, empty_segs = 0, 0, 0
        empty_anns = set()
        seg_problems: List[str] = []
        for a in used_anns.values():
            if a.get("iscrowd", 0):
                crowd_skipped += 1
                if _seg_form(a.get("segmentation")) == "unknown":
                    seg_problems.append(self._ann_where(a) + f": segmentation of unknown form: "
                                        f"{str(a.get('segmentation'))[:80]!r}")
                continue  # crowd regions are never rasterised
            img = self.images[a["image_id"]]
            try:
                info = check_segmentation(a["segmentation"], img["height"], img["width"])
            except FieldError as e:
                seg_problems.append(f"{self._ann_where(a)}: {e}")
                continue
            polys_dropped += info.dropped
            if info.empty:
                empty_segs += 1
                empty_anns.add(int(a["id"]))
        if seg_problems:
            raise DatasetError(self._summary(seg_problems, f"malformed segmentation(s) used by split '{split}'"),
                               seg_problems)
        # Target refs whose mask would be empty although they have non-crowd instances: every one of those
        # has nothing to rasterise. Listed (like crowd-only refs), never scored against an empty mask silently.
        empty_mask = []
        crowd_set = set(crowd_only)
        for r in in_split:
            if r.no_target or r.ref_id in crowd_set:
                continue
            non_crowd = [a for a in r.ann_ids if not self.anns[a].get("iscrowd", 0)]
            if non_crowd and all(a in empty_anns for a in non_crowd):
                empty_mask.append(r.ref_id)
        # Images: header only (size, EXIF orientation), the same test the loader applies when decoding.
        candidate_images = sorted({r.image_id for r in usable})
        bad_images = self._bad_images(candidate_images)
        if bad_images and len(bad_images) == len({r.image_id for r in usable}):
            hint = "" if os.path.isdir(self.image_root) else f" (the image root {self.image_root} does not exist)"
            raise DatasetError(self._summary(list(bad_images.values()),
                                             f"image(s) of split '{split}' unusable, i.e. all of them{hint}"),
                               list(bad_images.values()))
        on_bad = sorted(r.ref_id for r in usable if r.image_id in bad_images)
        if bad_images:
            usable = [r for r in usable if r.image_id not in bad_images]
            warnings.warn(f"{self.name} {split}: {len(bad_images)} image(s) unusable, their {len(on_bad)} ref(s) "
                          f"left out: {self._summary(list(bad_images.values()), 'image problem(s)')}")
        if empty_mask:
            log.warning("%s %s: %d target ref(s) with nothing to rasterise (empty mask): %s", self.name, split,
                        len(empty_mask), empty_mask[:20])

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
            "empty_segmentations": empty_segs,
            "empty_mask_refs": [i for i in empty_mask if i in usable_ids],
            "bad_images": [bad_images[i] for i in sorted(bad_images)],
            "refs_on_bad_images": on_bad,
            "no_target_flag_inconsistent": sorted(r.ref_id for r in usable if r.nt_inconsistent),
            "ref_file_name_differs": suffix_names,
        }
        scan = SplitScan(split=split, refs=usable, report=report, target_tags=tags,
                         image_ids=candidate_images, bad_images=bad_images)
        self._scans[split] = scan
        if no_sent:
            log.info("%s %s: skipped %d refs without sentences", self.name, split, len(no_sent))
        return scan

    def _ann_where(self, a: Dict[str, Any]) -> str:
        return f"{self.instances_path}: annotation {a['id']} (image {a['image_id']})"

    # ------------------------------------------------------------------ images and masks
    def _bad_images(self, image_ids: Sequence[int]) -> Dict[int, str]:
        out = {}
        for iid in image_ids:
            problem = self.check_image(iid)
            if problem is not None:
                out[iid] = problem
        return out

    def check_image(self, image_id: int) -> Optional[str]:
        """None if the image file can be used, else a one-line problem naming the path.

        Reads the header only (Pillow opens lazily): the stored size must be instances.json's, or its
        transpose with an EXIF orientation that rotates it (5-8) to that size. Cached per file state
        (size, mtime), so a replaced file is checked again.
        """
        from PIL import Image

        path = self.image_path(image_id)
        try:
            st = os.stat(path)
            stamp: Optional[Tuple[int, int]] = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        cached = self._image_checks.get(image_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        info = self.images[image_id]
        problem: Optional[str] = None
        if stamp is None or not os.path.isfile(path):
            problem = f"{path}: missing (image_id {image_id})"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(path) as im:
                        w, h = im.size
                        orientation = _orientation(im)
            except Exception as e:  # PIL raises many types for bad files
                problem = f"{path}: not a readable image ({type(e).__name__}) (image_id {image_id})"
            else:
                want = (info["height"], info["width"])
                if (h, w) != want and not ((w, h) == want and orientation in (5, 6, 7, 8)):
                    problem = (f"{path}: stored size {w}x{h} but {self.instances_path} says "
                               f"{info['width']}x{info['height']} (image_id {image_id})")
        self._image_checks[image_id] = (stamp, problem)
        return problem

    def image_info(self, image_id: int) -> Dict[str, Any]:
        """The instances.json `images` entry of `image_id`."""
        return self.images[image_id]

    def image_path(self, image_id: int) -> str:
        """Path of an image, resolved through instances.json (so gRefCOCO's `_x` suffixes are moot)."""
        return os.path.join(self.image_root, self.images[image_id]["file_name"])

    def load_image(self, ref: Ref) -> np.ndarray:
        """Decode the image of `ref` as (H, W, 3) uint8 RGB, checking its size against instances.json."""
        return self.decode_image(ref.image_id, ref.ref_id)

    def decode_image(self, image_id: int, ref_id: Optional[int] = None) -> np.ndarray:
        """Decode image `image_id` as (H, W, 3) uint8 RGB in the annotations' pixel frame.

        Raises DatasetError (naming the path, and `ref_id` when given) for a missing or undecodable
        file, or one whose size is not instances.json's in either orientation.
        """
        path = self.image_path(image_id)
        ids = f"ref_id {ref_id}, image_id {image_id}" if ref_id is not None else f"image_id {image_id}"
        if not os.path.isfile(path):
            hint = "" if os.path.isdir(self.image_root) else f" (the image root {self.image_root} does not exist)"
            raise DatasetError(f"image not found: {path} ({ids}){hint}")
        # COCO annotations are in the stored pixel frame (the official pipelines decode without applying
        # the EXIF orientation): read it that way; apply the orientation only when that is what gives
        # the size instances.json states.
        bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise DatasetError(f"cannot decode image {path} ({ids})")
        info = self.images[image_id]
        h, w = int(info["height"]), int(info["width"])
        if bgr.shape[:2] != (h, w):
            rotated = cv2.imread(path, cv2.IMREAD_COLOR)
            if rotated is None or rotated.shape[:2] != (h, w):
                raise DatasetError(f"image {path} is {bgr.shape[1]}x{bgr.shape[0]} but {self.instances_path} "
                                   f"says {w}x{h} ({ids})")
            bgr = rotated
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _ann_rle(self, ann: Dict[str, Any], h: int, w: int) -> Optional[Dict[str, Any]]:
        """The compressed RLE of one annotation (None if all its polygons were dropped).

        The segmentation is validated first (scan_split already did, this keeps the method safe alone):
        pycocotools must never see counts that do not add up or polygons it cannot rasterise.
        """
        seg = ann["segmentation"]
        try:
            check_segmentation(seg, h, w)
        except FieldError as e:
            raise DatasetError(f"{self._ann_where(ann)}: {e}") from None
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
