"""gRefCOCO loader (henghuiding/gRefCOCO format; ReLA grefer.py): multi-target and no-target referring expressions on COCO images.

Accepted layouts (the first whose refs file exists wins):
1. standard (ReLA's `datasets/` folder):
       root/grefcoco/grefs(unc).json   (or grefs(unc).p)
       root/grefcoco/instances.json
       root/images/train2014/COCO_train2014_*.jpg
2. flat (what the SynthGRES exporter writes):
       root/grefs(unc).json   (or grefs(unc).p)
       root/instances.json
       root/images/<file_name of instances.json>
`image_root` overrides the image folder of either layout.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

from train.data.refer_common import DatasetError, ReferDataset, ReferSource, first_existing, get_source

GREFCOCO_LAYOUT = ("root/grefcoco/grefs(unc).json (or .p) + root/grefcoco/instances.json + "
                   "root/images/train2014/*.jpg, or flat: root/grefs(unc).json + root/instances.json + "
                   "root/images/")


def resolve_grefcoco_files(root: str, image_root: Optional[str] = None,
                           split_by: str = "unc") -> Tuple[str, str, str, str]:
    """Find (refs_path, instances_path, image_root, layout) under `root`; layout is "standard" or "flat"."""
    if not os.path.isdir(root):
        raise DatasetError(f"gRefCOCO root not found: {root}; expected layout: {GREFCOCO_LAYOUT}")
    std, flat = os.path.join(root, "grefcoco"), root
    name = f"grefs({split_by})"
    found = first_existing([
        (os.path.join(std, name + ".json"), os.path.join(std, "instances.json"),
         os.path.join(root, "images", "train2014"), "standard"),
        (os.path.join(std, name + ".p"), os.path.join(std, "instances.json"),
         os.path.join(root, "images", "train2014"), "standard"),
        (os.path.join(flat, name + ".json"), os.path.join(flat, "instances.json"),
         os.path.join(root, "images"), "flat"),
        (os.path.join(flat, name + ".p"), os.path.join(flat, "instances.json"),
         os.path.join(root, "images"), "flat"),
    ])
    if found is None:
        raise DatasetError(f"gRefCOCO refs file not found: {os.path.join(std, name + '.json')} "
                           f"(nor .p, nor {os.path.join(flat, name + '.json')}); expected layout: "
                           f"{GREFCOCO_LAYOUT}")
    refs_path, inst_path, img_root, layout = found
    return refs_path, inst_path, image_root or img_root, layout


def open_grefcoco(root: str, image_root: Optional[str] = None, split_by: str = "unc") -> ReferSource:
    """The (process-wide shared) `ReferSource` of a gRefCOCO folder."""
    refs_path, inst_path, img_root, _ = resolve_grefcoco_files(root, image_root, split_by)
    return get_source(refs_path, inst_path, img_root, "gRefCOCO", GREFCOCO_LAYOUT, allow_no_target=True)


class GRefCOCO(ReferDataset):
    """One split of gRefCOCO as a torch Dataset of SynthGRES-schema sample dicts.

    Args:
        root: dataset folder (standard or flat layout, see the module docstring).
        split: "train", "val", "testA" or "testB" (any split present in the refs file).
        mode: "eval" (one sample per (ref, sentence)) or "train" (one per ref, random sentence; call
            `set_epoch`).
        image_root: override of the image folder.
        seed: base seed of the train-mode sentence draw.
        text_field: "sent" (MABP) or "raw" (ReLA).
        size / resize_mode: optional resize of every sample (see `ReferDataset`).
        split_by: refs file variant; gRefCOCO only ships "unc".
    """

    def __init__(self, root: str, split: str, mode: str = "eval", image_root: Optional[str] = None,
                 seed: int = 0, text_field: str = "sent", size: Optional[int] = None,
                 resize_mode: str = "squash", split_by: str = "unc") -> None:
        source = open_grefcoco(root, image_root, split_by)
        super().__init__(source, split, mode=mode, seed=seed, text_field=text_field, size=size,
                         resize_mode=resize_mode)
        self.root = root


__all__ = ["GRefCOCO", "open_grefcoco", "resolve_grefcoco_files", "GREFCOCO_LAYOUT"]
