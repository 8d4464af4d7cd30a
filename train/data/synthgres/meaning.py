"""Meaning structures of SynthGRES expressions and the resolver that evaluates them on a scene.

Every expression is generated as a small tree of these nodes; its target set is obtained by
*evaluating* the tree on the object list (never read off the template).  The spatial words follow the
pinned definitions of the spec (cx, cy = centre of the full shape, m = 0.1 * min(W, H)):

* "A left of B":  cx_A < cx_B - m  and  |cx_A - cx_B| > |cy_A - cy_B|  (right of / above / below alike)
* "next to B":    the object nearest to B (of any kind; the phrase's noun must then fit it); the
                  second nearest object must be >= m farther
* leftmost / top / "on the left" ...: the extreme candidate, at least m ahead of the next one
* halves / corners: centre inside the half / quadrant and >= m/2 away from every dividing line

Besides the set, evaluation reports `ok`: False when the phrase has no single reading in this scene
(an extreme without margin, a non-unique anchor, or a candidate that sits in the "doubtful" band of a
spatial word — e.g. 0.04 W left of the centre line for "left half").  Generators drop such phrases,
so every emitted expression has exactly one reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from .scene import Scene, SceneObject


@dataclass(frozen=True)
class Filter:
    """Conjunction of attribute constraints; None = unconstrained."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None

    def matches(self, o: "SceneObject") -> bool:
        """True if the object has every constrained attribute."""
        return ((self.shape is None or o.shape == self.shape)
                and (self.colour is None or o.colour == self.colour)
                and (self.size is None or o.size == self.size))

    def select(self, objects: Iterable["SceneObject"]) -> frozenset[int]:
        """Indices of matching objects."""
        return frozenset(o.index for o in objects if self.matches(o))

    @property
    def n_attrs(self) -> int:
        """Number of constrained attributes."""
        return (self.shape is not None) + (self.colour is not None) + (self.size is not None)

    def refine(self, other: "Filter") -> "Filter":
        """Conjunction of two filters (other's constraints override; callers never let them clash)."""
        return type(self)(shape=other.shape or self.shape, colour=other.colour or self.colour,
                          size=other.size or self.size)


@dataclass(frozen=True)
class Result:
    """Evaluation result: the target set and whether the reading is unambiguous."""

    targets: frozenset[int]
    ok: bool = True


# ----------------------------------------------------------------------------------------------
# Spatial predicates (pinned definitions + "doubtful" bands used only to reject ambiguous phrases)
# ----------------------------------------------------------------------------------------------

def _axis_gap(rel: str, a: "SceneObject", b: "SceneObject") -> tuple[float, float]:
    """(gap along the relation's axis in its direction, absolute gap across it) for 'a rel b'."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if rel == "left of":
        return -dx, abs(dy)
    if rel == "right of":
        return dx, abs(dy)
    if rel == "above":
        return -dy, abs(dx)
    if rel == "below":
        return dy, abs(dx)
    raise ValueError(rel)


def directional(rel: str, a: "SceneObject", b: "SceneObject", m: float) -> bool:
    """Spec definition of 'a left of / right of / above / below b'."""
    along, across = _axis_gap(rel, a, b)
    return along > m and along > across


def directional_doubtful(rel: str, a: "SceneObject", b: "SceneObject", m: float) -> bool:
    """True if a human could plausibly read 'a rel b' although the strict definition says no."""
    if directional(rel, a, b, m):
        return False
    along, across = _axis_gap(rel, a, b)
    return along > 0.5 * m and along > 0.6 * across


def region_status(region: str, o: "SceneObject", width: int, height: int, m: float) -> tuple[bool, bool]:
    """(strictly inside, doubtful) for a half or corner, per the m/2 margin rule."""
    half = 0.5 * m
    tests: list[float] = []  # signed distance past each dividing line, positive = on the region side
    words = region.split()
    if "left" in words:
        tests.append(width / 2 - o.cx)
    if "right" in words:
        tests.append(o.cx - width / 2)
    if "top" in words:
        tests.append(height / 2 - o.cy)
    if "bottom" in words:
        tests.append(o.cy - height / 2)
    inside = all(t >= half for t in tests)
    relaxed = all(t > -half for t in tests)
    return inside, (relaxed and not inside)


def side_key(side: str, o: "SceneObject") -> float:
    """Sort key: smaller = more extreme towards `side`."""
    return {"left": o.cx, "right": -o.cx, "top": o.cy, "bottom": -o.cy}[side]


# ----------------------------------------------------------------------------------------------
# Nodes
# ----------------------------------------------------------------------------------------------

class Node:
    """Base class of meaning nodes."""

    def evaluate(self, scene: "Scene") -> Result:  # pragma: no cover - abstract
        raise NotImplementedError

    def filters(self) -> list[Filter]:
        """All attribute filters mentioned anywhere in the tree (for held-out-pair bookkeeping)."""
        return []


@dataclass(frozen=True)
class Attr(Node):
    """Objects matching an attribute filter ("the red circle", "all triangles", "everything red")."""

    filt: Filter

    def evaluate(self, scene: "Scene") -> Result:
        return Result(self.filt.select(scene.objects))

    def filters(self) -> list[Filter]:
        return [self.filt]


@dataclass(frozen=True)
class Extreme(Node):
    """The extreme candidate towards a side ("the leftmost square", "the circle on the left")."""

    filt: Filter
    side: str

    def evaluate(self, scene: "Scene") -> Result:
        cands = sorted((o for o in scene.objects if self.filt.matches(o)), key=lambda o: side_key(self.side, o))
        if not cands:
            return Result(frozenset())
        if len(cands) == 1:
            return Result(frozenset({cands[0].index}))
        gap = side_key(self.side, cands[1]) - side_key(self.side, cands[0])
        return Result(frozenset({cands[0].index}), ok=gap >= scene.margin)

    def filters(self) -> list[Filter]:
        return [self.filt]


@dataclass(frozen=True)
class Region(Node):
    """Candidates whose centre lies in a half or corner of the canvas."""

    filt: Filter
    region: str

    def evaluate(self, scene: "Scene") -> Result:
        m, inside, ok = scene.margin, set(), True
        for o in scene.objects:
            if not self.filt.matches(o):
                continue
            strict, doubt = region_status(self.region, o, scene.width, scene.height, m)
            if strict:
                inside.add(o.index)
            ok &= not doubt
        return Result(frozenset(inside), ok)

    def filters(self) -> list[Filter]:
        return [self.filt]


@dataclass(frozen=True)
class Relation(Node):
    """Candidates standing in a spatial relation to a uniquely described anchor."""

    filt: Filter
    rel: str
    anchor: Node

    def evaluate(self, scene: "Scene") -> Result:
        a = self.anchor.evaluate(scene)
        if not a.ok or len(a.targets) > 1:
            return Result(frozenset(), ok=False)  # an anchor must be unique to be a landmark
        if not a.targets:
            return Result(frozenset())
        b = scene.objects[next(iter(a.targets))]
        m = scene.margin
        if self.rel == "next to":
            # "X next to B" = the object nearest to B (among *all* other objects), if it is an X.
            # Taking the nearest X instead would let "the cross next to the circle" pick a cross on
            # the far side of the canvas just because it is the only cross.
            others = sorted((math.hypot(o.cx - b.cx, o.cy - b.cy), o.index) for o in scene.objects
                            if o.index != b.index)
            if not others:
                return Result(frozenset())
            ok = len(others) == 1 or others[1][0] - others[0][0] >= m
            nearest = scene.objects[others[0][1]]
            return Result(frozenset({nearest.index}) if self.filt.matches(nearest) else frozenset(), ok)
        cands = [o for o in scene.objects if o.index != b.index and self.filt.matches(o)]
        hits = frozenset(o.index for o in cands if directional(self.rel, o, b, m))
        ok = not any(directional_doubtful(self.rel, o, b, m) for o in cands)
        return Result(hits, ok)

    def filters(self) -> list[Filter]:
        return [self.filt] + self.anchor.filters()


@dataclass(frozen=True)
class Union(Node):
    """Conjunction "A and B": union of two non-empty, disjoint parts."""

    left: Node
    right: Node

    def evaluate(self, scene: "Scene") -> Result:
        a, b = self.left.evaluate(scene), self.right.evaluate(scene)
        # Each part must be non-empty and the parts disjoint, else "A and B" misleads.
        ok = a.ok and b.ok and bool(a.targets) and bool(b.targets) and not (a.targets & b.targets)
        return Result(a.targets | b.targets, ok)

    def filters(self) -> list[Filter]:
        return self.left.filters() + self.right.filters()


@dataclass(frozen=True)
class Difference(Node):
    """Exclusion "all A except B": set difference; B must be a non-empty proper subset of A."""

    base: Node
    excluded: Node

    def evaluate(self, scene: "Scene") -> Result:
        a, b = self.base.evaluate(scene), self.excluded.evaluate(scene)
        ok = a.ok and b.ok and bool(b.targets) and b.targets < a.targets
        return Result(a.targets - b.targets, ok)

    def filters(self) -> list[Filter]:
        return self.base.filters() + self.excluded.filters()
