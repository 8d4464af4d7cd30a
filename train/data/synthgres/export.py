"""Export SynthGRES splits in the gRefCOCO on-disk layout.

    out_dir/images/synthgres_<split>_<index>.png
    out_dir/instances.json     COCO: images, annotations (visible-mask polygons or RLE), categories
    out_dir/grefs(unc).json    list of refs (one per image x expression), ann_id [-1] for no-target

Several splits can be exported into the same directory: ids are unique across splits and an export
replaces only the entries of its own split.

Polygons.  COCO polygons cannot carry holes and pycocotools fills a pixel iff its centre lies inside
the polygon.  cv2 contours run through boundary *pixel centres*, which loses half a pixel all round
(IoU ~0.90 for a small object).  So contours are traced on the mask upsampled 2x (nearest), whose
boundary-pixel centres sit a quarter pixel inside the true pixel edges: every original boundary pixel
centre is then inside the polygon and every outside centre outside -> lossless rasterisation.
CHAIN_APPROX_SIMPLE only drops collinear points, so it does not change the polygon.  Masks with holes
(rings, or shapes seen through a ring) are cut into hole-free pieces first; a visible part split into
several pieces gets several polygons.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import cv2
import numpy as np

from .dataset import SynthGRES
from .vocab import IMAGE_ID_STRIDE, SHAPES, SPLIT_CODE

CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
CATEGORY_ID = {s: i + 1 for i, s in enumerate(SHAPES)}
INFO_TAG = "SynthGRES"


def _hole_free_pieces(mask: np.ndarray, depth: int = 0) -> list[np.ndarray]:
    """Split a uint8 mask into pieces without holes by cutting vertically through each hole."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    holes = [c for c, h in zip(contours, hierarchy[0]) if h[3] != -1]
    if not holes or depth > 32:
        return [mask]
    # Hole pixels = inside the hole contour but not in the mask; cut at a column that contains one.
    # Both halves then open the hole to the outside, and each is strictly smaller, so this terminates.
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, holes, 0, 1, -1)
    ys, xs = np.nonzero(filled & (mask == 0))
    if len(xs) == 0:
        return [mask]
    cut = int(np.median(xs))
    left, right = mask.copy(), mask.copy()
    left[:, cut:] = 0
    right[:, :cut] = 0
    return _hole_free_pieces(left, depth + 1) + _hole_free_pieces(right, depth + 1)


def mask_to_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """COCO polygons ([x1, y1, x2, y2, ...], >= 3 points each) whose rasterisation equals `mask`.

    Args:
        mask: (h, w) bool/uint8 mask (may be a crop).
        offset: (x0, y0) added to the coordinates (position of the crop in the image).
    """
    m = (np.asarray(mask) > 0).astype(np.uint8)
    polys: list[list[float]] = []
    for piece in _hole_free_pieces(m):
        up = np.repeat(np.repeat(piece, 2, axis=0), 2, axis=1)
        contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            pts = c.reshape(-1, 2).astype(np.float64)
            if len(pts) < 3:
                continue
            pts = (pts + 0.5) / 2.0 + np.asarray(offset, dtype=np.float64)
            polys.append([round(float(v), 2) for v in pts.ravel()])
    return polys


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """pycocotools RLE with `counts` as str (JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}


def world_categories(ds: SynthGRES) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """COCO categories of a dataset's world: the 8 shapes (ids 1-8, as always), then for the photo /
    mixed worlds one category per photo noun (ids 9..., sorted by noun, supercategory = top group)."""
    cats, ids = list(CATEGORIES), dict(CATEGORY_ID)
    if ds.world != "shapes":
        tops = {}
        for st in ds.assets.stamps:
            tops.setdefault(st.noun, st.top)
        for noun in sorted(tops):
            ids[noun] = len(cats) + 1
            cats.append({"id": ids[noun], "name": noun, "supercategory": tops[noun]})
    return cats, ids


def _attributes(obj: Any) -> dict[str, Any]:
    """Extra per-annotation facts (ignored by COCO / gRefCOCO loaders) that keep the scene inspectable."""
    if hasattr(obj, "noun"):  # photo world
        return {"noun": obj.noun, "groups": list(obj.groups), "colour": obj.colour, "size": obj.size,
                "center": [round(obj.cx, 2), round(obj.cy, 2)], "z": obj.z, "stamp": int(obj.stamp),
                "flip": bool(obj.flip)}
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size,
            "center": [round(obj.cx, 2), round(obj.cy, 2)], "z": obj.z}


def _annotation(obj: Any, ann_id: int, image_id: int, rle: bool,
                category_id: dict[str, int] = CATEGORY_ID) -> dict[str, Any]:
    vis = obj.visible_mask
    ys, xs = np.nonzero(vis)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if rle:
        seg: Any = mask_to_rle(vis)
    else:
        seg = mask_to_polygons(vis[y0:y1, x0:x1], offset=(x0, y0))
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id[obj.shape], "segmentation": seg,
        "area": int(len(xs)), "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0,
        # Extra fields (ignored by COCO / gRefCOCO loaders) that keep the scene inspectable.
        "synthgres_attributes": _attributes(obj),
    }


def _load_existing(out_dir: str, split: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Existing export (other splits kept), or (None, []) if there is none."""
    inst_path = os.path.join(out_dir, "instances.json")
    refs_path = os.path.join(out_dir, "grefs(unc).json")
    if not os.path.exists(inst_path):
        return None, []
    with open(inst_path) as f:
        inst = json.load(f)
    if not str(inst.get("info", {}).get("description", "")).startswith(INFO_TAG):
        raise FileExistsError(f"{inst_path} exists and is not a SynthGRES export; refusing to overwrite it")
    code = SPLIT_CODE[split]
    inst["images"] = [im for im in inst["images"] if im["id"] // IMAGE_ID_STRIDE != code]
    inst["annotations"] = [a for a in inst["annotations"] if a["image_id"] // IMAGE_ID_STRIDE != code]
    refs: list[dict[str, Any]] = []
    if os.path.exists(refs_path):
        with open(refs_path) as f:
            refs = [r for r in json.load(f) if r["split"] != split]
    return inst, refs


def export_split(split: str, out_dir: str, num: int | None = None, size: int | tuple[int, int] = 320,
                 rle: bool = False, seed: int | None = None, progress: bool = True, world: str = "shapes",
                 **dataset_kwargs: Any) -> dict[str, int]:
    """Write `num` expressions of a split (default: the whole fixed split / one train epoch).

    `world` ("shapes" / "photo" / "mixed") and `dataset_kwargs` (e.g. photographic_only, stamps_dir)
    go to SynthGRES.  Photo-world categories are the nouns (see `world_categories`); one export
    folder should hold one world (the categories list is rewritten by each export).

    Returns a summary {"images", "annotations", "refs", "no_target"}.
    """
    from tqdm import tqdm

    ds = SynthGRES(split, size=size, seed=seed, length=num, world=world, **dataset_kwargs)
    categories, category_id = world_categories(ds)
    n = len(ds)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    inst, refs = _load_existing(out_dir, split)
    if inst is None:
        inst = {"images": [], "annotations": []}
    inst["info"] = {"description": f"{INFO_TAG} (procedurally generated GRES benchmark)", "version": "1.0"}
    inst["categories"] = categories

    new_files: set[str] = set()
    n_images = ds.num_images()
    summary = {"images": 0, "annotations": 0, "refs": 0, "no_target": 0}
    for image_index in tqdm(range(n_images), desc=f"export {split}", unit="img", disable=not progress):
        scene, exprs = ds.scene(image_index), ds.expressions(image_index)
        image_id, file_name = ds.image_id(image_index), ds.file_name(image_index)
        cv2.imwrite(os.path.join(out_dir, "images", file_name), scene.image[:, :, ::-1],
                    [cv2.IMWRITE_PNG_COMPRESSION, 3])
        new_files.add(file_name)
        inst["images"].append({"id": image_id, "file_name": file_name, "height": scene.height,
                               "width": scene.width})
        ann_ids = []
        for obj in scene.objects:
            ann_id = image_id * 10 + obj.index  # <= 8 objects per image, so ids never collide
            inst["annotations"].append(_annotation(obj, ann_id, image_id, rle, category_id))
            ann_ids.append(ann_id)
        summary["images"] += 1
        summary["annotations"] += len(scene.objects)
        first = ds.first_index(image_index)
        for slot, e in enumerate(exprs):
            index = first + slot
            if index >= n:
                break
            rid = ds.ref_id(index)
            no_target = len(e.target_ids) == 0
            refs.append({
                "ref_id": rid, "image_id": image_id, "split": split,
                "ann_id": [ann_ids[i] for i in e.target_ids] if not no_target else [-1],
                "category_id": [category_id[scene.objects[i].shape] for i in e.target_ids] if not no_target else [-1],
                "no_target": no_target,
                "sentences": [{"sent_id": rid, "sent": e.sentence, "raw": e.sentence, "tokens": e.sentence.split()}],
                "sent_ids": [rid],
                "file_name": file_name,
                "synthgres_tags": dict(e.tags),
                "synthgres_target_ids": list(e.target_ids),
            })
            summary["refs"] += 1
            summary["no_target"] += int(no_target)

    # Drop stale images of this split (e.g. from an earlier, larger export).
    prefix = ds.file_name(0).rsplit("_", 1)[0]  # synthgres_<split> / synthgres-<world>_<split>
    for path in glob.glob(os.path.join(out_dir, "images", f"{prefix}_*.png")):
        if os.path.basename(path) not in new_files:
            os.remove(path)
    with open(os.path.join(out_dir, "instances.json"), "w") as f:
        json.dump(inst, f, separators=(",", ":"))
    with open(os.path.join(out_dir, "grefs(unc).json"), "w") as f:
        json.dump(refs, f, separators=(",", ":"))
    return summary
