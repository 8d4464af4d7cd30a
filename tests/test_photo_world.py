"""Tests for the SynthGRES photo world (README, "The SynthGRES photo world").

No Debian package is needed: a fixture writes tiny RGBA cut-outs with caption files into a temporary
folder with the real tuxpaint layout (<category>/<sub>/NAME.png + NAME.txt), a background photo, and
a manifest of facts about them.  The central check reads every sentence back with an independent
reader that knows only this file's fixture table (nouns, plurals, taxonomy, colours) and the spec's
pinned spatial definitions; it recomputes sizes and centres from the masks, not from the generator's
fields.  One extra test runs on the real packages when they are installed (skipped otherwise).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from train.data.synthgres import PhotoWorldUnavailable, SynthGRES, export_split, random_scene
from train.data.synthgres.photo import PhotoAssets, load_manifest, plural_of

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# Fixture world: (path, noun, plural, groups, top, colour, colour_shares, split, photographic, rgb, rgb2)
# rgb2 (optional) paints the right half in a second colour (a half-red rooster / apple).
# ------------------------------------------------------------------------------------------------
RED, GREEN, YELLOW, BLUE = (220, 30, 30), (40, 170, 50), (240, 220, 30), (40, 70, 220)
BROWN, GREY = (110, 85, 60), (128, 128, 128)
TABLE = [
    ("animals/mammals/pig.png", "pig", "pigs", ["animal"], "animals", None, {}, "train", True, BROWN, None),
    ("animals/mammals/pig_2.png", "pig", "pigs", ["animal"], "animals", None, {}, "train", True, GREY, None),
    ("animals/mammals/pig_3.png", "pig", "pigs", ["animal"], "animals", None, {}, "testA", True, BROWN, None),
    ("animals/mammals/sheep.png", "sheep", "sheep", ["animal"], "animals", None, {}, "train", True, GREY, None),
    ("animals/mammals/sheep_2.png", "sheep", "sheep", ["animal"], "animals", None, {}, "testA", True, GREY, None),
    ("animals/mammals/horse.png", "horse", "horses", ["animal"], "animals", None, {}, "train", True, BROWN, None),
    ("animals/birds/duck.png", "duck", "ducks", ["animal", "bird"], "animals", None, {}, "train", True, GREY, None),
    ("animals/birds/rooster.png", "chicken", "chickens", ["animal", "bird"], "animals", None, {"red": 0.5},
     "train", True, GREY, RED),
    ("animals/fish/fish.png", "fish", "fish", ["animal"], "animals", "blue", {"blue": 1.0}, "train", True, BLUE, None),
    ("animals/fish/seahorse.png", "seahorse", "seahorses", ["animal", "fish"], "animals", "yellow",
     {"yellow": 1.0}, "train", True, YELLOW, None),
    ("food/fruit/apple_red.png", "apple", "apples", ["fruit"], "food", "red", {"red": 1.0}, "train", True, RED, None),
    ("food/fruit/apple_green.png", "apple", "apples", ["fruit"], "food", "green", {"green": 1.0}, "testA", True,
     GREEN, None),
    ("food/fruit/apple_fuji.png", "apple", "apples", ["fruit"], "food", None, {"red": 0.5}, "train", True, GREY, RED),
    ("food/fruit/banana.png", "banana", "bananas", ["fruit"], "food", "yellow", {"yellow": 1.0}, "train", True,
     YELLOW, None),
    ("food/fruit/grapes.png", "grapes", "grapes", ["fruit"], "food", None, {}, "train", True, BROWN, None),
    ("vehicles/auto/sedan.png", "car", "cars", ["vehicle"], "vehicles", "blue", {"blue": 1.0}, "train", True, BLUE, None),
    ("vehicles/auto/sportscar.png", "car", "cars", ["vehicle"], "vehicles", "red", {"red": 1.0}, "train", True, RED, None),
    ("vehicles/masstransit/cartoon/bus.png", "bus", "buses", ["vehicle"], "vehicles", "green", {"green": 1.0},
     "train", False, GREEN, None),
    ("hobbies/kite.svg", "kite", "kites", [], "hobbies", "red", {"red": 1.0}, "train", False, RED, None),
]
NOUN_OF_PLURAL = {r[2]: r[1] for r in TABLE}
NOUNS = {r[1] for r in TABLE}
GROUPS = {g for r in TABLE for g in r[3]}
GROUP_PLURAL = {"animal": "animals", "bird": "birds", "fish": "fish", "fruit": "fruits", "vehicle": "vehicles"}
CATEGORY_OF = {**{n: n for n in NOUNS}, **{p: n for p, n in NOUN_OF_PLURAL.items()},
               **{g: g for g in GROUPS}, **{p: g for g, p in GROUP_PLURAL.items()}}
PLURAL_WORDS = set(NOUN_OF_PLURAL) | set(GROUP_PLURAL.values()) | {"objects"}
COLOURS = {"red", "orange", "yellow", "green", "blue", "purple", "pink"}
SIZE_WORD = {"small": "small", "big": "large", "large": "large"}
REGIONS = {
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


def _stamp_image(rgb, rgb2, k: int) -> np.ndarray:
    """A small RGBA cut-out: an anti-aliased ellipse (soft alpha edge) on a transparent margin."""
    h, w = 40 + 4 * (k % 3), 52 - 3 * (k % 4)
    img = np.zeros((h + 12, w + 12, 4), np.uint8)
    alpha = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(alpha, (6 + w // 2, 6 + h // 2), (w // 2, h // 2), 0, 0, 360, 255, -1, cv2.LINE_AA)
    img[..., :3] = rgb
    if rgb2 is not None:
        img[:, img.shape[1] // 2:, :3] = rgb2
    img[..., 3] = alpha
    return img


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(stamps_dir, background_dir, manifest path) of the fixture world."""
    base = tmp_path_factory.mktemp("photo-world")
    stamps, bg = base / "stamps", base / "backgrounds"
    entries = []
    for k, (path, noun, plural, groups, top, colour, shares, split, photo, rgb, rgb2) in enumerate(TABLE):
        p = stamps / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".svg":  # a drawn stamp, sized in pt without a viewBox like the old tuxpaint SVGs
            p.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="60pt" height="40pt">'
                         f'<ellipse cx="30" cy="20" rx="28" ry="18" fill="rgb{rgb}"/></svg>')
        else:
            cv2.imwrite(str(p), cv2.cvtColor(_stamp_image(rgb, rgb2, k), cv2.COLOR_RGBA2BGRA))
        p.with_suffix(".txt").write_text(f"A {noun}.\nfr.utf8=Un {noun}.\n")
        entries.append({"path": path, "noun": noun, "plural": plural, "groups": groups, "top": top,
                        "photographic": photo, "colour": colour, "colour_shares": shares,
                        "caption": f"A {noun}.", "split": split})
    bg.mkdir()
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8), (9, 9), 0)
    cv2.imwrite(str(bg / "meadow.jpg"), photo)
    manifest = base / "manifest.json"
    manifest.write_text(json.dumps({"source": "fixture", "version": 1, "stamps": entries}))
    return str(stamps), str(bg), str(manifest)


def make(fx, split: str = "val", **kw) -> SynthGRES:
    """A fixture-world dataset (world="photo" unless given)."""
    stamps, bg, manifest = fx
    return SynthGRES(split, world=kw.pop("world", "photo"), stamps_dir=stamps, background_dirs=(bg,),
                     manifest=manifest, **kw)


# ------------------------------------------------------------------------------------------------
# An independent reader of photo-world sentences
# ------------------------------------------------------------------------------------------------

class Obj:
    """What the reader knows about an object: fixture facts + centre and size recomputed from masks."""

    def __init__(self, o, scene):
        row = TABLE[o.stamp]
        self.index = o.index
        self.noun, self.cats, self.colour = row[1], {row[1], *row[3]}, row[5]
        ys, xs = np.nonzero(o.full_mask)
        self.cx, self.cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        longest = max(o.alpha.shape) / min(scene.width, scene.height)
        assert longest <= 0.29 or longest >= 0.37, f"size class between the ranges: {longest}"
        self.size = "small" if longest <= 0.29 else "large"


def _core(words: list[str]) -> tuple[dict, bool]:
    """[size] [colour] CATEGORY -> ({cat, colour, size}, plural).  The category is the longest
    suffix that is a known noun / taxonomy word / 'object' (multi-word nouns, 'the orange orange')."""
    for cut in range(len(words)):
        head = " ".join(words[cut:])
        if head in CATEGORY_OF or head in ("object", "objects"):
            break
    else:
        raise AssertionError(f"no category in {words}")
    pre = words[:cut]
    attrs = {"cat": None if head in ("object", "objects") else CATEGORY_OF[head], "colour": None, "size": None}
    if pre and pre[0] in SIZE_WORD:
        attrs["size"] = SIZE_WORD[pre.pop(0)]
    if pre and pre[0] in COLOURS:
        attrs["colour"] = pre.pop(0)
    assert not pre, f"bad noun phrase {words}"
    plural = head in PLURAL_WORDS and head not in NOUNS | GROUPS  # "sheep" / "fish": number unknown
    invariant = head in NOUNS | GROUPS and head in PLURAL_WORDS
    attrs["invariant"] = invariant
    return attrs, plural


def _match(objs, a) -> set[int]:
    return {o.index for o in objs if (a["cat"] is None or a["cat"] in o.cats)
            and (a["colour"] is None or o.colour == a["colour"]) and (a["size"] is None or o.size == a["size"])}


def _det(words):
    for det in (["all", "the"], ["the", "two"], ["the", "three"], ["the", "four"], ["both"], ["all"], ["every"],
                ["the"]):
        if words[:len(det)] == det:
            return " ".join(det), words[len(det):]
    raise AssertionError(f"no determiner in {words}")


def _agrees(det: str, attrs: dict, plural: bool, n: int, no_target: bool) -> bool:
    """Number agreement of determiner and noun with the evaluated count."""
    if no_target:
        return n == 0 and det in ("the", "all the")
    if attrs.get("invariant") and det == "the":  # "the sheep": one or several
        return n >= 1
    if det == "the":
        return n == 1 if not plural else n >= 2
    if det == "every":
        return not plural and n >= 2
    if det in ("all", "all the"):
        return (plural or attrs.get("invariant")) and n >= 2
    return (plural or attrs.get("invariant")) and n == {"both": 2, "the two": 2, "the three": 3, "the four": 4}[det]


class Reader:
    def __init__(self, scene):
        self.s, self.objs = scene, [Obj(o, scene) for o in scene.objects]
        self.m = 0.1 * min(scene.width, scene.height)

    def extreme(self, cands, side):
        key = {"left": lambda o: o.cx, "right": lambda o: -o.cx, "top": lambda o: o.cy, "bottom": lambda o: -o.cy}[side]
        ordered = sorted((self.objs[i] for i in cands), key=key)
        if not ordered:
            return set()
        if len(ordered) >= 2:
            assert key(ordered[1]) - key(ordered[0]) >= self.m, "extreme without margin"
        return {ordered[0].index}

    def in_region(self, o, xs, ys):
        W, H, h = self.s.width, self.s.height, self.m / 2
        return ((xs != "left" or o.cx <= W / 2 - h) and (xs != "right" or o.cx >= W / 2 + h)
                and (ys != "top" or o.cy <= H / 2 - h) and (ys != "bottom" or o.cy >= H / 2 + h))

    def rel(self, o, b, rel):
        dx, dy = o.cx - b.cx, o.cy - b.cy
        along, across = {"left": (-dx, abs(dy)), "right": (dx, abs(dy)), "above": (-dy, abs(dx)),
                         "below": (dy, abs(dx))}[rel]
        return along > self.m and along > across

    def simple(self, words, no_target):
        text = " ".join(words)
        for phrase, (xs, ys) in REGIONS.items():
            if text.endswith(" " + phrase):
                det, rest = _det(text[: -len(phrase) - 1].split())
                attrs, plural = _core(rest)
                got = {i for i in _match(self.objs, attrs) if self.in_region(self.objs[i], xs, ys)}
                assert _agrees(det, attrs, plural, len(got), no_target), (text, len(got))
                return got, "group" if (plural or det != "the" or (attrs["invariant"] and len(got) > 1)) else "position", attrs
        for phrase, side in POST_EXTREME.items():
            if text.endswith(" " + phrase) and words[0] == "the":
                attrs, plural = _core(text[4: -len(phrase) - 1].split())
                assert not plural
                cands = _match(self.objs, attrs)
                assert no_target or len(cands) >= 2
                return self.extreme(cands, side), "position", attrs
        if words[0] == "the" and len(words) > 2 and words[1] in PRE_EXTREME:
            attrs, plural = _core(words[2:])
            cands = _match(self.objs, attrs)
            assert not plural and (no_target or len(cands) >= 2)
            return self.extreme(cands, PRE_EXTREME[words[1]]), "position", attrs
        det, rest = _det(words)
        attrs, plural = _core(rest)
        got = _match(self.objs, attrs)
        assert _agrees(det, attrs, plural, len(got), no_target), (text, det, len(got))
        return got, "attribute", attrs

    def read(self, sentence, no_target):
        words = sentence.split()
        if " and " in sentence:
            a, b = sentence.split(" and ")
            sa, _, _ = self.simple(a.split(), False)
            sb, _, _ = self.simple(b.split(), False)
            assert sa and sb and not sa & sb
            return sa | sb, "conjunction", {}
        for conj in (" except ", " but "):
            if conj in sentence:
                base_text, excl_text = sentence.split(conj)
                bw = base_text.split()
                if bw == ["everything"]:
                    base, battrs = {o.index for o in self.objs}, {"cat": None, "colour": None, "size": None}
                else:
                    det, rest = _det(bw)
                    battrs, plural = _core(rest)
                    assert det in ("all", "all the", "every")
                    base = _match(self.objs, battrs)
                assert len(base) >= 2
                ew = excl_text.split()
                assert ew[0] == "the"
                if ew[-1] in ("one", "ones"):
                    if len(ew) == 3 and ew[1] in PRE_EXTREME:
                        excl = self.extreme(base, PRE_EXTREME[ew[1]])
                    else:
                        extra, _ = _core(ew[1:-1] + ["object"])
                        excl = base & _match(self.objs, extra)
                        assert (len(excl) == 1) == (ew[-1] == "one")
                else:
                    extra, plural = _core(ew[1:])
                    excl = base & _match(self.objs, extra)
                    assert extra["invariant"] or (len(excl) >= 2) == plural
                assert excl and excl < base
                return base - excl, "exclusion", battrs
        for phrase in sorted(RELATIONS, key=len, reverse=True):
            key = f" {phrase} the "
            if key in sentence:
                head_text, anchor_text = sentence.split(key)
                aattrs, aplural = _core(anchor_text.split())
                anchors = _match(self.objs, aattrs)
                assert not aplural and len(anchors) == 1, "anchor must be unique"
                b = self.objs[next(iter(anchors))]
                det, rest = _det(head_text.split())
                attrs, plural = _core(rest)
                cands = _match(self.objs, attrs) - {b.index}
                if RELATIONS[phrase] == "next":
                    d = sorted((math.hypot(o.cx - b.cx, o.cy - b.cy), o.index) for o in self.objs if o is not b)
                    assert len(d) <= 1 or d[1][0] - d[0][0] >= self.m
                    got = {d[0][1]} & cands if d else set()  # a lone anchor has no neighbour
                else:
                    got = {i for i in cands if self.rel(self.objs[i], b, RELATIONS[phrase])}
                assert _agrees(det, attrs, plural, len(got), no_target), (sentence, len(got))
                return got, "relation", attrs
        if words[0] == "everything":
            rest = " ".join(words[1:])
            if rest in COLOURS:
                a = {"cat": None, "colour": rest, "size": None}
                return _match(self.objs, a), "group", a
            if rest in SIZE_WORD:
                a = {"cat": None, "colour": None, "size": SIZE_WORD[rest]}
                return _match(self.objs, a), "group", a
            xs, ys = REGIONS[rest]
            return {o.index for o in self.objs if self.in_region(o, xs, ys)}, "group", {"cat": None}
        return self.simple(words, no_target)


def check(ds: SynthGRES, k: int) -> dict:
    """Every per-sample invariant, with the target set re-derived by the reader."""
    s = ds[k]
    image_index, _ = ds.locate(ds.epoch * len(ds) + k)
    scene = ds.scene(image_index)
    H, W = ds.size
    assert s["image"].shape == (H, W, 3) and s["mask"].shape == (H, W) and s["mask"].dtype == bool
    words = s["sentence"].split()
    assert 1 <= len(words) <= 16 and s["sentence"] == s["sentence"].lower()
    assert s["no_target"] == (not s["target_ids"]) == (not s["mask"].any())
    tags = s["tags"]
    assert set(tags) == {"target", "type", "nt_kind", "world", "group"} and tags["world"] == scene.world
    if scene.world == "shapes":
        return s
    targets, typ, head = Reader(scene).read(s["sentence"], s["no_target"])
    assert targets == set(s["target_ids"]), (s["sentence"], targets, s["target_ids"])
    if not (typ in ("group", "position") and tags["type"] in ("group", "position")):
        assert typ == tags["type"], (s["sentence"], typ, tags["type"])
    nouns = {TABLE[scene.objects[i].stamp][1] for i in s["target_ids"]}
    want = ("no-target" if not nouns else "single" if len(s["target_ids"]) == 1
            else "multi-same" if len(nouns) == 1 else "multi-mixed")
    assert tags["target"] == want
    tops = {TABLE[scene.objects[i].stamp][4] for i in s["target_ids"]}
    if tops:
        assert tags["group"] == (tops.pop() if len(tops) == 1 else "several")
    if s["no_target"]:  # the kind is a property of the scene, not of the template
        objs = Reader(scene).objs
        h = {a: v for a, v in head.items() if a in ("cat", "colour", "size") and v is not None}
        cat_present = h.get("cat") is None or any(h["cat"] in o.cats for o in objs)
        if tags["nt_kind"] == "absent-combination":
            assert cat_present and len(h) >= 2 and not _match(objs, {**{"cat": None, "colour": None, "size": None}, **h})
            for a, v in h.items():  # each attribute occurs on its own
                assert _match(objs, {"cat": None, "colour": None, "size": None, a: v}), (s["sentence"], a)
        elif tags["nt_kind"] == "absent-attribute":
            assert not cat_present, s["sentence"]
        else:
            assert tags["nt_kind"] == "spatial-contradiction"
            assert _match(objs, {"cat": None, "colour": None, "size": None, **h}), s["sentence"]
    return s


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

def test_manifest_facts_and_plurals():
    stamps = load_manifest()  # the committed manifest: facts only, readable without the packages
    assert len(stamps) >= 200 and len({s.noun for s in stamps}) >= 100
    for s in stamps:
        assert not s.path.startswith("/") and s.path.endswith((".png", ".svg"))
        assert s.photographic or s.path.endswith(".svg") or "/cartoon/" in s.path
        assert s.split in ("train", "testA") and s.top and s.noun not in s.groups
        assert s.colour is None or s.colour in COLOURS
    held = [s for s in stamps if s.split == "testA"]
    train_nouns = {s.noun for s in stamps if s.split == "train" and s.photographic}
    assert held and all(s.noun in train_nouns for s in held)  # testA = other stamps of *known* nouns
    assert (plural_of("pig"), plural_of("sheep"), plural_of("sea lion"), plural_of("bus"), plural_of("butterfly"),
            plural_of("mouse")) == ("pigs", "sheep", "sea lions", "buses", "butterflies", "mice")


def test_nouns_seen_only_as_drawings():
    from train.data.synthgres.photo import drawn_only_nouns_in

    # cat, cup and spoon exist only as drawn stamps; dog and mug as photographs; "woman" is not a noun
    assert drawn_only_nouns_in("the cat") == ["cat"] and drawn_only_nouns_in("two Cats!") == ["cat"]
    assert drawn_only_nouns_in("the cup of coffee beside the spoon") in (["cup", "spoon"], ["spoon", "cup"])
    assert drawn_only_nouns_in("the dog and the mug") == [] and drawn_only_nouns_in("the woman") == []
    assert drawn_only_nouns_in("the vacuum cleaner") == ["vacuum cleaner"]
    assert drawn_only_nouns_in("the catalogue") == []  # whole words only
    photographed = {s.noun for s in load_manifest() if s.photographic}
    assert not photographed & {"cat", "cup", "spoon", "vacuum cleaner"} and {"dog", "mug"} <= photographed


def test_colour_word_from_pixels():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bpm", ROOT / "scripts" / "build_photo_manifest.py")
    bpm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bpm)
    assert bpm.colour_word(_stamp_image(RED, None, 0)) == "red"
    assert bpm.colour_word(_stamp_image(BLUE, None, 0)) == "blue"
    assert bpm.colour_word(_stamp_image(BROWN, None, 0)) is None  # brown is no colour word
    assert bpm.colour_word(_stamp_image(GREY, RED, 0)) is None  # half red: ambiguous
    shares = bpm.colour_shares(_stamp_image(GREY, RED, 0))
    assert set(shares) == {"red"} and 0.35 < shares["red"] < 0.65


def test_missing_packages_say_what_to_install(tmp_path, world):
    with pytest.raises(PhotoWorldUnavailable, match="apt-get install -y tuxpaint-stamps-default mate-backgrounds"):
        SynthGRES("val", world="photo", stamps_dir=str(tmp_path / "nowhere"))
    assert issubclass(PhotoWorldUnavailable, RuntimeError)
    with pytest.raises(ValueError, match="world"):
        SynthGRES("val", world="cats")
    SynthGRES("val")[0]  # the shapes world never needs them


def test_every_sample_checked_independently(world):
    for split, n in (("val", 400), ("testA", 200), ("testB", 200), ("train", 200)):
        ds = make(world, split, length=n)
        kinds, cats = Counter(), Counter()
        for k in range(n):
            s = check(ds, k)
            kinds[s["tags"]["nt_kind"]] += 1
            cats[s["tags"]["target"]] += 1
        assert set(cats) == {"single", "multi-same", "multi-mixed", "no-target"}, (split, cats)
        assert 0.08 <= cats["no-target"] / n <= 0.25, (split, cats)
        assert 0.15 <= (cats["multi-same"] + cats["multi-mixed"]) / n <= 0.45, (split, cats)


def test_masks_are_the_visible_alpha(world):
    ds = make(world, "testB", length=200)  # clutter: occlusion is frequent
    occluded = 0
    for image_index in range(12):
        sc = ds.scene(image_index)
        H, W = sc.height, sc.width
        above = np.zeros((H, W), bool)
        touched = np.zeros((H, W), bool)  # any alpha > 0 of the objects above (their soft edge)
        for o in sorted(sc.objects, key=lambda ob: -ob.z):  # top-most first
            x0, y0, x1, y1 = o.bbox
            full = np.zeros((H, W), bool)
            full[y0:y1, x0:x1] = o.alpha >= 128  # alpha >= 0.5
            assert np.array_equal(full, o.full_mask)
            assert np.array_equal(o.visible_mask, full & ~above)
            assert o.visible_mask.sum() >= 0.4 * full.sum()
            occluded += bool((full & above).any())
            # where the object is opaque and nothing above touches it, the image shows exactly its pixels
            opaque = np.zeros((H, W), bool)
            opaque[y0:y1, x0:x1] = o.alpha == 255
            opaque &= ~touched
            assert opaque.sum() > 0.3 * full.sum()
            assert np.array_equal(sc.image[opaque], np.pad(o.rgb, ((y0, H - y1), (x0, W - x1), (0, 0)))[opaque])
            above |= full
            touched[y0:y1, x0:x1] |= o.alpha > 0
        for a in sc.objects:  # the overlap rule on full masks
            for b in sc.objects:
                if a.index < b.index:
                    assert (a.full_mask & b.full_mask).sum() < 0.25 * min(a.area, b.area)
        assert 5 <= len(sc.objects) <= 8
    assert occluded > 0


def test_determinism_and_splits(world):
    a, b = make(world, "val"), make(world, "val", cache_size=1)
    for k in (0, 1, 95, 96, 700, 1999):
        sa, sb = a[k], b[k]
        assert np.array_equal(sa["image"], sb["image"]) and np.array_equal(sa["mask"], sb["mask"])
        assert (sa["sentence"], sa["target_ids"], sa["tags"]) == (sb["sentence"], sb["target_ids"], sb["tags"])
    assert len(a) == 2000 and len(make(world, "testA")) == 2000 and len(make(world, "testB")) == 2000
    assert not np.array_equal(make(world, "val")[0]["image"], make(world, "testB")[0]["image"])
    # testA: held-out stamps of known nouns, at least one per scene; other splits never show them
    held = {i for i, r in enumerate(TABLE) if r[7] == "testA"}
    for split in ("train", "val", "testA", "testB"):
        ds = make(world, split)
        for i in range(30):
            used = {o.stamp for o in ds.scene(i).objects}
            assert bool(used & held) == (split == "testA"), (split, i)
    # photographs only: the drawn bus and the SVG kite never appear; by default they do
    ph = make(world, "val", photographic_only=True)
    assert all(TABLE[o.stamp][8] for i in range(40) for o in ph.scene(i).objects)
    drawn = {TABLE[o.stamp][1] for i in range(80) for o in make(world, "val").scene(i).objects if not TABLE[o.stamp][8]}
    assert drawn == {"bus", "kite"}


def test_determinism_in_another_process(world):
    stamps, bg, manifest = world
    code = ("import sys, hashlib; sys.path.insert(0, %r)\n"
            "from train.data.synthgres import SynthGRES\n"
            "ds = SynthGRES('val', world='mixed', stamps_dir=%r, background_dirs=(%r,), manifest=%r)\n"
            "h = hashlib.sha256()\n"
            "for k in (5, 300, 1234):\n"
            "    s = ds[k]; h.update(s['image'].tobytes() + s['mask'].tobytes() + s['sentence'].encode())\n"
            "print(h.hexdigest())\n") % (str(ROOT), stamps, bg, manifest)
    import hashlib

    ds = make(world, "val", world="mixed")
    h = hashlib.sha256()
    for k in (5, 300, 1234):
        s = ds[k]
        h.update(s["image"].tobytes() + s["mask"].tobytes() + s["sentence"].encode())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == h.hexdigest()


def test_mixed_world_and_shapes_unchanged(world):
    mixed = make(world, "val", world="mixed", length=300)
    worlds = Counter(check(mixed, k)["tags"]["world"] for k in range(300))
    assert worlds["photo"] > 60 and worlds["shapes"] > 60
    shapes = SynthGRES("val")
    for k in range(0, 300, 37):  # shapes-world images of the mixed world are ordinary shapes scenes
        s = shapes[k]
        assert set(s["tags"]) == {"target", "type", "nt_kind"}  # the shapes world's tags are unchanged


def test_non_square_canvas(world):
    ds = make(world, "val", size=(200, 360), length=60)
    for k in range(60):
        s = check(ds, k)
        assert s["image"].shape == (200, 360, 3)


def test_random_scene_hook(world, monkeypatch):
    stamps, bg, manifest = world
    monkeypatch.setenv("MABP_TUXPAINT_STAMPS", stamps)
    monkeypatch.setenv("MABP_BACKGROUNDS", bg)
    import train.data.synthgres.photo as photo

    monkeypatch.setattr(photo, "MANIFEST_PATH", Path(manifest))
    photo.load_manifest.cache_clear()
    photo._ASSETS.clear()
    try:
        img, scene, sugg = random_scene(11, world="photo")
        img2, _, sugg2 = random_scene(11, world="photo")
        assert np.array_equal(img, img2) and sugg == sugg2 and scene.world == "photo" and len(sugg) == 6
        reader = Reader(scene)
        for sentence, ids, _ in sugg:
            assert reader.read(sentence, not ids)[0] == set(ids)
        assert {random_scene(s, world="mixed")[1].world for s in range(12)} == {"shapes", "photo"}
        monkeypatch.setenv("MABP_TUXPAINT_STAMPS", str(Path(stamps) / "missing"))
        photo._ASSETS.clear()
        with pytest.raises(RuntimeError, match="tuxpaint-stamps-default"):
            random_scene(11, world="photo")
        assert random_scene(11)[1].world == "shapes"
    finally:
        photo.load_manifest.cache_clear()
        photo._ASSETS.clear()


def _decode(seg, h, w) -> np.ndarray:
    from pycocotools import mask as mu

    if isinstance(seg, list):
        return mu.decode(mu.frPyObjects(seg, h, w)).sum(axis=2) > 0
    return mu.decode({"size": seg["size"], "counts": seg["counts"].encode()}) > 0


def test_export_round_trip_through_the_grefcoco_loader(tmp_path, world):
    from train.data.grefcoco import GRefCOCO

    stamps, bg, manifest = world
    out = tmp_path / "export"
    num = 48
    summary = export_split("val", str(out), num=num, progress=False, world="photo", stamps_dir=stamps,
                           background_dirs=(bg,), manifest=manifest)
    assert summary["refs"] == num
    inst = json.loads((out / "instances.json").read_text())
    names = {c["name"] for c in inst["categories"]}
    assert NOUNS <= names
    ds = make(world, "val", length=num)
    loaded = GRefCOCO(str(out), "val", mode="eval")
    by_ref = {loaded[i]["ref_id"]: loaded[i] for i in range(len(loaded))}
    assert len(by_ref) == num
    for k in range(num):
        s = ds[k]
        r = by_ref[s["ref_id"]]
        assert r["sentence"] == s["sentence"] and r["no_target"] == s["no_target"]
        assert np.array_equal(r["image"], s["image"])  # PNG: lossless
        if s["no_target"]:
            assert not r["mask"].any()
        else:
            inter, union = (r["mask"] & s["mask"]).sum(), (r["mask"] | s["mask"]).sum()
            assert inter / union >= 0.97, inter / union
    anns = inst["annotations"]
    assert all(a["synthgres_attributes"]["noun"] in NOUNS for a in anns)


@pytest.mark.skipif(not Path("/usr/share/tuxpaint/stamps").is_dir(), reason="tuxpaint-stamps-default not installed")
def test_real_packages_when_installed():
    assets = PhotoAssets()  # every manifest stamp must exist in the installed package
    assert assets.background_files, "mate-backgrounds / gnome-backgrounds give background photos"
    for split in ("val", "testA", "testB"):
        ds = SynthGRES(split, world="photo", length=96)
        for k in range(96):
            s = ds[k]
            assert s["mask"].any() == (not s["no_target"]) and 1 <= len(s["sentence"].split()) <= 16
    img, scene, sugg = random_scene(3, world="photo")
    assert img.shape == (320, 320, 3) and scene.world == "photo" and len(sugg) == 6


def test_world_vocabularies_and_the_exported_checkpoint(tmp_path):
    from mabp.vocabulary import ModelVocabulary
    from train.data.synthgres.vocab import COLOURS as SHAPE_COLOURS, SHAPES
    from train.data.synthgres.world_vocabulary import vocabulary_for_config, world_vocabulary

    shapes, photo, mixed = (world_vocabulary(w) for w in ("shapes", "photo", "mixed"))
    assert shapes.worlds == ("shapes",) and set(shapes.nouns) == set(SHAPES) and shapes.colours == SHAPE_COLOURS
    assert "pig" in photo.nouns and "pigs" == photo.plurals["pig"] and "pig" in photo.taxonomy["animal"]
    assert mixed.worlds == ("shapes", "photo") and set(mixed.nouns) == set(shapes.nouns) | set(photo.nouns)
    assert shapes.is_out_of_vocabulary("the pig") and not mixed.is_out_of_vocabulary("the pig")
    assert mixed.is_out_of_vocabulary("the woman in the blue jacket") is False  # "blue" is known ...
    assert mixed.known_words("the woman in the blue jacket") == ["blue"]  # ... but not the nouns
    assert ModelVocabulary.from_dict(mixed.to_dict()) == mixed
    assert vocabulary_for_config({"data": {"dataset": "synthgres", "kwargs": {}}}) == shapes
    assert vocabulary_for_config({"data": {"dataset": "grefcoco", "kwargs": {}}}) is None
    with pytest.raises(ValueError, match="world"):
        world_vocabulary("cats")

    # train.export stores the vocabulary of the training config's world
    import torch

    from mabp import build_mabp
    from mabp.registry import load_checkpoint, save_checkpoint
    from train.export import main as export_main

    src, dst = tmp_path / "run.pt", tmp_path / "shipped.pt"
    save_checkpoint(build_mabp("tiny"), src,
                    extra={"train_config": {"data": {"dataset": "synthgres", "kwargs": {"world": "mixed"}}}})
    assert export_main([str(src), str(dst)]) == 0
    stored = ModelVocabulary.from_checkpoint(load_checkpoint(dst))
    assert stored == mixed
    assert torch.load(dst, weights_only=True)["vocabulary"]["worlds"] == ["shapes", "photo"]


def test_evaluation_breaks_down_by_taxonomy_group(world, tmp_path):
    from mabp import build_mabp
    from train.evaluate import format_report, main as evaluate_main

    ds = make(world, "val", world="mixed", length=16)
    from train.evaluate import evaluate_model

    res = evaluate_model(build_mabp("tiny"), ds, batch_size=8, progress=False)
    groups = {ds[k]["tags"]["group"] for k in range(16)} - {None}
    assert set(res["breakdowns"]["group"]) == {str(g) for g in groups}
    assert set(res["breakdowns"]["world"]) <= {"photo", "shapes"} and sum(
        v["n"] for v in res["breakdowns"]["world"].values()) == 16
    report = format_report(res, "synthgres", "val")
    assert "### By taxonomy group (photo world)" in report and "### By world" in report
    assert evaluate_main(["--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "grefcoco", "--split", "val",
                          "--world", "photo"]) == 2


def test_packed_assets_give_identical_samples(world, tmp_path):
    from train.data.synthgres.photo import pack_assets

    stamps, bg, manifest = world
    src = PhotoAssets(stamps, (bg,), manifest)
    r = pack_assets(tmp_path / "pack", src)
    assert r["stamps"] == len(TABLE) and r["backgrounds"] == 1
    packed = SynthGRES("val", world="photo", stamps_dir=str(tmp_path / "pack" / "stamps"),
                       background_dirs=(str(tmp_path / "pack" / "backgrounds"),), manifest=manifest)
    orig = make(world, "val")
    for k in (0, 50, 400):
        a, b = orig[k], packed[k]
        assert np.array_equal(a["image"], b["image"]) and a["sentence"] == b["sentence"]


def test_closeups_are_opt_in_train_only_and_read_back(world):
    """closeup_share: one object filling most of the frame, in the train stream only; 0 changes nothing."""
    base, zero = make(world, "train", length=120), make(world, "train", length=120, closeup_share=0.0)
    for k in (0, 7, 60):
        assert np.array_equal(base[k]["image"], zero[k]["image"]) and base[k]["sentence"] == zero[k]["sentence"]
    val, val_cu = make(world, "val"), make(world, "val", closeup_share=1.0)  # the benchmark stays fixed
    for k in (0, 500):
        assert np.array_equal(val[k]["image"], val_cu[k]["image"]) and val[k]["sentence"] == val_cu[k]["sentence"]
    cu = make(world, "train", length=120, closeup_share=1.0)
    for i in range(15):
        sc = cu.scene(i)
        short = min(sc.height, sc.width)
        assert len(sc.objects) == 1 and sc.objects[0].size == "large"
        assert sc.objects[0].longest >= 0.6 * short - 1 and sc.objects[0].visible_mask.sum() > 0.15 * short * short
    tags = Counter(check(cu, k)["tags"]["target"] for k in range(120))  # the reader agrees on every sentence
    assert set(tags) <= {"single", "no-target"} and tags["single"] > 0 and tags["no-target"] > 0
    some = make(world, "train", length=400, closeup_share=0.3)
    share = sum(len(some.scene(i).objects) == 1 and some.scene(i).objects[0].longest >= 0.6 * 320 - 1
                for i in range(80)) / 80
    assert 0.15 <= share <= 0.5, share
    with pytest.raises(ValueError, match="closeup_share"):
        make(world, "train", closeup_share=1.5)
