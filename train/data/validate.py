"""Strict reading of annotation fields (refs files and COCO `instances.json`).

Every value the loaders use goes through one of these checks, so a malformed file gives an error that
names the file, the entry and what is wrong, instead of a blind cast (`int("3.7")`, `int(True)`), a
pycocotools traceback, or -- worst -- a silently wrong mask:

- `as_int` / `as_str` / `as_flag`: typed fields (ids, split names, iscrowd / no_target flags);
- `check_segmentation`: a COCO segmentation against its image size. Polygons must be lists of finite
  numbers with an even count, within `FAR_OUT` image sizes of the image (pycocotools rasterises a
  polygon by walking its edges at 5x resolution: a vertex at 2e8 px allocates tens of GB and kills the
  process); fewer than 3 points are dropped, as ReLA does (counted, not an error). RLE `size` must be
  the image's [height, width] and its counts -- list or COCO's compressed string -- non-negative and
  summing to exactly height x width (pycocotools decodes short counts into uninitialised memory and
  raises on long ones).

Source of the formats: COCO's `instances.json` / pycocotools `maskApi.c` (rleFrString), the refer API
(lichengunc/refer) and gRefCOCO (henghuiding/gRefCOCO).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, List, Optional

# A polygon vertex more than FAR_OUT image widths/heights outside the image is not an annotation error
# of a few pixels but a corrupt number; pixels slightly outside are normal in COCO and clipped by
# pycocotools itself.
FAR_OUT = 1.0


class FieldError(ValueError):
    """One malformed field; the caller adds the file and entry to the message."""


def as_int(value: Any, what: str) -> int:
    """An integer field: int (not bool), numpy integer, or an integral float (1.0). Raises FieldError."""
    if isinstance(value, bool):
        raise FieldError(f"{what} must be an integer, got the boolean {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise FieldError(f"{what} must be an integer, got {type(value).__name__} {value!r:.60}")


def as_str(value: Any, what: str) -> str:
    """A text field (str). Raises FieldError."""
    if not isinstance(value, str):
        raise FieldError(f"{what} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def as_flag(value: Any, what: str) -> bool:
    """A boolean flag: true/false or the integers 0/1 (COCO's iscrowd). Raises FieldError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise FieldError(f"{what} must be true/false or 0/1, got {type(value).__name__} {value!r:.60}")


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def rle_string_counts(s: str) -> List[int]:
    """Run lengths of COCO's compressed RLE string (pycocotools maskApi.c rleFrString, in Python).

    Raises FieldError for characters outside the alphabet or a string that ends inside a number.
    Counts may come out negative for a corrupt string; the caller checks.
    """
    counts: List[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise FieldError("the compressed RLE string ends in the middle of a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise FieldError(f"the compressed RLE string holds {s[p]!r}, outside COCO's alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


@dataclass
class SegmentationInfo:
    """What `check_segmentation` learnt about one valid segmentation."""

    polygons: int = 0  # polygons kept (>= 3 points)
    dropped: int = 0  # polygons with < 3 points (dropped, as ReLA does)
    empty: bool = False  # nothing left to rasterise: [] / all polygons dropped / an RLE without foreground


def check_segmentation(seg: Any, h: int, w: int) -> SegmentationInfo:
    """Validate a COCO segmentation for an h x w image. Raises FieldError saying what is wrong."""
    info = SegmentationInfo()
    if isinstance(seg, list):
        for i, poly in enumerate(seg):
            if not isinstance(poly, (list, tuple)) or not all(_is_number(v) for v in poly):
                raise FieldError(f"polygon {i} must be a list of numbers [x1, y1, x2, y2, ...], "
                                 f"got {str(poly)[:60]!r}")
            if len(poly) % 2:
                raise FieldError(f"polygon {i} has an odd number of coordinates ({len(poly)})")
            if len(poly) < 6:
                info.dropped += 1
                continue
            if not all(math.isfinite(v) for v in poly):
                raise FieldError(f"polygon {i} has non-finite coordinates (NaN or inf)")
            xs, ys = poly[0::2], poly[1::2]
            lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
            if lo_x < -FAR_OUT * w or hi_x > (1 + FAR_OUT) * w or lo_y < -FAR_OUT * h or hi_y > (1 + FAR_OUT) * h:
                raise FieldError(f"polygon {i} has coordinates far outside the {w}x{h} image "
                                 f"(x {lo_x:.6g}..{hi_x:.6g}, y {lo_y:.6g}..{hi_y:.6g}); rasterising it "
                                 "would take unbounded memory")
            info.polygons += 1
        info.empty = info.polygons == 0
        return info
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = seg["size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise FieldError(f"RLE size must be [height, width], got {size!r:.60}")
        size = [as_int(size[0], "RLE height"), as_int(size[1], "RLE width")]
        if size != [h, w]:
            raise FieldError(f"RLE size {size} differs from its image size {[h, w]}")
        counts = seg["counts"]
        if isinstance(counts, (list, tuple)):
            runs = [as_int(c, "an RLE count") for c in counts]
        elif isinstance(counts, (str, bytes)):
            try:
                text = counts.decode("ascii") if isinstance(counts, bytes) else counts
            except UnicodeDecodeError:
                raise FieldError("the compressed RLE string is not ASCII") from None
            runs = rle_string_counts(text)
        else:
            raise FieldError(f"RLE counts must be a list of integers or a compressed string, "
                             f"got {type(counts).__name__}")
        if any(c < 0 for c in runs):
            raise FieldError("RLE counts hold a negative run (corrupt counts)")
        total = sum(runs)
        if total != h * w:
            raise FieldError(f"RLE counts add up to {total:,} pixels, not height x width = {h} x {w} = {h * w:,}")
        info.empty = sum(runs[1::2]) == 0
        return info
    raise FieldError(f"segmentation of unknown form: {str(seg)[:80]!r}; expected polygons "
                     "(list of [x1, y1, x2, y2, ...]) or RLE ({'size', 'counts'})")


def decode_py2_strings(obj: Any, stats: Optional[dict] = None) -> Any:
    """Python-2 byte strings (a pickle read with encoding="bytes") -> str: UTF-8 first, Latin-1 as the
    fallback. `stats["latin1"]` counts the fallbacks and keeps a few examples, so the caller can warn."""
    if stats is None:
        stats = {}
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            stats["latin1"] = stats.get("latin1", 0) + 1
            text = obj.decode("latin-1")
            stats.setdefault("examples", [])
            if len(stats["examples"]) < 3:
                stats["examples"].append(text[:40])
            return text
    if isinstance(obj, dict):
        return {decode_py2_strings(k, stats): decode_py2_strings(v, stats) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_py2_strings(v, stats) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode_py2_strings(v, stats) for v in obj)
    return obj


__all__ = ["FieldError", "as_int", "as_str", "as_flag", "rle_string_counts", "check_segmentation",
           "SegmentationInfo", "decode_py2_strings", "FAR_OUT"]
