"""Expression generation for SynthGRES: meaning trees, their evaluation, and their surface text.

Surface grammar (lower-case, closed vocabulary, <= 16 words)::

    CORE    := [small|big|large] [COLOUR] NOUN            NOUN := SHAPE(s) | shape(s)
    NP      := the CORE | the CORE-pl | both CORE-pl | the two|three|four CORE-pl
             | all [the] CORE-pl | every CORE
    attribute   NP                                        "the big blue star", "both green shapes"
    position    the leftmost|rightmost|topmost|top|highest|bottom|lowest CORE
              | the CORE on the left|on the right|at the top|at the bottom
              | the CORE REGION                            "the shape in the bottom right corner"
    relation    NP REL the CORE       REL := [to the] left of | [to the] right of | above | below
                                             | next to | beside
    conjunction PART and PART         PART := NP | position phrase of the extreme kind
    exclusion   everything|all [the] CORE-pl|every CORE  except|but  the CORE(-pl) | the ADJ one(s)
                                                                   | the leftmost|... one
    group       everything COLOUR | everything small|big|large | everything REGION
              | [all] [the] CORE-pl REGION
    REGION  := on|in the left|right half | in the top|upper|bottom|lower half
             | in the top|bottom left|right corner

Generation picks a target category (no-target / single / multi-same / multi-mixed) and a type from a
profile, proposes a meaning that is likely to fit, *evaluates* it (meaning.py), and keeps it only if
the evaluation is unambiguous, the category and the determiner agree with the evaluated set, and the
sentence is new for the image.  The target set is therefore always the resolver's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .meaning import (Attr, Difference, Extreme, Filter, Node, Region, Relation, Union, directional,
                      directional_doubtful)
from .scene import Scene
from .vocab import (COLOURS, CORNERS, HALVES, HELD_OUT_PAIRS, MAX_WORDS, PLURAL, SHAPES, SIDES,
                    SIZE_WORDS)

# ----------------------------------------------------------------------------------------------
# Surface vocabulary
# ----------------------------------------------------------------------------------------------

REGION_PHRASES: dict[str, tuple[str, ...]] = {
    "left half": ("on the left half", "in the left half"),
    "right half": ("on the right half", "in the right half"),
    "top half": ("in the top half", "in the upper half"),
    "bottom half": ("in the bottom half", "in the lower half"),
    "top left corner": ("in the top left corner",),
    "top right corner": ("in the top right corner",),
    "bottom left corner": ("in the bottom left corner",),
    "bottom right corner": ("in the bottom right corner",),
}
# Extreme phrases: ("pre", word) -> "the <word> CORE";  ("post", phrase) -> "the CORE <phrase>".
EXTREME_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "left": (("pre", "leftmost"), ("post", "on the left")),
    "right": (("pre", "rightmost"), ("post", "on the right")),
    "top": (("pre", "top"), ("pre", "topmost"), ("pre", "highest"), ("post", "at the top")),
    "bottom": (("pre", "bottom"), ("pre", "lowest"), ("post", "at the bottom")),
}
# Words for "the <word> one" inside exclusions.
EXTREME_ONE: dict[str, tuple[str, ...]] = {
    "left": ("leftmost",), "right": ("rightmost",), "top": ("top", "topmost", "highest"),
    "bottom": ("bottom", "lowest"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
    "next to": ("next to", "beside"),
}
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}


def spatial_phrase_words() -> list[str]:
    """Every word of the region, relation and extreme phrase tables, in table order, each once."""
    phrases = [p for table in (REGION_PHRASES, RELATION_PHRASES, EXTREME_ONE) for ps in table.values() for p in ps]
    phrases += [p for ps in EXTREME_PHRASES.values() for _, p in ps]
    return list(dict.fromkeys(w for p in phrases for w in p.split()))


def structure_words() -> set[str]:
    """The words of the grammar's phrase tables that every world shares: determiners, conjunctions,
    count, size, region, relation and extreme words."""
    words = {"the", "all", "every", "both", "everything", "and", "except", "but", "one", "ones",
             *COUNT_WORDS.values(), *spatial_phrase_words()}
    for ws in SIZE_WORDS.values():
        words.update(ws)
    return words


def _vocabulary() -> frozenset[str]:
    """Every word the grammar can emit (used by tests to check the closed vocabulary)."""
    return frozenset(structure_words() | {"shape", "shapes", *COLOURS, *SHAPES, *PLURAL.values()})


VOCABULARY: frozenset[str] = _vocabulary()

TYPES: tuple[str, ...] = ("attribute", "position", "relation", "conjunction", "exclusion", "group")
NT_KINDS: tuple[str, ...] = ("absent-combination", "absent-attribute", "spatial-contradiction")


@dataclass
class Expression:
    """One generated referring expression with its meaning and its evaluated target set."""

    sentence: str
    meaning: Node
    target_ids: tuple[int, ...]
    tags: dict[str, str | None]


@dataclass(frozen=True)
class Profile:
    """Sampling weights of a split (expected shares, not quotas)."""

    category: dict[str, float]  # no-target / single / multi
    mixed: float  # P(multi-mixed | multi) requested; fallbacks lower the realised share a little
    single_types: dict[str, float]
    multi_types: dict[str, float]
    nt_kinds: dict[str, float]
    nt_types: dict[str, dict[str, float]]
    focus: float = 0.0  # testA: P(an expression must be about a held-out pair)


_NT_TYPES = {
    "absent-combination": {"attribute": 0.5, "position": 0.15, "relation": 0.2, "group": 0.15},
    "absent-attribute": {"attribute": 0.45, "position": 0.15, "relation": 0.2, "group": 0.2},
    "spatial-contradiction": {"relation": 0.6, "position": 0.25, "group": 0.15},
}
# Requested shares are tilted towards absent combinations because scenes with few objects often
# cannot host one (the fallback then moves to another kind); realised shares land near 50/30/20.
_NT_KINDS = {"absent-combination": 0.53, "absent-attribute": 0.29, "spatial-contradiction": 0.18}

BASE_PROFILE = Profile(
    category={"no-target": 0.15, "single": 0.55, "multi": 0.30},
    mixed=0.6,
    single_types={"attribute": 0.34, "position": 0.30, "relation": 0.26, "exclusion": 0.03, "group": 0.07},
    multi_types={"attribute": 0.26, "conjunction": 0.30, "exclusion": 0.14, "group": 0.16, "relation": 0.14},
    nt_kinds=_NT_KINDS,
    nt_types=_NT_TYPES,
)
TESTA_PROFILE = Profile(**{**BASE_PROFILE.__dict__, "focus": 0.95})
# testB (clutter): relation / conjunction / exclusion are up-weighted.
TESTB_PROFILE = Profile(
    category=BASE_PROFILE.category,
    mixed=0.6,
    single_types={"attribute": 0.22, "position": 0.22, "relation": 0.42, "exclusion": 0.08, "group": 0.06},
    multi_types={"attribute": 0.12, "conjunction": 0.34, "exclusion": 0.24, "group": 0.08, "relation": 0.22},
    nt_kinds=_NT_KINDS,
    nt_types={**_NT_TYPES, "absent-combination": {"attribute": 0.35, "position": 0.1, "relation": 0.4,
                                                  "group": 0.15}},
)
PROFILES: dict[str, Profile] = {"train": BASE_PROFILE, "val": BASE_PROFILE, "testA": TESTA_PROFILE,
                                "testB": TESTB_PROFILE}


def target_category(scene: Scene, ids: frozenset[int] | tuple[int, ...]) -> str:
    """single / multi-same / multi-mixed / no-target, with shape as the category."""
    if not ids:
        return "no-target"
    if len(ids) == 1:
        return "single"
    return "multi-same" if len({scene.objects[i].shape for i in ids}) == 1 else "multi-mixed"


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------

@dataclass
class _Draft:
    """A proposal: sentence + meaning + the count constraint implied by its determiner."""

    sentence: str
    meaning: Node
    count: Callable[[int], bool]
    nt_kind: str | None = None


def _any_n(n: int) -> bool:
    """Count rule of "everything ..." / exclusions: any non-empty set."""
    return n >= 1


def _sg(n: int) -> bool:
    """Singular "the X": exactly one."""
    return n == 1


def _pl(n: int) -> bool:
    """Plural / "all" / "every": at least two."""
    return n >= 2


def _exact(k: int) -> Callable[[int], bool]:
    """"both" / "the two|three|four": exactly k."""
    return lambda n: n == k


def _nt(n: int) -> bool:
    """No-target: empty."""
    return n == 0


class ExpressionGenerator:
    """Generates unambiguous, evaluated expressions for one scene.

    Args:
        scene: the scene to describe.
        rng: private random generator (the output is a pure function of its state and the scene).
        profile: mixture weights.
        focus: object indices a testA expression should be about (held-out pairs).
    """

    # The attribute filter class; a world with other category semantics (the photo world's nouns and
    # taxonomy words) substitutes its own, every filter below is built through it.
    filter_cls: type = Filter

    def __init__(self, scene: Scene, rng: np.random.Generator, profile: Profile = BASE_PROFILE,
                 focus: frozenset[int] = frozenset()) -> None:
        self.scene, self.rng, self.profile, self.focus = scene, rng, profile, focus
        objs = scene.objects
        self.all = frozenset(o.index for o in objs)
        # Attribute lexicon of the scene: every filter built from a subset of some object's attributes.
        table: dict[Filter, frozenset[int]] = {}
        for o in objs:
            for f in self.object_filters(o):
                if f not in table:
                    table[f] = f.select(objs)
        self.filters = table
        self.filter_list = sorted(table, key=lambda f: (f.shape or "", f.colour or "", f.size or ""))
        self.unique: dict[int, list[Filter]] = {o.index: [] for o in objs}
        for f in self.filter_list:
            s = table[f]
            if len(s) == 1 and f.n_attrs > 0:
                self.unique[next(iter(s))].append(f)
        self.colours = {o.colour for o in objs}
        self.shapes = {o.shape for o in objs}
        self.sizes = {o.size for o in objs}
        self.pairs = {o.pair for o in objs}
        self.used: set[str] = set()
        self._need_focus = False
        self._plural: list[Filter] | None = None

    def object_filters(self, o) -> list[Filter]:
        """Every filter naming a subset of one object's attributes (its lexicon entries)."""
        return [Filter(o.shape if use_s else None, o.colour if use_c else None, o.size if use_z else None)
                for use_s in (False, True) for use_c in (False, True) for use_z in (False, True)]

    def generic(self, f: Filter) -> bool:
        """True when a filter names no category (so it can cover several categories)."""
        return f.shape is None

    # -- small random helpers ------------------------------------------------------------------
    def _choice(self, items: list | tuple, weights: list[float] | None = None):
        """Pick one item (weights optional).

        Uses one rng.random() draw instead of rng.integers / rng.choice: the grammar makes ~150
        choices per scene and those calls are several times slower.
        """
        u = self.rng.random()
        if weights is None:
            return items[min(int(u * len(items)), len(items) - 1)]
        total = float(sum(weights))
        acc = 0.0
        for item, w in zip(items, weights):
            acc += w
            if u * total < acc:
                return item
        return items[-1]

    def _pick(self, table: dict[str, float]) -> str:
        """Weighted choice of a key."""
        keys = list(table)
        return self._choice(keys, [table[k] for k in keys])

    def _pick_object(self, pool: frozenset[int] | None = None) -> int:
        """A random object, biased to focus objects when the current slot needs focus."""
        pool = self.all if pool is None else pool
        focus = pool & self.focus
        if self._need_focus and focus and self.rng.random() < 0.85:
            pool = focus
        return self._choice(sorted(pool))

    # -- text ------------------------------------------------------------------------------------
    def core(self, f: Filter, plural: bool) -> str:
        """[size] [colour] noun."""
        words = []
        if f.size:
            words.append(self._choice(SIZE_WORDS[f.size]))
        if f.colour:
            words.append(f.colour)
        noun = f.shape or self.generic_noun
        words.append(self.plural_of(noun) if plural else noun)
        return " ".join(words)

    generic_noun = "shape"  # what an expression says when it names no category

    def plural_of(self, noun: str) -> str:
        return PLURAL[noun]

    def noun_phrase(self, f: Filter, n: int, allow_all: bool = True) -> tuple[str, Callable[[int], bool]]:
        """Determiner + core agreeing with the evaluated count n (n = 0 only for no-target)."""
        if n == 0:
            plural = self.rng.random() < 0.3
            return "the " + self.core(f, plural), _nt
        if n == 1:
            return "the " + self.core(f, False), _sg
        opts: list[tuple[str, bool, Callable[[int], bool], float]] = [("the", True, _pl, 3.0)]
        if allow_all:
            opts += [("all", True, _pl, 1.0), ("all the", True, _pl, 1.0), ("every", False, _pl, 0.6)]
        if n == 2:
            opts += [("both", True, _exact(2), 2.0), ("the two", True, _exact(2), 1.2)]
        elif n in COUNT_WORDS:
            opts += [("the " + COUNT_WORDS[n], True, _exact(n), 1.5)]
        det, plural, cnt, _ = self._choice(opts, [o[3] for o in opts])
        return f"{det} {self.core(f, plural)}", cnt

    def extreme_phrase(self, f: Filter, side: str) -> str:
        """'the leftmost circle' / 'the circle on the left'."""
        kind, word = self._choice(EXTREME_PHRASES[side])
        if kind == "pre":
            return f"the {word} {self.core(f, False)}"
        return f"the {self.core(f, False)} {word}"

    def _region(self) -> str:
        """A random half (55 %) or corner."""
        return self._choice(HALVES) if self.rng.random() < 0.55 else self._choice(CORNERS)

    # -- generators for positive expressions -------------------------------------------------
    def _sets_with(self, cond: Callable[[Filter, frozenset[int]], bool]) -> list[Filter]:
        """Scene filters whose (filter, matched set) satisfy cond."""
        return [f for f in self.filter_list if cond(f, self.filters[f])]

    def _plural_filters(self) -> list[Filter]:
        """Filters matching >= 2 objects (memoised: the hottest query of the generators)."""
        if self._plural is None:
            self._plural = self._sets_with(lambda f, s: len(s) >= 2)
        return self._plural

    def _plural_with(self, cond: Callable[[Filter, frozenset[int]], bool]) -> list[Filter]:
        """Filters matching >= 2 objects that also satisfy cond."""
        return [f for f in self._plural_filters() if cond(f, self.filters[f])]

    def _focus_pick_filter(self, fl: list[Filter]) -> Filter:
        """Choose a filter, preferring ones whose set touches the focus when focus is needed."""
        if self._need_focus:
            hit = [f for f in fl if self.filters[f] & self.focus]
            if hit and self.rng.random() < 0.85:
                fl = hit
        return self._choice(fl)

    def gen_attribute(self, want: str) -> _Draft | None:
        """Attribute NP: "the big blue star", "both green shapes", "all triangles"."""
        if want == "single":
            o = self._pick_object()
            fl = self.unique[o]
            if not fl:
                return None
            # Naming the shape is the natural default; fully over-specified phrases are rarer.
            w = [(3.0 if f.shape else 1.0) * (0.5 if f.n_attrs == 3 else 1.0) for f in fl]
            f = self._choice(fl, w)
            return _Draft("the " + self.core(f, False), Attr(f), _sg)
        fl = self._plural_with(lambda f, s: target_category(self.scene, s) == want
                             and (f.n_attrs > 0 or self.rng.random() < 0.3))
        if not fl:
            return None
        f = self._focus_pick_filter(fl)
        text, cnt = self.noun_phrase(f, len(self.filters[f]))
        return _Draft(text, Attr(f), cnt)

    def _extreme_draft(self, exclude: frozenset[int] = frozenset()) -> _Draft | None:
        """"the leftmost circle" / "the star at the top" among >= 2 candidates, disjoint from exclude."""
        fl = self._plural_filters()
        if not fl:
            return None
        f = self._focus_pick_filter(fl)
        side = self._choice(SIDES)
        node = Extreme(f, side)
        res = node.evaluate(self.scene)
        if not res.ok or res.targets & exclude:
            return None
        return _Draft(self.extreme_phrase(f, side), node, _sg)

    def gen_position(self, want: str) -> _Draft | None:
        """Absolute position (single only): an extreme phrase or a singular half/corner phrase."""
        if want != "single":
            return None
        if self.rng.random() < 0.6:
            return self._extreme_draft()
        # Singular region phrase: "the red circle in the top half".
        o = self._pick_object()
        region = self._region()
        fl = [f for f in self.filter_list if o in self.filters[f]]
        f = self._choice(fl)
        node = Region(f, region)
        res = node.evaluate(self.scene)
        if not res.ok or res.targets != frozenset({o}):
            return None
        return _Draft(f"the {self.core(f, False)} {self._choice(REGION_PHRASES[region])}", node, _sg)

    def _anchor(self, exclude: int | None = None) -> tuple[int, Filter] | None:
        """A uniquely describable landmark object and one of its unique filters."""
        pool = [i for i in sorted(self.all) if i != exclude and self.unique[i]]
        if not pool:
            return None
        a = self._choice(pool)
        fl = self.unique[a]
        f = self._choice(fl, [(3.0 if f.shape else 1.0) * (0.4 if f.n_attrs == 3 else 1.0) for f in fl])
        return a, f

    def gen_relation(self, want: str) -> _Draft | None:
        """"the square left of the green circle": seeded by a target that does stand in the relation."""
        t = self._pick_object()
        anc = self._anchor(exclude=t)
        if anc is None:
            return None
        a, fa = anc
        ot, oa = self.scene.objects[t], self.scene.objects[a]
        m = self.scene.margin
        rels = [r for r in ("left of", "right of", "above", "below") if directional(r, ot, oa, m)]
        if want == "single":
            nearest = min((o for o in self.scene.objects if o.index != a),
                          key=lambda o: (o.cx - oa.cx) ** 2 + (o.cy - oa.cy) ** 2)
            if nearest.index == t:
                rels.append("next to")
        if not rels:
            return None
        rel = self._choice(rels)
        fl = [f for f in self.filter_list if t in self.filters[f]]
        f = self._choice(fl)
        node = Relation(f, rel, Attr(fa))
        res = node.evaluate(self.scene)
        if not res.ok or t not in res.targets or target_category(self.scene, res.targets) != want:
            return None
        head, cnt = self.noun_phrase(f, len(res.targets))
        anchor = "the " + self.core(fa, False)
        return _Draft(f"{head} {self._choice(RELATION_PHRASES[rel])} {anchor}", node, cnt)

    def _part(self, exclude: frozenset[int]) -> _Draft | None:
        """A conjunct: a singular or plural attribute NP or an extreme phrase, disjoint from exclude."""
        r = self.rng.random()
        if r < 0.45:
            pool = self.all - exclude
            if not pool:
                return None
            o = self._pick_object(pool)
            if not self.unique[o]:
                return None
            f = self._choice(self.unique[o])
            return _Draft("the " + self.core(f, False), Attr(f), _sg)
        if r < 0.75:
            fl = self._plural_with(lambda f, s: not (s & exclude) and f.n_attrs > 0)
            if not fl:
                return None
            f = self._focus_pick_filter(fl)
            text, cnt = self.noun_phrase(f, len(self.filters[f]), allow_all=False)
            return _Draft(text, Attr(f), cnt)
        return self._extreme_draft(exclude)

    def gen_conjunction(self, want: str) -> _Draft | None:
        """"A and B" with non-empty disjoint parts (multi only)."""
        if want == "single":
            return None
        p1 = self._part(frozenset())
        if p1 is None:
            return None
        s1 = p1.meaning.evaluate(self.scene).targets
        p2 = self._part(s1)
        if p2 is None:
            return None
        node = Union(p1.meaning, p2.meaning)
        res = node.evaluate(self.scene)
        if not res.ok or target_category(self.scene, res.targets) != want:
            return None
        s2 = p2.meaning.evaluate(self.scene).targets
        if not (p1.count(len(s1)) and p2.count(len(s2))):
            return None
        return _Draft(f"{p1.sentence} and {p2.sentence}", node, _pl)

    def _base_phrase(self, fb: Filter) -> str:
        """Base of an exclusion: "everything", "all circles", "every red shape", ..."""
        if fb.n_attrs == 0:
            return self._choice(("everything", "all shapes", "all the shapes", "every shape"))
        r = self.rng.random()
        if r < 0.4:
            return "all " + self.core(fb, True)
        if r < 0.7:
            return "all the " + self.core(fb, True)
        return "every " + self.core(fb, False)

    def gen_exclusion(self, want: str) -> _Draft | None:
        """"all circles except the red one", "every shape but the stars", "... except the leftmost one"."""
        def base_ok(f: Filter, s: frozenset[int]) -> bool:
            if len(s) < 2:
                return False
            if want == "multi-same":
                return not self.generic(f) or len(s) >= 3
            if want == "multi-mixed":
                return self.generic(f) and len(s) >= 3
            return True

        fl = self._plural_with(base_ok)
        if not fl:
            return None
        fb = self._focus_pick_filter(fl)
        base = self.filters[fb]
        if self.rng.random() < 0.75:
            e = self._choice(sorted(base))
            oe = self.scene.objects[e]
            extra_opts = []
            for attr in ("shape", "colour", "size"):
                if getattr(fb, attr) is None:
                    extra_opts.append(attr)
            if not extra_opts:
                return None
            k = 1 if len(extra_opts) == 1 or self.rng.random() < 0.75 else 2
            chosen = [extra_opts[int(i)] for i in self.rng.choice(len(extra_opts), size=k, replace=False)]
            extra = self.filter_cls(**{a: getattr(oe, a) for a in chosen})
            fe = fb.refine(extra)
            excl_set = self.filters.get(fe, fe.select(self.scene.objects))
            if not excl_set or excl_set >= base:
                return None
            ne = len(excl_set)
            if extra.shape is not None:
                excl_text = "the " + self.core(extra, ne >= 2)
            else:
                adj = self.core(extra, False).rsplit(" ", 1)[0]  # drop the placeholder noun "shape"
                excl_text = f"the {adj} {'ones' if ne >= 2 else 'one'}"
            excl_node: Node = Attr(fe)
        else:
            side = self._choice(SIDES)
            excl_node = Extreme(fb, side)
            excl_text = f"the {self._choice(EXTREME_ONE[side])} one"
        node = Difference(Attr(fb), excl_node)
        res = node.evaluate(self.scene)
        if not res.ok or target_category(self.scene, res.targets) != want:
            return None
        conj = "except" if self.rng.random() < 0.6 else "but"
        return _Draft(f"{self._base_phrase(fb)} {conj} {excl_text}", node, _any_n)

    def gen_group(self, want: str) -> _Draft | None:
        """"everything yellow", "everything small", "all the shapes on the right half"."""
        r = self.rng.random()
        if r < 0.3 and self.colours:  # (a photo scene may have no object with a colour word)
            c = self._choice(sorted(self.colours))
            node: Node = Attr(self.filter_cls(colour=c))
            text = f"everything {c}"
        elif r < 0.4:
            z = self._choice(sorted(self.sizes))
            node = Attr(self.filter_cls(size=z))
            text = f"everything {self._choice(SIZE_WORDS[z])}"
        else:
            region = self._region()
            if want == "single" or self.rng.random() < 0.4:
                f = self.filter_cls()
            else:
                fl = self._plural_with(lambda f, s: f.n_attrs == 1 and f.size is None)
                if not fl:
                    return None
                f = self._focus_pick_filter(fl)
            node = Region(f, region)
            rp = self._choice(REGION_PHRASES[region])
            if f.n_attrs == 0:
                text = f"everything {rp}"
            else:
                det = self._choice(("all the", "the", "all"))
                text = f"{det} {self.core(f, True)} {rp}"
        res = node.evaluate(self.scene)
        if not res.ok or target_category(self.scene, res.targets) != want:
            return None
        return _Draft(text, node, _any_n if text.startswith("everything") else _pl)

    # -- no-target generators ------------------------------------------------------------------
    def _absent_filter(self, kind: str) -> Filter | None:
        """A filter that matches nothing, of the requested no-target kind."""
        if kind == "absent-combination":
            pairs = [(c, s) for c in sorted(self.colours) for s in sorted(self.shapes) if (c, s) not in self.pairs]
            sized = [(z, c, s) for (c, s) in sorted(self.pairs) for z in ("small", "large")
                     if len(self.sizes) == 2 and not Filter(s, c, z).select(self.scene.objects)]
            if self._need_focus:
                held = [p for p in pairs if p in HELD_OUT_PAIRS]
                if held:
                    pairs = held
            if sized and (not pairs or self.rng.random() < 0.25):
                z, c, s = self._choice(sized)
                return Filter(shape=s, colour=c, size=z)
            if not pairs:
                return None
            c, s = self._choice(pairs)
            z = None
            if self.rng.random() < 0.2:
                z = self._choice(sorted(self.sizes))
            return Filter(shape=s, colour=c, size=z)
        if kind == "absent-attribute":
            absent_s = [s for s in SHAPES if s not in self.shapes]
            absent_c = [c for c in COLOURS if c not in self.colours]
            if absent_s and (not absent_c or self.rng.random() < 0.5):
                s = self._choice(absent_s)
                c = self._choice(COLOURS) if self.rng.random() < 0.4 else None
                return Filter(shape=s, colour=c)
            if absent_c:
                c = self._choice(absent_c)
                s = self._choice(SHAPES) if self.rng.random() < 0.5 else None
                return Filter(shape=s, colour=c)
            return None
        raise ValueError(kind)

    def gen_no_target(self, kind: str, typ: str) -> _Draft | None:
        """A no-target draft of the given kind rendered as the given type."""
        if kind == "spatial-contradiction":
            return self._spatial_contradiction(typ)
        f = self._absent_filter(kind)
        if f is None:
            return None
        if typ == "attribute":
            text, cnt = self.noun_phrase(f, 0)
            return _Draft(text, Attr(f), cnt)
        if typ == "position":
            if self.rng.random() < 0.6:
                side = self._choice(SIDES)
                return _Draft(self.extreme_phrase(f, side), Extreme(f, side), _nt)
            region = self._region()
            return _Draft(f"the {self.core(f, False)} {self._choice(REGION_PHRASES[region])}",
                          Region(f, region), _nt)
        if typ == "relation":
            anc = self._anchor()
            if anc is None:
                return None
            rel = self._choice(list(RELATION_PHRASES))
            plural = rel != "next to" and self.rng.random() < 0.3
            text = (f"the {self.core(f, plural)} {self._choice(RELATION_PHRASES[rel])} "
                    f"the {self.core(anc[1], False)}")
            return _Draft(text, Relation(f, rel, Attr(anc[1])), _nt)
        if typ == "group":
            if f.shape is None and f.size is None and self.rng.random() < 0.6:
                return _Draft(f"everything {f.colour}", Attr(f), _nt)
            region = self._region()
            det = self._choice(("all the", "the"))
            return _Draft(f"{det} {self.core(f, True)} {self._choice(REGION_PHRASES[region])}",
                          Region(f, region), _nt)
        return None

    def _spatial_contradiction(self, typ: str) -> _Draft | None:
        """Existing objects in the wrong place: "the star left of the red square" when it is right of it."""
        if typ == "relation":
            anc = self._anchor()
            if anc is None:
                return None
            a, fa = anc
            if len(self.all) < 2:  # (photo scenes may hold a single object)
                return None
            t = self._pick_object(self.all - {a})
            fl = [f for f in self.filter_list if t in self.filters[f] and self.filters[f] - {a}]
            f = self._choice(fl)
            oa = self.scene.objects[a]
            cands = [self.scene.objects[i] for i in self.filters[f] if i != a]
            m = self.scene.margin
            rels = [r for r in ("left of", "right of", "above", "below")
                    if not any(directional(r, o, oa, m) or directional_doubtful(r, o, oa, m) for o in cands)]
            if not rels:
                return None
            rel = self._choice(rels)
            plural = len(cands) >= 2 and self.rng.random() < 0.5
            text = (f"the {self.core(f, plural)} {self._choice(RELATION_PHRASES[rel])} "
                    f"the {self.core(fa, False)}")
            return _Draft(text, Relation(f, rel, Attr(fa)), _nt)
        region = self._region()
        if typ == "position":
            o = self._pick_object()
            f = self._choice([f for f in self.filter_list if o in self.filters[f] and f.n_attrs > 0])
            return _Draft(f"the {self.core(f, False)} {self._choice(REGION_PHRASES[region])}",
                          Region(f, region), _nt)
        if typ == "group":
            rp = self._choice(REGION_PHRASES[region])
            if self.rng.random() < 0.4:
                return _Draft(f"everything {rp}", Region(self.filter_cls(), region), _nt)
            fl = self._sets_with(lambda f, s: len(s) >= 1 and f.n_attrs == 1 and f.size is None)
            f = self._choice(fl)
            return _Draft(f"{self._choice(('all the', 'the'))} {self.core(f, True)} {rp}", Region(f, region), _nt)
        return None

    # -- driver ----------------------------------------------------------------------------------
    def _about_focus(self, d: _Draft, targets: frozenset[int]) -> bool:
        """testA: does the expression target or mention a held-out (colour, shape) pair?"""
        if targets & self.focus:
            return True
        return any(f.shape and f.colour and (f.colour, f.shape) in HELD_OUT_PAIRS for f in d.meaning.filters())

    def _finalise(self, d: _Draft | None, typ: str, want: str, nt_kind: str | None) -> Expression | None:
        """Evaluate a draft and accept it only if everything about it is consistent."""
        if d is None:
            return None
        res = d.meaning.evaluate(self.scene)
        if not res.ok:
            return None
        cat = target_category(self.scene, res.targets)
        if cat != want or not d.count(len(res.targets)):
            return None
        words = d.sentence.split()
        if len(words) > MAX_WORDS or d.sentence in self.used:
            return None
        if self._need_focus and not self._about_focus(d, res.targets):
            return None
        self.used.add(d.sentence)
        return Expression(sentence=d.sentence, meaning=d.meaning, target_ids=tuple(sorted(res.targets)),
                          tags={"target": cat, "type": typ, "nt_kind": nt_kind})

    def _try(self, want: str, nt_kind: str | None, typ: str) -> Expression | None:
        """One proposal for a fixed wanted category, no-target kind and type."""
        if want == "no-target":
            assert nt_kind is not None
            return self._finalise(self.gen_no_target(nt_kind, typ), typ, want, nt_kind)
        return self._finalise(getattr(self, "gen_" + typ)(want), typ, want, None)

    def _draw_type(self, want: str, nt_kind: str | None) -> str:
        """Type for a wanted category from the profile."""
        p = self.profile
        if want == "no-target":
            return self._pick(p.nt_types[nt_kind])  # type: ignore[index]
        return self._pick(p.single_types if want == "single" else p.multi_types)

    def _draw_want(self) -> tuple[str, str | None]:
        """Draw the wanted category of one slot (and its no-target kind)."""
        p = self.profile
        cat = self._pick(p.category)
        if cat == "multi":
            return ("multi-mixed" if self.rng.random() < p.mixed else "multi-same"), None
        if cat == "no-target":
            return cat, self._pick(p.nt_kinds)
        return cat, None

    def _feasible(self, want: str, kind: str | None) -> bool:
        """Cheap necessary conditions, so that impossible wants are skipped instead of retried."""
        shape_counts = [sum(o.shape == sh for o in self.scene.objects) for sh in self.shapes]
        if want == "multi-same":
            return max(shape_counts) >= 2
        if want == "multi-mixed":
            return len(self.shapes) >= 2
        if kind == "absent-combination":
            return (len(self.colours) * len(self.shapes) > len(self.pairs)
                    or (len(self.sizes) == 2 and any(len(self.filters[Filter(s, c)]) < 2 or
                                                     len({self.scene.objects[i].size for i in self.filters[Filter(s, c)]}) < 2
                                                     for c, s in self.pairs)))
        return True

    def _fallback(self, want: str, kind: str | None) -> tuple[str, str | None]:
        """Same family first: multi-same <-> multi-mixed, one no-target kind -> another."""
        if want.startswith("multi"):
            return ("multi-same" if want == "multi-mixed" else "multi-mixed"), None
        if want == "no-target":
            return want, self._pick({k: v for k, v in self.profile.nt_kinds.items() if k != kind})
        return self._draw_want()

    def generate(self, n: int) -> list[Expression]:
        """n expressions (sentences unique within the image).

        Proposals are retried with the wanted category fixed and each drawn type fixed for a few
        attempts, so that hard-but-possible cases (relations, deceptive absent combinations, ...)
        keep their share instead of silently losing it to easy attribute phrases.  When the scene
        cannot produce the wanted case, the fallback stays in the same family first (multi-same ->
        multi-mixed, one no-target kind -> another) and only then re-draws the category.
        """
        out: list[Expression] = []
        for _ in range(n):
            self._need_focus = bool(self.focus) and self.rng.random() < self.profile.focus
            want, kind = self._draw_want()
            if not self._feasible(want, kind):
                want, kind = self._fallback(want, kind)
            typ = self._draw_type(want, kind)
            expr = None
            for attempt in range(1, 241):
                expr = self._try(want, kind, typ)
                if expr is not None:
                    break
                if attempt % 80 == 0:
                    if attempt == 80 and want != "single":
                        want, kind = self._fallback(want, kind)
                    else:
                        self._need_focus = False  # give up on the testA focus before giving up at all
                        want, kind = self._draw_want()
                if attempt % 8 == 0:
                    typ = self._draw_type(want, kind)
            if expr is None:  # pragma: no cover - scenes always admit some expression
                raise RuntimeError("SynthGRES: could not generate an expression for this scene")
            out.append(expr)
        return out


def focus_objects(scene: Scene) -> frozenset[int]:
    """Indices of objects whose (colour, shape) is a testA held-out pair."""
    return frozenset(o.index for o in scene.objects if o.pair in HELD_OUT_PAIRS)


def generate_expressions(scene: Scene, rng: np.random.Generator, n: int, split: str = "train") -> list[Expression]:
    """Generate n evaluated expressions for a scene with the split's profile."""
    focus = focus_objects(scene) if split == "testA" else frozenset()
    return ExpressionGenerator(scene, rng, PROFILES[split], focus).generate(n)
