"""Integrity report of a real referring-segmentation dataset on disk.

    python -m train.data.check --dataset grefcoco --root datasets
    python -m train.data.check --dataset refcocog --root datasets --split-by umd --decode

Prints, per split, refs / expressions / images beside the published sizes (gRefCOCO paper / refer API), no-target and
multi-target counts, refs without sentences, crowd-only and empty-mask refs, dropped polygons, empty
segmentations, every malformed annotation (file, annotation / ref id, what is wrong) and every missing,
unreadable or mis-sized image (the first 20 listed, plus the total). The checks are the loaders' own
(`ReferSource.scan_split` / `check_image`), so what passes here loads, and what fails here fails there.
Every image header is read (size, EXIF orientation); `--decode` also decodes each image the way the
loader does (slow on real COCO, with a progress bar).

Exit code: 0 if nothing is wrong, 1 otherwise or when the files cannot be loaded at all.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from train.data.refer_common import DatasetError, ReferSource

# Published sizes (gRefCOCO paper, refer API README). None = not published / unknown.
KNOWN_SIZES: Dict[Tuple[str, str], Dict[str, Dict[str, Optional[int]]]] = {
    ("grefcoco", "unc"): {
        "train": {"refs": 78930, "expressions": None, "images": 16994},
        "val": {"refs": None, "expressions": None, "images": 1500},
        "testA": {"refs": None, "expressions": None, "images": 750},
        "testB": {"refs": None, "expressions": None, "images": 750},
    },
    ("refcoco", "unc"): {
        "train": {"refs": 42404, "expressions": 120624, "images": 16994},
        "val": {"refs": 3811, "expressions": 10834, "images": 1500},
        "testA": {"refs": 1975, "expressions": 5657, "images": 750},
        "testB": {"refs": 1810, "expressions": 5095, "images": 750},
    },
    ("refcoco+", "unc"): {
        "train": {"refs": 42278, "expressions": 120191, "images": 16992},
        "val": {"refs": 3805, "expressions": 10758, "images": 1500},
        "testA": {"refs": 1975, "expressions": 5726, "images": 750},
        "testB": {"refs": 1798, "expressions": 4889, "images": 750},
    },
    ("refcocog", "umd"): {
        "train": {"refs": 42226, "expressions": 80512, "images": 21899},
        "val": {"refs": 2573, "expressions": 4896, "images": 1300},
        "test": {"refs": 5023, "expressions": 9602, "images": 2600},
    },
    ("refcocog", "google"): {
        "val": {"refs": None, "expressions": None, "images": 4650},  # expressions ≈ 9.5k
    },
}
# gRefCOCO's released json holds 259,859 expressions (the paper's 278,232 minus a held-back ~6 %).
KNOWN_TOTAL_EXPRESSIONS: Dict[Tuple[str, str], int] = {("grefcoco", "unc"): 259859}

MAX_LISTED = 20


def _num(v: Optional[int]) -> str:
    return "—" if v is None else f"{v:,}"


def _vs(actual: int, known: Optional[int]) -> str:
    """'actual (known K)' with a mark when they differ."""
    if known is None:
        return f"{actual:,}"
    mark = "" if actual == known else " ≠"
    return f"{actual:,} (known {known:,}{mark})"


def _open_source(dataset: str, root: str, split_by: Optional[str], image_root: Optional[str]) -> ReferSource:
    if dataset == "grefcoco":
        from train.data.grefcoco import open_grefcoco
        return open_grefcoco(root, image_root, split_by or "unc")
    from train.data.refcoco import open_refcoco
    return open_refcoco(root, dataset, split_by, image_root)


def check_images(source: ReferSource, image_ids: Sequence[int], decode: bool = False,
                 progress: bool = True) -> Tuple[List[str], List[str]]:
    """Check every image file exists (and with `decode`, decodes at the size instances.json states).

    Returns (missing paths, unreadable paths with a reason), in image_id order.
    """
    missing: List[str] = []
    unreadable: List[str] = []
    ids = sorted(set(image_ids))
    for iid in ids:
        path = source.image_path(iid)
        if not os.path.isfile(path):
            missing.append(path)
        else:
            problem = source.check_image(iid)  # the loader's own header test
            if problem is not None:
                unreadable.append(problem)
    if decode:
        bad = set(missing) | {u.split(": ", 1)[0] for u in unreadable}
        present = [i for i in ids if source.image_path(i) not in bad]
        it: Any = present
        if progress:
            from tqdm import tqdm
            it = tqdm(present, desc="decoding images", unit="img", file=sys.stderr)
        for iid in it:
            try:
                source.decode_image(iid)
            except DatasetError as e:
                unreadable.append(str(e))
    return missing, unreadable


def run_check(dataset: str, root: str, split_by: Optional[str] = None, splits: Optional[Sequence[str]] = None,
              image_root: Optional[str] = None, decode: bool = False, out: Optional[TextIO] = None,
              progress: bool = True) -> int:
    """Print the integrity report to `out` (default: the current sys.stdout); return the exit code
    (0 ok, 1 problems)."""
    out = out if out is not None else sys.stdout  # resolved per call so redirection/capture works
    from train.data.refcoco import DEFAULT_SPLIT_BY
    split_by = split_by or ("unc" if dataset == "grefcoco" else DEFAULT_SPLIT_BY[dataset])
    p = lambda *a: print(*a, file=out)  # noqa: E731 - local shorthand
    try:
        source = _open_source(dataset, root, split_by, image_root)
    except DatasetError as e:
        p(f"ERROR: {e}")
        return 1
    known = KNOWN_SIZES.get((dataset, split_by), {})
    p(f"# {dataset} ({split_by}) integrity report")
    p(f"refs file:      {source.refs_path} ({len(source.refs):,} refs)")
    p(f"instances file: {source.instances_path} ({len(source.images):,} images, {len(source.anns):,} annotations)")
    p(f"image root:     {source.image_root}{'' if os.path.isdir(source.image_root) else '  (DOES NOT EXIST)'}")

    present = source.split_names()
    # Published splits first, in their usual order (train, val, test...), then any extra ones.
    wanted = list(splits) if splits else list(known) + [s for s in present if s not in known]
    reports: Dict[str, Dict[str, Any]] = {}
    errors: List[str] = []
    notes: List[str] = []
    for s in wanted:
        if s not in present:
            # A partial copy (e.g. a SynthGRES export of one split) is legitimate: a note, not an error,
            # unless the user asked for this split explicitly.
            msg = f"split '{s}' is absent from {source.refs_path} (present: {', '.join(present)})"
            (errors if splits else notes).append(msg)
            continue
        try:
            reports[s] = source.scan_split(s).report
        except DatasetError as e:
            errors.extend(e.problems)

    p("")
    p("| split | refs (with sentences) | expressions | images | no-target refs / expr | multi-target refs / expr "
      "(same, mixed) | refs without sentences | crowd-only refs | polygons dropped |")
    p("|---|---|---|---|---|---|---|---|---|")
    for s, r in reports.items():
        k = known.get(s, {})
        tags = r["target_tags_refs"]
        p(f"| {s} | {_vs(r['refs'], k.get('refs'))} | {_vs(r['expressions'], k.get('expressions'))} | "
          f"{_vs(r['images'], k.get('images'))} | {r['no_target_refs']:,} / {r['no_target_expressions']:,} | "
          f"{r['multi_target_refs']:,} / {r['multi_target_expressions']:,} "
          f"({tags.get('multi-same', 0):,}, {tags.get('multi-mixed', 0):,}) | "
          f"{r['refs_without_sentences']:,} | {len(r['crowd_only_refs']):,} | {r['polygons_dropped']:,} |")
    total_expr = sum(r["expressions"] for r in reports.values())
    known_total = KNOWN_TOTAL_EXPRESSIONS.get((dataset, split_by))
    p("")
    p(f"total expressions (listed splits): {_vs(total_expr, known_total) if not splits else f'{total_expr:,}'}")
    for s, r in reports.items():
        if r["refs_without_sentences"]:
            ids = r["refs_without_sentences_ids"]
            p(f"{s}: {len(ids):,} refs without sentences skipped (ref_ids {ids[:MAX_LISTED]}"
              f"{' ...' if len(ids) > MAX_LISTED else ''})")
        if r["crowd_only_refs"]:
            ids = r["crowd_only_refs"]
            p(f"{s}: {len(ids):,} crowd-only refs (target refs whose instances are all iscrowd=1; kept "
              f"with an empty mask) (ref_ids {ids[:MAX_LISTED]}{' ...' if len(ids) > MAX_LISTED else ''})")
        if r["crowd_instances_skipped"]:
            p(f"{s}: {r['crowd_instances_skipped']:,} crowd instances left out of masks")
        if r["polygons_dropped"]:
            p(f"{s}: {r['polygons_dropped']:,} polygons with < 3 points dropped")
        if r["empty_segmentations"]:
            p(f"{s}: {r['empty_segmentations']:,} empty segmentations (`[]`, only polygons with < 3 points, "
              "or an RLE without foreground)")
        if r["empty_mask_refs"]:
            ids = r["empty_mask_refs"]
            p(f"{s}: {len(ids):,} empty-mask refs (target refs whose non-crowd instances have nothing to "
              f"rasterise; kept with an empty mask) (ref_ids {ids[:MAX_LISTED]}"
              f"{' ...' if len(ids) > MAX_LISTED else ''})")
        if r["refs_on_bad_images"]:
            ids = r["refs_on_bad_images"]
            p(f"{s}: {len(ids):,} refs left out by the loaders: their image is unusable (ref_ids "
              f"{ids[:MAX_LISTED]}{' ...' if len(ids) > MAX_LISTED else ''})")
        if r["no_target_flag_inconsistent"]:
            p(f"{s}: {len(r['no_target_flag_inconsistent']):,} refs flagged no_target but listing "
              f"annotations (treated as no-target)")
        if r["ref_file_name_differs"]:
            p(f"{s}: {r['ref_file_name_differs']:,} refs whose file_name differs from instances.json "
              "(e.g. the `_x` suffix); images are resolved through image_id")
    for n in source.notes + notes:
        p(f"NOTE: {n}")
    for e in errors[:MAX_LISTED]:
        p(f"ERROR: {e}")
    if len(errors) > MAX_LISTED:
        p(f"ERROR: ... and {len(errors) - MAX_LISTED:,} more problems ({len(errors):,} in total)")

    # Every image of the listed splits, including those the loaders leave out (they are listed below).
    image_ids = sorted({ref.image_id for s in reports for ref in source.refs
                        if ref.split == s and ref.sentences})
    missing, unreadable = check_images(source, image_ids, decode=decode, progress=progress)
    p("")
    p(f"images referenced: {len(image_ids):,}; missing: {len(missing):,}"
      + (f"; unreadable: {len(unreadable):,}" if decode else " (files not decoded; use --decode)"))
    for title, items in (("missing", missing), ("unreadable", unreadable)):
        for path in items[:MAX_LISTED]:
            p(f"  {title}: {path}")
        if len(items) > MAX_LISTED:
            p(f"  ... and {len(items) - MAX_LISTED:,} more {title} images ({len(items):,} in total)")
    bad = bool(missing or unreadable or errors)
    p("")
    p("RESULT: " + ("PROBLEMS FOUND" if bad else "OK"))
    return 1 if bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m train.data.check", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, choices=("grefcoco", "refcoco", "refcoco+", "refcocog"))
    ap.add_argument("--root", required=True, help="dataset root (holding grefcoco/ or refcoco*/ and images/)")
    ap.add_argument("--split-by", default=None, help="refs file variant (default: unc, or umd for refcocog)")
    ap.add_argument("--split", action="append", default=None,
                    help="check only this split (repeatable); default: all splits")
    ap.add_argument("--image-root", default=None, help="override the image folder")
    ap.add_argument("--decode", action="store_true", help="also decode every image (slow)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    return run_check(args.dataset, args.root, args.split_by, args.split, args.image_root, args.decode,
                     progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
