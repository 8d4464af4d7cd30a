"""Expressions for the SynthGRES photo world: the shapes grammar over nouns, taxonomy words and colours.

The meaning trees, the spatial words, the determiners / count words, the mixture and the acceptance
rules are those of `grammar.py` (the generator is subclassed, not copied).  What changes:

* the category slot holds a **noun or a taxonomy word**: `PhotoFilter(shape="pig")` matches every
  pig, `PhotoFilter(shape="animal")` every object whose taxonomy contains "animal" (so "every
  animal", "all the birds except the duck", "the fruit at the top" are evaluated on the scene);
* the generic noun is "object" ("the red object", "all the objects except the pig");
* colour words exist only for stamps with one clearly dominant hue (the manifest), and a phrase that
  names colour c is refused when some object it would have to exclude has no colour word (a peacock,
  a pale flamingo: pixels cannot say whether a person would call it "blue") or still *shows* c on
  >= 10 % of its pixels ("the red car" beside a blue car with red stripes) — so a colour phrase never
  depends on a borderline judgement;
* no-target kinds: a deceptive combination (the colour and the noun both occur, not together —
  "the green car" beside a red car and a green apple — or a size the noun does not have here), an absent noun — preferably from the same taxonomy as
  the scene's objects ("the zebra" among farm animals) — or absent taxonomy word, and a spatial
  contradiction;
* testA focus: expressions about the held-out stamps (a *different* pig).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import (BASE_PROFILE, PROFILES, Expression, ExpressionGenerator, Profile, _Draft,
                      structure_words)
from .meaning import Filter
from .photo import Stamp
from .scene import Scene

GENERIC_NOUN, GENERIC_PLURAL = "object", "objects"


def _photo_profile(p: Profile) -> Profile:
    """The shapes world's profile with requests tilted for photo scenes, so that the *realised* shares
    land near the spec (~15 % no-target, ~30 % multi-target; no-target kinds ~50/30/20): photo scenes
    hold 1-6 objects (one-object scenes cannot be multi-target) and fewer colour words, so deceptive
    combinations are found less often and fall back to absent nouns."""
    cat = {"no-target": 0.14, "single": 0.50, "multi": 0.36}
    return Profile(**{**p.__dict__, "category": cat,
                      "nt_kinds": {"absent-combination": 0.74, "absent-attribute": 0.14,
                                   "spatial-contradiction": 0.12}})


PHOTO_PROFILES: dict[str, Profile] = {k: _photo_profile(v) for k, v in PROFILES.items()}


@dataclass(frozen=True)
class PhotoFilter(Filter):
    """Attribute filter of the photo world; `shape` holds a category word (noun or taxonomy word)."""

    def matches(self, o) -> bool:  # type: ignore[override]
        """True if the object is named by the category word and has the colour / size class."""
        return ((self.shape is None or self.shape in o.categories)
                and (self.colour is None or o.colour == self.colour)
                and (self.size is None or o.size == self.size))


class PhotoLexicon:
    """Nouns, taxonomy words and plurals of a manifest (what the grammar may say)."""

    def __init__(self, stamps: tuple[Stamp, ...]) -> None:
        self.nouns = tuple(sorted({s.noun for s in stamps}))
        self.groups = tuple(sorted({g for s in stamps for g in s.groups}))
        self.plural: dict[str, str] = {GENERIC_NOUN: GENERIC_PLURAL}
        from .photo import plural_of

        for g in self.groups:
            self.plural[g] = plural_of(g)
        for s in stamps:
            self.plural[s.noun] = s.plural
        self.group_only = frozenset(self.groups) - frozenset(self.nouns)
        self.top_of: dict[str, str] = {}
        for s in stamps:
            self.top_of.setdefault(s.noun, s.top)
        for g in self.groups:
            tops = {s.top for s in stamps if g in s.groups or s.noun == g}
            self.top_of.setdefault(g, tops.pop() if len(tops) == 1 else "several")
        self.related: dict[str, tuple[str, ...]] = {}  # noun -> nouns sharing a taxonomy word
        for s in stamps:
            rel = {t.noun for t in stamps if set(t.groups) & set(s.groups) and t.noun != s.noun}
            self.related[s.noun] = tuple(sorted(rel | set(self.related.get(s.noun, ()))))
        self.colours = tuple(sorted({s.colour for s in stamps if s.colour}))

    def vocabulary(self) -> frozenset[str]:
        """Every word the photo grammar can emit."""
        words = structure_words() | set(self.colours)
        for n, p in self.plural.items():
            words.update(n.split())
            words.update(p.split())
        return frozenset(words)


class PhotoExpressionGenerator(ExpressionGenerator):
    """ExpressionGenerator over photo-world objects (see the module docstring).

    Args:
        scene: a photo-world scene (objects are PhotoObject).
        rng: private generator.
        lexicon: the manifest's nouns / taxonomy (absent nouns are drawn from it).
        profile: mixture weights (the shapes world's per split).
        focus: testA: indices of objects that are held-out stamps.
    """

    filter_cls = PhotoFilter

    def __init__(self, scene: Scene, rng: np.random.Generator, lexicon: PhotoLexicon,
                 profile: Profile = BASE_PROFILE, focus: frozenset[int] = frozenset()) -> None:
        self.lexicon = lexicon
        super().__init__(scene, rng, profile, focus)
        objs = scene.objects
        self.colours = {o.colour for o in objs if o.colour}
        self.pairs = {(o.colour, o.noun) for o in objs if o.colour}
        self.categories = sorted({c for o in objs for c in o.categories})
        self.focus_nouns = {objs[i].noun for i in focus}

    # -- lexicon -----------------------------------------------------------------------------------
    def object_filters(self, o) -> list[Filter]:  # type: ignore[override]
        """Category (None, noun, taxonomy words) x colour (None or the stamp's word) x size."""
        cats = [None, o.noun, *o.groups]
        cols = [None, o.colour] if o.colour else [None]
        return [PhotoFilter(c, k, z) for c in cats for k in cols for z in (None, o.size)]

    def generic(self, f: Filter) -> bool:
        """No category, or a taxonomy word (both can cover several nouns)."""
        return f.shape is None or f.shape in self.lexicon.groups

    # core(): [size] [colour] noun | taxonomy word | object(s)
    generic_noun = GENERIC_NOUN

    def plural_of(self, noun: str) -> str:
        return self.lexicon.plural[noun]

    def _base_phrase(self, fb: Filter) -> str:
        if fb.n_attrs == 0:
            return self._choice(("everything", "all objects", "all the objects", "every object"))
        return super()._base_phrase(fb)

    # -- colour safety -----------------------------------------------------------------------------
    def colour_safe(self, f: Filter) -> bool:
        """A colour phrase is said only if every object it excludes *has* another colour word and does not
        show this colour on >= 10 % of its pixels.  Objects without a colour word (a peacock, a pale
        flamingo, a brown horse) are never excluded by a colour: pixels cannot tell whether a person
        would call them "blue" or "pink", so "the blue peacock" is never claimed to be absent."""
        if f.colour is None:
            return True
        rest = PhotoFilter(f.shape, None, f.size)
        return all(o.colour == f.colour or (o.colour is not None and not o.shows(f.colour))
                   for o in self.scene.objects if rest.matches(o))

    def _finalise(self, d: _Draft | None, typ: str, want: str, nt_kind: str | None) -> Expression | None:
        if d is None or not all(self.colour_safe(f) for f in d.meaning.filters()):
            return None
        return super()._finalise(d, typ, want, nt_kind)

    # -- testA -------------------------------------------------------------------------------------
    def _about_focus(self, d: _Draft, targets: frozenset[int]) -> bool:
        """testA: targets a held-out stamp, or names a held-out stamp's noun."""
        return bool(targets & self.focus) or any(f.shape in self.focus_nouns for f in d.meaning.filters())

    def generate(self, n: int) -> list[Expression]:
        """n expressions, one slot at a time as the shapes world; a photo scene can admit no positive
        phrase at all (two identical lions side by side), so a slot whose search fails falls back to an
        absent-noun no-target expression, which every scene admits."""
        out: list[Expression] = []
        for _ in range(n):
            try:
                out += super().generate(1)
            except RuntimeError:
                e = None
                for _ in range(200):
                    self._need_focus = False
                    e = self._try("no-target", "absent-attribute", self._draw_type("no-target", "absent-attribute"))
                    if e is not None:
                        break
                if e is None:  # pragma: no cover - needs a scene holding every noun of the manifest
                    raise
                out.append(e)
        return out

    def _draw_want(self) -> tuple[str, str | None]:
        """As the shapes world; a one-object scene (photo scenes hold 1-6) redraws multi-target wants."""
        want, kind = super()._draw_want()
        if len(self.all) < 2 and want.startswith("multi"):
            return ("single", None) if self.rng.random() < 0.7 else ("no-target", "absent-attribute")
        return want, kind

    def _feasible(self, want: str, kind: str | None) -> bool:
        if want.startswith("multi"):
            return super()._feasible(want, kind)
        if kind == "absent-combination":
            return bool(self.colours) or len(self.sizes) == 2
        return True

    # -- no-target ---------------------------------------------------------------------------------
    def _absent_filter(self, kind: str) -> Filter | None:
        objs = self.scene.objects
        if kind == "absent-combination":
            present = {c for o in objs for c in o.categories}
            combos: list[PhotoFilter] = []
            for c in sorted(self.colours):
                for cat in sorted(present):
                    f = PhotoFilter(cat, c)
                    if not f.select(objs) and self.colour_safe(f):
                        combos.append(f)
            sized = []
            if len(self.sizes) == 2:
                for cat in sorted(present):
                    for z in ("small", "large"):
                        f = PhotoFilter(cat, None, z)
                        if not f.select(objs):
                            sized.append(f)
            if self._need_focus:
                combos = [f for f in combos if f.shape in self.focus_nouns] or combos
                sized = [f for f in sized if f.shape in self.focus_nouns] or sized
            if sized and (not combos or self.rng.random() < 0.3):
                return self._choice(sized)
            if not combos:
                return None
            f = self._choice(combos)
            if self.rng.random() < 0.2:
                f = PhotoFilter(f.shape, f.colour, self._choice(sorted(self.sizes)))
            return f
        if kind == "absent-attribute":
            present = {c for o in objs for c in o.categories}
            if self.rng.random() < 0.15:  # an absent taxonomy word: "every vehicle" among animals
                absent_g = [g for g in self.lexicon.groups if g not in present]
                if absent_g:
                    return PhotoFilter(self._choice(absent_g))
            related = sorted({n for o in objs for n in self.lexicon.related.get(o.noun, ())} - present)
            if related and self.rng.random() < 0.7:  # same taxonomy: "the zebra" among farm animals
                noun = self._choice(related)
            else:
                absent = [n for n in self.lexicon.nouns if n not in present]
                if not absent:
                    return None
                noun = self._choice(absent)
            colour = self._choice(self.lexicon.colours) if self.rng.random() < 0.2 else None
            return PhotoFilter(noun, colour)
        raise ValueError(kind)


def focus_objects(scene: Scene, stamps: tuple[Stamp, ...]) -> frozenset[int]:
    """Indices of objects pasted from held-out (testA) stamps."""
    return frozenset(o.index for o in scene.objects if stamps[o.stamp].split == "testA")


def generate_photo_expressions(scene: Scene, rng: np.random.Generator, n: int, lexicon: PhotoLexicon,
                               stamps: tuple[Stamp, ...], split: str = "train") -> list[Expression]:
    """n evaluated expressions for a photo-world scene with the split's profile."""
    focus = focus_objects(scene, stamps) if split == "testA" else frozenset()
    return PhotoExpressionGenerator(scene, rng, lexicon, PHOTO_PROFILES[split], focus).generate(n)


def photo_target_group(scene: Scene, e: Expression, lexicon: PhotoLexicon) -> str:
    """Top-level taxonomy group of an expression, for breakdowns: its targets' group (or "several"),
    or for a no-target expression the group of the category it names ("none" if it names none)."""
    if e.target_ids:
        tops = {scene.objects[i].top for i in e.target_ids}
        return tops.pop() if len(tops) == 1 else "several"
    named = [f.shape for f in e.meaning.filters() if f.shape]
    tops = {lexicon.top_of.get(w, "several") for w in named[:1]}
    return tops.pop() if tops else "none"
