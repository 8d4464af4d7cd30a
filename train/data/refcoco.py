"""RefCOCO / RefCOCO+ / G-Ref loaders (refer API format, lichengunc/refer).

Layout (ReLA issue #1):
    root/<dataset>/refs(<split_by>).p     pickled list of refs (ann_id a single int)
    root/<dataset>/instances.json
    root/images/train2014/COCO_train2014_*.jpg
A flat folder (root/refs(<split_by>).p + root/instances.json + root/images/) is accepted too.

Every ref has exactly one target (never no-target), so every sample is tagged "single". Splits:
RefCOCO/+ unc = train/val/testA/testB; RefCOCOg umd = train/val/test; google = train/val.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from train.data.refer_common import DatasetError, ReferDataset, ReferSource, first_existing, get_source

DATASETS = ("refcoco", "refcoco+", "refcocog")
SPLIT_BYS: Dict[str, Tuple[str, ...]] = {"refcoco": ("unc", "google"), "refcoco+": ("unc",),
                                         "refcocog": ("umd", "google")}
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def refcoco_layout(dataset: str, split_by: str) -> str:
    """Human-readable expected layout, for error messages."""
    return (f"root/{dataset}/refs({split_by}).p + root/{dataset}/instances.json + root/images/train2014/*.jpg"
            f", or flat: root/refs({split_by}).p + root/instances.json + root/images/")


def resolve_refcoco_files(root: str, dataset: str, split_by: str,
                          image_root: Optional[str] = None) -> Tuple[str, str, str, str]:
    """Find (refs_path, instances_path, image_root, layout) for a refer-API dataset under `root`."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    # A non-standard split_by is not rejected (a custom refs file may exist); if its file is missing,
    # the error below lists the standard ones.
    hint = refcoco_layout(dataset, split_by)
    if not os.path.isdir(root):
        raise DatasetError(f"{dataset} root not found: {root}; expected layout: {hint}")
    sub = os.path.join(root, dataset)
    name = f"refs({split_by})"
    found = first_existing([
        (os.path.join(sub, name + ".p"), os.path.join(sub, "instances.json"),
         os.path.join(root, "images", "train2014"), "standard"),
        (os.path.join(sub, name + ".json"), os.path.join(sub, "instances.json"),
         os.path.join(root, "images", "train2014"), "standard"),
        (os.path.join(root, name + ".p"), os.path.join(root, "instances.json"),
         os.path.join(root, "images"), "flat"),
    ])
    if found is None:
        raise DatasetError(f"{dataset} refs file not found: {os.path.join(sub, name + '.p')}; expected layout: "
                           f"{hint} (standard split_by for {dataset}: {', '.join(SPLIT_BYS[dataset])})")
    refs_path, inst_path, img_root, layout = found
    return refs_path, inst_path, image_root or img_root, layout


def open_refcoco(root: str, dataset: str = "refcoco", split_by: Optional[str] = None,
                 image_root: Optional[str] = None) -> ReferSource:
    """The (process-wide shared) `ReferSource` of a RefCOCO/RefCOCO+/G-Ref folder."""
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    refs_path, inst_path, img_root, _ = resolve_refcoco_files(root, dataset, split_by, image_root)
    return get_source(refs_path, inst_path, img_root, dataset, refcoco_layout(dataset, split_by),
                      allow_no_target=False)


class RefCOCO(ReferDataset):
    """One split of RefCOCO / RefCOCO+ / G-Ref as a torch Dataset of SynthGRES-schema sample dicts.

    Args:
        root: folder holding `<dataset>/refs(<split_by>).p`, `<dataset>/instances.json` and `images/`.
        dataset: "refcoco", "refcoco+" or "refcocog".
        split_by: "unc" / "google" (RefCOCO), "unc" (RefCOCO+), "umd" / "google" (G-Ref); None = the
            usual one ("unc", "unc", "umd").
        split: split name, e.g. "val", "testA", "test".
        mode, image_root, seed, text_field, size, resize_mode: as for `GRefCOCO`.
    """

    def __init__(self, root: str, dataset: str = "refcoco", split_by: Optional[str] = None,
                 split: str = "val", mode: str = "eval", image_root: Optional[str] = None, seed: int = 0,
                 text_field: str = "sent", size: Optional[int] = None, resize_mode: str = "squash") -> None:
        source = open_refcoco(root, dataset, split_by, image_root)
        super().__init__(source, split, mode=mode, seed=seed, text_field=text_field, size=size,
                         resize_mode=resize_mode)
        self.root = root
        self.dataset = dataset
        self.split_by = split_by or DEFAULT_SPLIT_BY[dataset]


__all__ = ["RefCOCO", "open_refcoco", "resolve_refcoco_files", "DATASETS", "SPLIT_BYS", "DEFAULT_SPLIT_BY"]
