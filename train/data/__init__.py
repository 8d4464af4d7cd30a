"""Datasets of the training / evaluation module.

All datasets yield the same sample dict (see `train.data.refer_common`): image (H, W, 3) uint8 RGB,
mask (H, W) bool, sentence, no_target, target_ids, tags, image_id, ref_id, sent_id, split.

`build_dataset` is the single entry point used by the engine and the CLIs.
"""
from __future__ import annotations

import os
from typing import Any, Optional

DATASET_NAMES = ("synthgres", "grefcoco", "refcoco", "refcoco+", "refcocog", "mevis")
# Where real datasets live when no root is given: ReLA's convention is a `datasets/` folder; the
# environment variable lets a machine point elsewhere without touching configs.
DEFAULT_ROOT_ENV = "MABP_DATASETS"


def default_root() -> str:
    """$MABP_DATASETS, or ./datasets."""
    return os.environ.get(DEFAULT_ROOT_ENV, "datasets")


def build_dataset(name: str, split: str, root: Optional[str] = None, mode: str = "eval",
                  size: Optional[int] = None, **kw: Any):
    """Build a dataset by name.

    Args:
        name: "synthgres", "grefcoco", "refcoco", "refcoco+", "refcocog" or "mevis" (video, read frame by
            frame: train mode draws one frame per 5 adjacent ones, §IV-D; see train.data.mevis).
        split: split name ("train", "val", "testA", "testB", "test", ...).
        root: folder of a real dataset (default: $MABP_DATASETS or ./datasets); ignored by synthgres,
            which is generated on the fly (to load a SynthGRES *export*, use name="grefcoco" with the
            export folder as root).
        mode: "eval" (one sample per expression) or "train" (one per ref, random sentence) for the real
            datasets. SynthGRES has no modes (its train split is already a stream), so it is ignored there.
        size: output side. synthgres: the canvas size (None = its default, 320). Real datasets: squash
            resize to size×size as the paper does (None = original resolution; pass
            resize_mode="letterbox" to keep the aspect ratio).
        **kw: passed to the dataset class (e.g. seed, length for synthgres; seed, text_field,
            image_root, resize_mode, split_by for the real ones).
    """
    key = name.lower()
    if key == "synthgres":
        # Imported lazily: the generator is a separate module and pulls in its own dependencies.
        from train.data.synthgres import SynthGRES
        if size is not None:
            kw["size"] = size
        return SynthGRES(split, **kw)
    root = root if root is not None else default_root()
    if key == "grefcoco":
        from train.data.grefcoco import GRefCOCO
        return GRefCOCO(root, split, mode=mode, size=size, **kw)
    if key in ("refcoco", "refcoco+", "refcocog"):
        from train.data.refcoco import RefCOCO
        return RefCOCO(root, dataset=key, split=split, mode=mode, size=size, **kw)
    if key == "mevis":
        from train.data.mevis import MeViS
        return MeViS(root, split, mode=mode, size=size, **kw)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")


__all__ = ["build_dataset", "DATASET_NAMES", "default_root"]
