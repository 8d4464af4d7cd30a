"""Tests for SynthGRES (train/data/synthgres).

The central check re-derives every sample's target set *independently*: a small parser in this file
reads the sentence back into a meaning (using only the literal vocabulary below, not the generator's
code) and evaluates it on the scene's object attributes and centres with the spec's pinned spatial
definitions.  Agreement means the sentence, its determiner counts and the target set all say the
same thing.  Everything runs offline, deterministically, in well under a minute on one core.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.data.synthgres import (HELD_OUT_PAIRS, VOCABULARY, SynthGRES, describe_scene_expressions,
                                  export_split, generate_sample, mask_to_polygons, random_scene)
from train.data.synthgres.vocab import COLOUR_RGB

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# An independent reader of SynthGRES sentences
# ------------------------------------------------------------------------------------------------

COLOURS = {"red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"}
SHAPES = {"circle", "square", "triangle", "star", "heart", "diamond", "cross", "ring"}
PLURALS = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star",
           "hearts": "heart", "diamonds": "diamond", "crosses": "cross", "rings": "ring", "shapes": None}
SIZE_WORD = {"small": "small", "big": "large", "large": "large"}
REGIONS = {  # surface phrase -> (x side, y side)
    "on the left half": ("left", None), "in the left half": ("left", None),
    "on the right half": ("right", None), "in the right half": ("right", None),
    "in the top half": (None, "top"), "in the upper half": (None, "top"),
    "in the bottom half": (None, "bottom"), "in the lower half": (None, "bottom"),
    "in the top left corner": ("left", "top"), "in the top right corner": ("right", "top"),
    "in the bottom left corner": ("left", "bottom"), "in the bottom right corner": ("right", "bottom"),
}
PRE_EXTREME = {"leftmost": "left", "rightmost": "right", "top": "top", "topmost": "top", "highest": "top",
               "bottom": "bottom", "lowest": "bottom"}
POST_EXTREME = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom"}
RELATIONS = {"to the left of": "left", "left of": "left", "to the right of": "right", "right of": "right",
             "above": "above", "below": "below", "next to": "next", "beside": "next"}


class Reading:
    """Result of reading a sentence: target set, parsed type, head attributes."""

    def __init__(self, targets: set[int], typ: str, head: dict[str, str | None]):
        self.targets, self.typ, self.head = targets, typ, head


def _core(words: list[str]) -> tuple[dict[str, str | None], bool]:
    """[size] [colour] noun -> (attributes, plural)."""
    attrs: dict[str, str | None] = {"shape": None, "colour": None, "size": None}
    i = 0
    if i < len(words) and words[i] in SIZE_WORD:
        attrs["size"] = SIZE_WORD[words[i]]
        i += 1
    if i < len(words) and words[i] in COLOURS:
        attrs["colour"] = words[i]
        i += 1
    assert i == len(words) - 1, f"bad noun phrase {words}"
    noun = words[i]
    if noun in SHAPES or noun == "shape":
        attrs["shape"] = None if noun == "shape" else noun
        return attrs, False
    assert noun in PLURALS, f"unknown noun {noun!r}"
    attrs["shape"] = PLURALS[noun]
    return attrs, True


def _match(objs, attrs) -> set[int]:
    return {o.index for o in objs if all(v is None or getattr(o, k) == v for k, v in attrs.items())}


def _det(words: list[str]) -> tuple[str, list[str]]:
    """Split a determiner off: returns (det, rest)."""
    for det in (["all", "the"], ["the", "two"], ["the", "three"], ["the", "four"], ["both"], ["all"], ["every"],
                ["the"]):
        if words[:len(det)] == det:
            return " ".join(det), words[len(det):]
    raise AssertionError(f"no determiner in {words}")


def _count_ok(det: str, plural: bool, n: int, no_target: bool) -> bool:
    """Determiner/number agreement with the evaluated count."""
    if no_target:
        return n == 0 and det in ("the", "all the")
    if det == "the":
        return n == 1 if not plural else n >= 2
    if det in ("all", "all the", "every"):
        return n >= 2
    return n == {"both": 2, "the two": 2, "the three": 3, "the four": 4}[det]


class Reader:
    """Evaluates SynthGRES sentences on a scene with the spec's pinned definitions."""

    def __init__(self, scene):
        self.s = scene
        self.objs = scene.objects
        self.m = 0.1 * min(scene.width, scene.height)

    # spatial primitives ------------------------------------------------------------------------
    def extreme(self, cands: set[int], side: str) -> set[int]:
        if not cands:
            return set()
        key = {"left": lambda o: o.cx, "right": lambda o: -o.cx, "top": lambda o: o.cy,
               "bottom": lambda o: -o.cy}[side]
        ordered = sorted((self.objs[i] for i in cands), key=key)
        if len(ordered) >= 2:
            assert key(ordered[1]) - key(ordered[0]) >= self.m, "extreme without margin m"
        return {ordered[0].index}

    def in_region(self, o, xs: str | None, ys: str | None) -> bool:
        W, H, h = self.s.width, self.s.height, self.m / 2
        ok = True
        if xs == "left":
            ok &= o.cx <= W / 2 - h
        if xs == "right":
            ok &= o.cx >= W / 2 + h
        if ys == "top":
            ok &= o.cy <= H / 2 - h
        if ys == "bottom":
            ok &= o.cy >= H / 2 + h
        return ok

    def rel(self, o, b, rel: str) -> bool:
        dx, dy = o.cx - b.cx, o.cy - b.cy
        if rel == "left":
            return o.cx < b.cx - self.m and abs(dx) > abs(dy)
        if rel == "right":
            return o.cx > b.cx + self.m and abs(dx) > abs(dy)
        if rel == "above":
            return o.cy < b.cy - self.m and abs(dy) > abs(dx)
        if rel == "below":
            return o.cy > b.cy + self.m and abs(dy) > abs(dx)
        raise AssertionError(rel)

    # phrases -----------------------------------------------------------------------------------
    def simple_np(self, words: list[str], no_target: bool) -> tuple[set[int], str, dict]:
        """DET CORE, an extreme phrase, or CORE + REGION; returns (set, type, head attrs)."""
        text = " ".join(words)
        for phrase, (xs, ys) in REGIONS.items():
            if text.endswith(" " + phrase):
                det, rest = _det(text[: -len(phrase) - 1].split())
                attrs, plural = _core(rest)
                cands = _match(self.objs, attrs)
                got = {i for i in cands if self.in_region(self.objs[i], xs, ys)}
                assert _count_ok(det, plural, len(got), no_target), (text, det, len(got))
                return got, ("group" if plural else "position"), attrs
        for phrase, side in POST_EXTREME.items():
            if text.endswith(" " + phrase) and words[0] == "the":
                attrs, plural = _core(text[4: -len(phrase) - 1].split())
                assert not plural
                cands = _match(self.objs, attrs)
                assert no_target or len(cands) >= 2, "extreme among fewer than two candidates"
                return self.extreme(cands, side), "position", attrs
        if words[0] == "the" and len(words) > 2 and words[1] in PRE_EXTREME:
            attrs, plural = _core(words[2:])
            assert not plural
            cands = _match(self.objs, attrs)
            assert no_target or len(cands) >= 2, "extreme among fewer than two candidates"
            return self.extreme(cands, PRE_EXTREME[words[1]]), "position", attrs
        det, rest = _det(words)
        attrs, plural = _core(rest)
        assert (det == "every") != plural or det == "the", f"number mismatch in {text!r}"
        got = _match(self.objs, attrs)
        assert _count_ok(det, plural, len(got), no_target), (text, det, len(got))
        return got, "attribute", attrs

    def read(self, sentence: str, no_target: bool) -> Reading:
        words = sentence.split()
        if " and " in sentence:
            a, b = sentence.split(" and ")
            sa, _, _ = self.simple_np(a.split(), False)
            sb, _, _ = self.simple_np(b.split(), False)
            assert sa and sb and not (sa & sb), "conjunction parts must be non-empty and disjoint"
            return Reading(sa | sb, "conjunction", {})
        for conj in (" except ", " but "):
            if conj in sentence:
                base_text, excl_text = sentence.split(conj)
                bw = base_text.split()
                if bw == ["everything"]:
                    base, battrs = {o.index for o in self.objs}, {"shape": None, "colour": None, "size": None}
                else:
                    det, rest = _det(bw)
                    battrs, plural = _core(rest)
                    assert det in ("all", "all the", "every") and plural == (det != "every")
                    base = _match(self.objs, battrs)
                assert len(base) >= 2, "'all' / 'every' need at least two"
                ew = excl_text.split()
                assert ew[0] == "the"
                if ew[-1] in ("one", "ones"):
                    if len(ew) == 3 and ew[1] in PRE_EXTREME and ew[-1] == "one":
                        excl = self.extreme(base, PRE_EXTREME[ew[1]])
                    else:
                        extra, _ = _core(ew[1:-1] + ["shape"])
                        excl = base & _match(self.objs, extra)
                        assert (len(excl) == 1) == (ew[-1] == "one"), "one/ones must agree with the count"
                else:
                    extra, plural = _core(ew[1:])
                    excl = base & _match(self.objs, extra)
                    assert (len(excl) >= 2) == plural, "number of the excluded phrase"
                assert excl and excl < base, "excluded part must be a non-empty proper subset"
                got = base - excl
                assert not (got & excl)
                return Reading(got, "exclusion", battrs)
        for phrase in sorted(RELATIONS, key=len, reverse=True):
            key = f" {phrase} the "
            if key in sentence:
                head_text, anchor_text = sentence.split(key)
                aattrs, aplural = _core(anchor_text.split())
                assert not aplural
                anchors = _match(self.objs, aattrs)
                assert len(anchors) == 1, "anchor must be unique"
                b = self.objs[next(iter(anchors))]
                det, rest = _det(head_text.split())
                attrs, plural = _core(rest)
                cands = _match(self.objs, attrs) - {b.index}
                rel = RELATIONS[phrase]
                if rel == "next":  # the nearest object to the anchor, if the noun phrase fits it
                    assert not plural and det == "the"
                    d = sorted((math.hypot(o.cx - b.cx, o.cy - b.cy), o.index) for o in self.objs if o is not b)
                    assert len(d) == 1 or d[1][0] - d[0][0] >= self.m, "next to without margin"
                    got = {d[0][1]} & cands
                else:
                    got = {i for i in cands if self.rel(self.objs[i], b, rel)}
                assert _count_ok(det, plural, len(got), no_target), (sentence, det, len(got))
                return Reading(got, "relation", attrs)
        if words[0] == "everything":
            rest = " ".join(words[1:])
            if rest in COLOURS:
                attrs = {"shape": None, "colour": rest, "size": None}
                return Reading(_match(self.objs, attrs), "group", attrs)
            if rest in SIZE_WORD:
                attrs = {"shape": None, "colour": None, "size": SIZE_WORD[rest]}
                return Reading(_match(self.objs, attrs), "group", attrs)
            xs, ys = REGIONS[rest]
            got = {o.index for o in self.objs if self.in_region(o, xs, ys)}
            return Reading(got, "group", {"shape": None, "colour": None, "size": None})
        got, typ, attrs = self.simple_np(words, no_target)
        return Reading(got, typ, attrs)


def check_sample(ds: SynthGRES, k: int) -> dict:
    """All per-sample invariants; returns the sample."""
    s = ds[k]
    image_index, slot = ds.locate(ds.epoch * len(ds) + k)
    scene = ds.scene(image_index)
    H, W = ds.size
    assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8
    assert s["mask"].shape == (H, W) and s["mask"].dtype == bool
    assert isinstance(s["sentence"], str) and s["sentence"] == s["sentence"].lower()
    words = s["sentence"].split()
    assert 1 <= len(words) <= 16, s["sentence"]
    assert set(words) <= VOCABULARY, set(words) - VOCABULARY
    assert s["no_target"] == (len(s["target_ids"]) == 0)
    assert s["mask"].any() == (not s["no_target"])
    union = np.zeros((H, W), bool)
    for i in s["target_ids"]:
        union |= scene.objects[i].visible_mask
    assert np.array_equal(union, s["mask"])
    assert s["split"] == ds.split and s["image_id"] == ds.image_id(image_index)
    assert s["ref_id"] == s["sent_id"]
    tags = s["tags"]
    assert set(tags) == {"target", "type", "nt_kind"}

    reading = Reader(scene).read(s["sentence"], s["no_target"])
    assert reading.targets == set(s["target_ids"]), (s["sentence"], reading.targets, s["target_ids"])
    assert reading.typ == tags["type"], (s["sentence"], reading.typ, tags["type"])
    shapes = {scene.objects[i].shape for i in s["target_ids"]}
    expected_target = ("no-target" if s["no_target"] else "single" if len(shapes) == 1 and len(s["target_ids"]) == 1
                       else "multi-same" if len(shapes) == 1 else "multi-mixed")
    assert tags["target"] == expected_target
    if s["no_target"]:
        head = {k2: v for k2, v in reading.head.items() if v is not None}
        matches = _match(scene.objects, head)
        present = {a: {getattr(o, a) for o in scene.objects} for a in ("shape", "colour", "size")}
        all_present = all(v in present[a] for a, v in head.items())
        if tags["nt_kind"] == "absent-combination":
            assert not matches and all_present and len(head) >= 2, s["sentence"]
        elif tags["nt_kind"] == "absent-attribute":
            assert not all_present, s["sentence"]
        else:
            assert tags["nt_kind"] == "spatial-contradiction" and matches, s["sentence"]
    else:
        assert tags["nt_kind"] is None
    return s


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

def _digest(s: dict) -> tuple:
    return (s["image"].tobytes(), s["mask"].tobytes(), s["sentence"], tuple(s["target_ids"]), s["image_id"],
            s["ref_id"], tuple(sorted(s["tags"].items())))


def test_determinism_across_instances_orders_and_splits():
    a, b = SynthGRES("val"), SynthGRES("val", cache_size=1)
    ks = [0, 1, 7, 95, 96, 500, 1999]
    forward = {k: _digest(a[k]) for k in ks}
    backward = {k: _digest(b[k]) for k in reversed(ks)}
    assert forward == backward
    assert _digest(generate_sample("val", 500)) == forward[500]
    # Different splits (and a different base seed) give different data.
    others = [SynthGRES(sp)[0] for sp in ("train", "testA", "testB")] + [SynthGRES("val", seed=1)[0]]
    for o in others:
        assert not np.array_equal(o["image"], a[0]["image"])
    # Train epochs walk along the unlimited stream.
    t = SynthGRES("train", length=50)
    t.set_epoch(3)
    assert _digest(t[5]) == _digest(SynthGRES("train").sample(155))


def test_determinism_in_another_process():
    ks = [3, 42, 777]
    code = ("import hashlib, sys; from train.data.synthgres import SynthGRES\n"
            "ds = SynthGRES('testB')\n"
            "for k in map(int, sys.argv[1:]):\n"
            "    s = ds[k]\n"
            "    print(hashlib.sha1(s['image'].tobytes() + s['mask'].tobytes() + s['sentence'].encode()).hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", code, *map(str, ks)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    import hashlib

    ds = SynthGRES("testB")
    mine = [hashlib.sha1(ds[k]["image"].tobytes() + ds[k]["mask"].tobytes() + ds[k]["sentence"].encode()).hexdigest()
            for k in ks]
    assert out == mine


def test_index_layout_and_lengths():
    ds = SynthGRES("val")
    assert len(ds) == 2000 and len(SynthGRES("train")) == 20000 and len(SynthGRES("train", length=7)) == 7
    with pytest.raises(IndexError):
        ds[2000]
    with pytest.raises(ValueError):
        SynthGRES("val", length=2001)
    with pytest.raises(ValueError):
        SynthGRES("nope")
    # Consecutive samples share scenes; each image carries 4-8 expressions; the mapping is a bijection.
    seen = []
    for k in range(400):
        seen.append(ds.locate(k))
    assert len(set(seen)) == 400
    per_image = Counter(i for i, _ in seen)
    full = [c for i, c in per_image.items() if i < max(per_image)]
    assert all(4 <= c <= 8 for c in full) and len(set(full)) > 1
    for i in per_image:
        assert ds.locate(ds.first_index(i)) == (i, 0)
        assert ds.num_expressions(i) == len(ds.expressions(i))
    # A shuffled order that keeps images together (cache-friendly DataLoader sampler).
    order = SynthGRES("val", length=300).grouped_order(seed=1)
    assert sorted(order) == list(range(300)) and order != list(range(300))
    images = [ds.locate(k)[0] for k in order]
    assert sum(a != b for a, b in zip(images, images[1:])) == len(set(images)) - 1


@pytest.mark.parametrize("split", ["train", "val", "testA", "testB"])
def test_every_sample_checked_independently(split):
    ds = SynthGRES(split)
    for k in range(150):
        check_sample(ds, k)


def test_scene_invariants():
    for split in ("train", "testB"):
        ds = SynthGRES(split)
        for i in range(25):
            sc = ds.scene(i)
            H, W = sc.height, sc.width
            covered = np.zeros((H, W), bool)
            assert 0 <= sc.n_blobs <= 3
            for o in sorted(sc.objects, key=lambda o: -o.z):
                assert np.array_equal(o.visible_mask, o.full_mask & ~covered)  # z-order occlusion
                covered |= o.full_mask
                assert o.visible_mask.sum() >= 0.4 * o.full_mask.sum()
                if o.shape in ("square", "diamond"):
                    assert abs(o.rotation) <= 0.5
                r = o.radius / min(H, W)
                assert (0.05 <= r <= 0.08) if o.size == "small" else (0.11 <= r <= 0.16)
                # The rendered colour of the visible pixels is nearest to the object's colour name.
                mean = sc.image[o.visible_mask].mean(0)
                nearest = min(COLOUR_RGB, key=lambda c: np.sum((np.array(COLOUR_RGB[c]) - mean) ** 2))
                assert nearest == o.colour
            for a in sc.objects:
                for b in sc.objects:
                    if a.index < b.index:
                        inter = (a.full_mask & b.full_mask).sum()
                        assert inter < 0.25 * min(a.full_mask.sum(), b.full_mask.sum())
            assert sorted(o.z for o in sc.objects) == list(range(len(sc.objects)))
            assert [o.index for o in sc.objects] == list(range(len(sc.objects)))


def test_mixture_shares():
    ds = SynthGRES("val")
    tags = [ds[k]["tags"] for k in range(420)]
    n = len(tags)
    cats = Counter(t["target"] for t in tags)
    multi = cats["multi-same"] + cats["multi-mixed"]
    assert abs(cats["no-target"] / n - 0.15) < 0.06, cats
    assert abs(cats["single"] / n - 0.55) < 0.08, cats
    assert abs(multi / n - 0.30) < 0.07, cats
    assert cats["multi-mixed"] / multi >= 0.4, cats
    kinds = Counter(t["nt_kind"] for t in tags if t["nt_kind"])
    nt = sum(kinds.values())
    assert abs(kinds["absent-combination"] / nt - 0.5) < 0.17, kinds
    assert abs(kinds["absent-attribute"] / nt - 0.3) < 0.17, kinds
    assert abs(kinds["spatial-contradiction"] / nt - 0.2) < 0.15, kinds
    types = Counter(t["type"] for t in tags)
    assert set(types) == {"attribute", "position", "relation", "conjunction", "exclusion", "group"}
    # testB carries more relation / conjunction / exclusion expressions than val.
    tb = Counter(SynthGRES("testB")[k]["tags"]["type"] for k in range(420))
    hard = ("relation", "conjunction", "exclusion")
    assert sum(tb[t] for t in hard) > sum(types[t] for t in hard) * 1.2, (tb, types)


def test_held_out_pairs_and_object_counts():
    ta, tb = SynthGRES("testA"), SynthGRES("testB")
    for i in range(300):
        assert any(o.pair in HELD_OUT_PAIRS for o in ta.scene(i).objects)
        assert 2 <= len(ta.scene(i).objects) <= 6
        assert 5 <= len(tb.scene(i).objects) <= 8
    for split in ("train", "val"):
        ds = SynthGRES(split)
        for i in range(300):
            objs = ds.scene(i).objects
            assert 2 <= len(objs) <= 6
            assert not any(o.pair in HELD_OUT_PAIRS for o in objs)
    # testA expressions are mostly *about* held-out pairs (targets or mentions).
    about = 0
    for k in range(200):
        s = ta[k]
        scene = ta.scene(ta.locate(k)[0])
        mentioned = any(f"{c} {sh}" in s["sentence"] for c, sh in HELD_OUT_PAIRS)
        about += mentioned or any(scene.objects[i].pair in HELD_OUT_PAIRS for i in s["target_ids"])
    assert about / 200 >= 0.85


def test_non_square_canvas():
    for size in ((200, 360), (400, 256)):
        ds = SynthGRES("val", size=size)
        for k in range(60):
            s = check_sample(ds, k)
            assert s["image"].shape[:2] == size
        sc = ds.scene(0)
        for o in sc.objects:
            ys, xs = np.nonzero(o.full_mask)
            assert 0 <= xs.min() and xs.max() < size[1] and ys.max() < size[0]


def test_random_scene_for_app():
    img, scene, sugg = random_scene(1234)
    img2, _, sugg2 = random_scene(1234)
    assert np.array_equal(img, img2) and sugg == sugg2
    assert img.shape == (320, 320, 3) and len(sugg) == 6
    reader = Reader(scene)
    for sentence, ids, tags in sugg:
        assert reader.read(sentence, not ids).targets == set(ids)
        assert tags["type"] in {"attribute", "position", "relation", "conjunction", "exclusion", "group"}
    more = describe_scene_expressions(scene, np.random.default_rng(5), 10)
    assert len(more) == 10 and len({m[0] for m in more}) == 10


def test_polygons_handle_holes_and_pieces():
    from pycocotools import mask as mu

    m = np.zeros((60, 80), np.uint8)
    import cv2

    cv2.circle(m, (30, 30), 20, 1, -1)
    cv2.circle(m, (30, 30), 11, 0, -1)  # ring: a hole
    m[5:9, 60:75] = 1  # a second piece
    m[40:42, 70:72] = 1  # a tiny third piece
    polys = mask_to_polygons(m)
    assert len(polys) >= 4 and all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
    back = mu.decode(mu.frPyObjects(polys, 60, 80)).max(2)
    assert np.array_equal(back.astype(bool), m.astype(bool))


def _decode(seg, h, w) -> np.ndarray:
    from pycocotools import mask as mu

    if isinstance(seg, list):  # polygons, as in ReLA's grefer: frPyObjects, then merge the pieces
        assert all(len(p) >= 6 for p in seg)
        return mu.decode(mu.frPyObjects(seg, h, w)).sum(axis=2) > 0
    return mu.decode({"size": seg["size"], "counts": seg["counts"].encode()}) > 0


@pytest.mark.parametrize("rle", [False, True])
def test_export_round_trip(tmp_path, rle):
    out = tmp_path / "grefcoco"
    num = 60
    summary = export_split("val", str(out), num=num, rle=rle, progress=False)
    export_split("testB", str(out), num=20, rle=rle, progress=False)  # a second split merges in
    inst = json.loads((out / "instances.json").read_text())
    refs = json.loads((out / "grefs(unc).json").read_text())
    assert summary["refs"] == num
    assert Counter(r["split"] for r in refs) == {"val": num, "testB": 20}
    assert {c["name"] for c in inst["categories"]} == SHAPES
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    for im in images.values():
        assert (out / "images" / im["file_name"]).exists()

    ds = SynthGRES("val")
    for image_index in range(ds.locate(num - 1)[0] + 1):
        scene = ds.scene(image_index)
        for o in scene.objects:
            a = anns[ds.image_id(image_index) * 10 + o.index]
            assert a["iscrowd"] == 0 and a["area"] == int(o.visible_mask.sum())
            got = _decode(a["segmentation"], scene.height, scene.width)
            iou = (got & o.visible_mask).sum() / (got | o.visible_mask).sum()
            assert iou >= 0.97, iou
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(o.visible_mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    by_id = {r["ref_id"]: r for r in refs}
    for k in range(num):
        s = ds[k]
        r = by_id[s["ref_id"]]
        assert r["image_id"] == s["image_id"] and r["no_target"] == s["no_target"]
        assert r["sentences"][0]["sent"] == s["sentence"] == r["sentences"][0]["raw"]
        assert r["sentences"][0]["tokens"] == s["sentence"].split() and r["sent_ids"] == [s["sent_id"]]
        assert r["file_name"] == images[r["image_id"]]["file_name"]
        assert r["synthgres_tags"] == s["tags"]
        im = images[r["image_id"]]
        if r["no_target"]:
            assert r["ann_id"] == [-1]
            continue
        mask = np.zeros((im["height"], im["width"]), bool)
        for aid in r["ann_id"]:
            mask |= _decode(anns[aid]["segmentation"], im["height"], im["width"])
        assert (mask & s["mask"]).sum() / (mask | s["mask"]).sum() >= 0.97
