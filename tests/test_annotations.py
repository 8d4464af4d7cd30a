"""Annotation files that cannot fool the loaders (issue 14 §2).

Each case is a tiny gRefCOCO / RefCOCO folder (one 64x48 image) written into tmp_path with one defect.
For every malformed field: the loader raises DatasetError naming the file, the entry and what is wrong;
`train.data.check` reports it as a problem (exit 1, never "OK"); `train.evaluate` exits 2 with one line.
The checker and the loader are asserted to agree on every fixture.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import pytest
from PIL import Image

from train.data.check import main as check_main
from train.data.grefcoco import GRefCOCO
from train.data.refcoco import RefCOCO
from train.data.refer_common import DatasetError
from train.data.validate import check_segmentation, FieldError

H, W = 48, 64
FILE = "COCO_train2014_000000000001.jpg"
GOOD_POLY = [10, 10, 30, 10, 30, 30, 10, 30]


def _image() -> np.ndarray:
    """RGB, left half red / right half blue: any rotation or flip is visible."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2] = (255, 0, 0)
    img[:, W // 2:] = (0, 0, 255)
    return img


def make_root(root, anns: List[Dict[str, Any]], refs: Optional[List[Dict[str, Any]]] = None,
              images: Optional[List[Dict[str, Any]]] = None, write_image: bool = True) -> str:
    """gRefCOCO standard layout with annotations `anns` on image 1; by default ref 1 refers to ann 1."""
    root = str(root)
    os.makedirs(os.path.join(root, "grefcoco"), exist_ok=True)
    inst = {"images": images or [{"id": 1, "file_name": FILE, "height": H, "width": W}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": anns}
    if refs is None:
        refs = [{"ref_id": 1, "image_id": 1, "split": "val", "ann_id": [1], "no_target": False,
                 "sentences": [{"sent_id": 10, "sent": "the thing", "raw": "The thing"}], "sent_ids": [10]}]
    with open(os.path.join(root, "grefcoco", "instances.json"), "w") as f:
        json.dump(inst, f)
    with open(os.path.join(root, "grefcoco", "grefs(unc).json"), "w") as f:
        json.dump(refs, f)
    if write_image:
        os.makedirs(os.path.join(root, "images", "train2014"), exist_ok=True)
        Image.fromarray(_image()).save(os.path.join(root, "images", "train2014", FILE), quality=95)
    return root


def ann(seg: Any, ann_id: int = 1, **kw) -> Dict[str, Any]:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": seg, **kw}


def check(root: str, capsys) -> tuple:
    code = check_main(["--dataset", "grefcoco", "--root", root, "--split", "val", "--no-progress"])
    return code, capsys.readouterr().out


def assert_rejected(root: str, capsys, *needles: str) -> str:
    """Loader raises naming the file + needles; the checker fails with the same problem."""
    with pytest.raises(DatasetError) as e:
        GRefCOCO(root, "val")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ("instances.json" if "grefs" not in needles[0] else "grefs(unc).json",) + needles:
        assert needle in msg, (needle, msg)
    code, out = check(root, capsys)
    assert code == 1 and "RESULT: PROBLEMS FOUND" in out and "RESULT: OK" not in out
    for needle in needles:
        assert needle in out, (needle, out)
    return msg


# ------------------------------------------------------------------------------------------------ RLE
@pytest.mark.parametrize("counts,total", [([100, 50], 150), ([1000, 200, 2000], 3200)])
def test_rle_counts_that_do_not_add_up_are_rejected(tmp_path, capsys, counts, total):
    root = make_root(tmp_path, [ann({"size": [H, W], "counts": counts}, ann_id=7)],
                     refs=[{"ref_id": 3, "image_id": 1, "split": "val", "ann_id": [7],
                            "sentences": [{"sent_id": 1, "sent": "x"}]}])
    assert_rejected(root, capsys, "annotation 7", f"add up to {total:,} pixels", f"{H * W:,}")


def test_rle_string_counts_are_checked_too(tmp_path, capsys):
    from pycocotools import mask as mask_utils

    m = np.zeros((H, W), np.uint8)
    m[5:20, 5:30] = 1
    good = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
    short = mask_utils.encode(np.asfortranarray(m[:, :40].copy()))["counts"].decode()  # a 48x40 RLE
    root = make_root(tmp_path, [ann({"size": [H, W], "counts": short})])
    assert_rejected(root, capsys, "annotation 1", "add up to 1,920 pixels")
    root = make_root(tmp_path / "trunc", [ann({"size": [H, W], "counts": good[:-1] + "o"})])  # mid-number
    assert_rejected(root, capsys, "annotation 1", "RLE")
    root = make_root(tmp_path / "ok", [ann({"size": [H, W], "counts": good})])
    np.testing.assert_array_equal(GRefCOCO(root, "val")[0]["mask"], m.astype(bool))


# ------------------------------------------------------------------------------------------- polygons
def test_absurd_polygon_coordinates_are_rejected_before_rasterising(tmp_path, capsys):
    seg = [[-164.1, -221.8, 2.0854e8, 3.5219e8, 226, 236.6, 272, 384.3]]  # the reported one (22 GB)
    root = make_root(tmp_path, [ann(seg, ann_id=5)],
                     refs=[{"ref_id": 2, "image_id": 1, "split": "val", "ann_id": 5,
                            "sentences": [{"sent_id": 1, "sent": "x"}]}])
    assert_rejected(root, capsys, "annotation 5", "far outside the 64x48 image")
    root = make_root(tmp_path / "nan", [ann([[1, 1, float("nan"), 5, 9, 9]])])
    assert_rejected(root, capsys, "annotation 1", "non-finite")


def test_slightly_out_of_image_polygons_are_normal_coco(tmp_path, capsys):
    root = make_root(tmp_path, [ann([[-2, -1.5, W + 3, -1, W + 2, H + 1, -1, H + 2]])])
    mask = GRefCOCO(root, "val")[0]["mask"]
    assert mask.all()  # clipped to the image by pycocotools, as usual
    assert check(root, capsys)[0] == 0


def test_degenerate_polygons_leave_listed_empty_mask_refs(tmp_path, capsys):
    anns = [ann([], ann_id=1), ann([[1, 1, 5, 5]], ann_id=2), ann([GOOD_POLY], ann_id=3)]
    refs = [{"ref_id": r, "image_id": 1, "split": "val", "ann_id": a, "sentences": [{"sent_id": r, "sent": "x"}]}
            for r, a in ((1, [1]), (2, [2]), (3, [1, 3]), (4, [1, 2]))]
    root = make_root(tmp_path, anns, refs)
    ds = GRefCOCO(root, "val")
    assert ds.report["empty_mask_refs"] == [1, 2, 4]  # ref 3 still has ann 3
    assert ds.report["empty_segmentations"] == 2 and ds.report["polygons_dropped"] == 1
    assert not ds[0]["mask"].any() and ds[0]["no_target"] is False and ds[2]["mask"].any()
    code, out = check(root, capsys)
    assert "3 empty-mask refs" in out and "ref_ids [1, 2, 4]" in out and "2 empty segmentations" in out


# --------------------------------------------------------------------------------------- field types
@pytest.mark.parametrize("field,value,needle", [
    ("ref_id", "12", "'ref_id' must be an integer, got str"),
    ("image_id", 1.5, "'image_id' must be an integer"),
    ("ann_id", [True], "'ann_id' must be an integer, got the boolean"),
    ("split", 3, "'split' must be a string"),
    ("no_target", "yes", "'no_target' must be true/false"),
    ("sentences", [{"sent_id": 1, "sent": ["the", "thing"]}], "sentence 0 'sent' must be a string"),
    ("sentences", [{"sent_id": "a", "sent": "x"}], "sentence 0 'sent_id' must be an integer"),
])
def test_wrongly_typed_ref_fields_are_named(tmp_path, capsys, field, value, needle):
    ref = {"ref_id": 1, "image_id": 1, "split": "val", "ann_id": [1], "sentences": [{"sent_id": 1, "sent": "x"}]}
    ref[field] = value
    root = make_root(tmp_path, [ann([GOOD_POLY])], refs=[ref])
    with pytest.raises(DatasetError) as e:
        GRefCOCO(root, "val")
    assert "grefs(unc).json" in str(e.value) and "ref #0" in str(e.value) and needle in str(e.value)
    code, out = check(root, capsys)
    assert code == 1 and needle in out


@pytest.mark.parametrize("where,field,value,needle", [
    ("annotations", "iscrowd", "0", "'iscrowd' must be true/false or 0/1"),
    ("annotations", "image_id", "1", "'image_id' must be an integer"),
    ("annotations", "id", 1.25, "'id' must be an integer"),
    ("annotations", "category_id", [1], "'category_id' must be an integer"),
    ("images", "height", "48", "'height' must be an integer"),
    ("images", "width", 0, "non-positive size"),
    ("images", "file_name", None, "'file_name' must be a string"),
])
def test_wrongly_typed_instances_fields_are_named(tmp_path, capsys, where, field, value, needle):
    a = ann([GOOD_POLY])
    im = {"id": 1, "file_name": FILE, "height": H, "width": W}
    (a if where == "annotations" else im)[field] = value
    root = make_root(tmp_path, [a], images=[im])
    with pytest.raises(DatasetError) as e:
        GRefCOCO(root, "val")
    assert "instances.json" in str(e.value) and f"{where} entry #0" in str(e.value) and needle in str(e.value)
    code, out = check(root, capsys)
    assert code == 1 and needle in out


def test_check_segmentation_unit():
    assert check_segmentation([GOOD_POLY], H, W).polygons == 1
    assert check_segmentation({"size": [H, W], "counts": [H * W]}, H, W).empty
    for bad in ([[1, 2, 3]], [["a", 1, 2, 3, 4, 5]], {"size": [H], "counts": [1]}, {"size": [H, W], "counts": 5},
                {"size": [H, W], "counts": [H * W + 1, -1]}, "x"):
        with pytest.raises(FieldError):
            check_segmentation(bad, H, W)


# ------------------------------------------------------------------------------------- Python-2 pickle
def _py2_pickle(obj: Any) -> bytes:
    """Protocol-2 pickle as Python 2 writes it: `bytes` become py2 `str` (BINSTRING), `str` unicode."""
    out = bytearray(b"\x80\x02")

    def emit(o: Any) -> None:
        if isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.extend(b"T" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, str):
            raw = o.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(raw)) + raw)
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        else:  # pragma: no cover - test helper
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _refcoco_py2(root: str, sent: bytes) -> str:
    make_root(root, [ann([GOOD_POLY])])
    d = os.path.join(root, "refcoco")
    os.makedirs(d, exist_ok=True)
    os.replace(os.path.join(root, "grefcoco", "instances.json"), os.path.join(d, "instances.json"))
    refs = [{b"ref_id": 1, b"image_id": 1, b"split": b"val", b"ann_id": 1,
             b"sentences": [{b"sent_id": 1, b"sent": sent, b"raw": sent}], b"sent_ids": [1]}]
    with open(os.path.join(d, "refs(unc).p"), "wb") as f:
        f.write(_py2_pickle(refs))
    with open(os.path.join(d, "refs(unc).p"), "rb") as f:
        with pytest.raises(UnicodeDecodeError):
            pickle.load(f)  # what a plain Python-3 load of such a file does
    return root


def test_py2_pickle_strings_decode_as_utf8_first(tmp_path, recwarn):
    root = _refcoco_py2(str(tmp_path / "u"), "the café chair".encode("utf-8"))
    ds = RefCOCO(root, "refcoco", "unc", "val")
    assert ds[0]["sentence"] == "the café chair"
    assert not [w for w in recwarn if "Latin-1" in str(w.message)]


def test_py2_pickle_latin1_fallback_warns(tmp_path, capsys):
    root = _refcoco_py2(str(tmp_path / "l"), "the café chair".encode("latin-1"))
    with pytest.warns(UserWarning, match="decoded as Latin-1"):
        ds = RefCOCO(root, "refcoco", "unc", "val")
    assert ds[0]["sentence"] == "the café chair"
    code = check_main(["--dataset", "refcoco", "--root", root, "--split", "val", "--no-progress"])
    assert "NOTE:" in capsys.readouterr().out and code == 0


# --------------------------------------------------------------------------------------------- images
def _save_with_orientation(path: str, rgb: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif)


def test_exif_orientation_is_ignored_when_the_stored_size_matches(tmp_path, capsys):
    root = make_root(tmp_path, [ann([GOOD_POLY])])
    path = os.path.join(root, "images", "train2014", FILE)
    _save_with_orientation(path, _image(), 6)  # stored 64x48; the tag says "rotate 90° to 48x64"
    assert cv2.imread(path).shape[:2] == (W, H)  # what a plain imread would give: rotated
    s = GRefCOCO(root, "val")[0]
    assert s["image"].shape == (H, W, 3)
    assert s["image"][H // 2, 2, 0] > 200 and s["image"][H // 2, W - 3, 2] > 200  # red left, blue right
    assert check(root, capsys)[0] == 0
    code = check_main(["--dataset", "grefcoco", "--root", root, "--split", "val", "--decode", "--no-progress"])
    assert code == 0, capsys.readouterr().out


def test_one_bad_image_is_listed_and_never_aborts_the_split(tmp_path, capsys):
    images = [{"id": 1, "file_name": FILE, "height": H, "width": W},
              {"id": 2, "file_name": "wrong.jpg", "height": H, "width": W}]
    anns = [ann([GOOD_POLY]), dict(ann([GOOD_POLY], ann_id=2), image_id=2)]
    refs = [{"ref_id": r, "image_id": r, "split": "val", "ann_id": [r], "sentences": [{"sent_id": r, "sent": "x"}]}
            for r in (1, 2)]
    root = make_root(tmp_path, anns, refs, images=images)
    wrong = os.path.join(root, "images", "train2014", "wrong.jpg")
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(wrong)  # neither 64x48 nor 48x64
    with pytest.warns(UserWarning, match="1 image"):
        ds = GRefCOCO(root, "val")
    assert len(ds) == 1 and ds[0]["ref_id"] == 1 and ds.report["refs_on_bad_images"] == [2]
    assert "stored size 20x30" in ds.report["bad_images"][0]
    code, out = check(root, capsys)
    assert code == 1 and "stored size 20x30" in out and "ref_ids [2]" in out


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_exits_2_with_one_line_on_malformed_annotations(tmp_path, capsys):
    import torch

    from mabp.registry import build_mabp, save_checkpoint
    from train.evaluate import main

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_mabp("tiny"), tmp_path / "tiny.pt")
    root = make_root(tmp_path / "d", [ann({"size": [H, W], "counts": [100, 50]})])
    code = main(["--checkpoint", str(ckpt), "--dataset", "grefcoco", "--split", "val", "--root", root,
                 "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "annotation 1" in err[0] and "add up to 150" in err[0]


def test_paper_row_only_beside_the_real_grefcoco_split(tmp_path, capsys, monkeypatch):
    """Any gRefCOCO-format folder loads, but the published row is printed only when the split has the
    published gRefCOCO size (val: 1,500 images); a generated folder gets a note instead."""
    import torch

    from mabp.registry import build_mabp, save_checkpoint
    from train.data import check as check_mod
    from train.evaluate import main

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_mabp("tiny"), tmp_path / "tiny.pt")
    root = make_root(tmp_path / "d", [ann([GOOD_POLY])])
    args = ["--checkpoint", str(ckpt), "--dataset", "grefcoco", "--split", "val", "--root", root, "--no-progress",
            "--out", str(tmp_path / "o")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| paper |" not in out and "where the published grefcoco val has 1,500" in out
    sizes = {k: dict(v) for k, v in check_mod.KNOWN_SIZES.items()}
    sizes[("grefcoco", "unc")]["val"] = {"refs": None, "expressions": None, "images": 1}  # "the real one"
    monkeypatch.setattr(check_mod, "KNOWN_SIZES", sizes)
    assert main(args) == 0
    assert "| paper |" in capsys.readouterr().out
