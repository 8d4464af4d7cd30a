"""Scene generation and rendering for SynthGRES.

A scene is a low-saturation background (gradient / noise / stripes / checker) with 0-3 irregular
low-saturation distractor blobs, plus 2-8 saturated objects (shape x colour x size class), placed by
rejection sampling and painted in z-order.  Every object keeps its full-shape mask and its *visible*
mask (full mask minus everything painted above it); the visible mask is the segmentation target.

Speed matters (the dataset must deliver >= 300 samples/s on one core), so shapes are rasterised with
cv2 inside their own bounding box and overlap tests only look at bounding-box intersections.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .vocab import COLOUR_RGB, COLOURS, HELD_OUT_PAIRS, SHAPES

# Fixed-point precision for cv2 drawing (coordinates are multiplied by 2**_SHIFT) so that shapes
# keep sub-pixel accuracy instead of snapping every vertex to the integer grid.
_SHIFT = 4
_SCALE = float(1 << _SHIFT)

MAX_OVERLAP = 0.25  # overlap of two full shapes must stay below this fraction of the smaller one
MIN_VISIBLE = 0.40  # every object keeps at least this fraction of its full area visible
MAX_SQUARE_ROTATION = 0.5  # radians; a square turned by more could read as a diamond and vice versa


def _regular_star(points: int, outer: float, inner: float) -> np.ndarray:
    """Vertices of a star polygon centred at the origin, first tip pointing up."""
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    """Classic parametric heart, normalised so its extent radius is about 1.05."""
    t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2  # centre the bounding box so cx, cy is the visual centre
    return pts / 16.0


def _cross(arm: float = 0.34, length: float = 1.0) -> np.ndarray:
    """Plus-shaped cross (12 vertices) centred at the origin."""
    a, l = arm, length
    return np.array([(-a, -l), (a, -l), (a, -a), (l, -a), (l, a), (a, a), (a, l), (-a, l), (-a, a),
                     (-l, a), (-l, -a), (-a, -a)], dtype=np.float64)


# Unit-radius polygon templates.  Scales are chosen so that all shapes of one size class have a
# similar visual area; the circle and the ring are drawn with cv2.circle instead.
_TEMPLATES: dict[str, np.ndarray] = {
    "square": np.array([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]),
    # An elongated rhombus: even at the maximal +-0.5 rad it differs from a square in angle and aspect.
    "diamond": np.array([(0.0, -1.08), (0.74, 0.0), (0.0, 1.08), (-0.74, 0.0)]),
    "triangle": _regular_star(3, 1.12, 1.12)[::2],
    "star": _regular_star(5, 1.12, 0.47),
    "heart": _heart(),
    "cross": _cross(),
}
_EXTENT: dict[str, float] = {name: float(np.linalg.norm(p, axis=1).max()) for name, p in _TEMPLATES.items()}
_EXTENT.update({"circle": 1.0, "ring": 1.0})
RING_INNER = 0.55  # inner radius of a ring as a fraction of its outer radius

# Rotation range per shape (radians, uniform in [-r, r]); symmetric shapes only need one period.
_ROTATION: dict[str, float] = {
    "circle": 0.0, "ring": 0.0, "square": MAX_SQUARE_ROTATION, "diamond": MAX_SQUARE_ROTATION,
    "triangle": math.pi / 3, "star": math.pi / 5, "heart": 0.6, "cross": math.pi / 4,
}


@dataclass
class SceneObject:
    """One referable object.  Coordinates are in pixels, (cx, cy) is the centre of the full shape."""

    index: int
    shape: str
    colour: str
    size: str  # "small" | "large"
    radius: float
    cx: float
    cy: float
    rotation: float
    rgb: tuple[int, int, int]
    z: int = 0  # paint order, 0 = bottom-most
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (exclusive) of the full shape
    local_mask: np.ndarray = field(default=None, repr=False)  # full shape inside bbox, bool
    full_mask: np.ndarray = field(default=None, repr=False)  # (H, W) bool
    visible_mask: np.ndarray = field(default=None, repr=False)  # (H, W) bool

    @property
    def pair(self) -> tuple[str, str]:
        """(colour, shape) — the unit of the testA held-out split."""
        return (self.colour, self.shape)

    @property
    def area(self) -> int:
        """Pixel area of the full shape."""
        return int(np.count_nonzero(self.local_mask))

    @property
    def visible_fraction(self) -> float:
        """Visible pixels / full-shape pixels."""
        return float(np.count_nonzero(self.visible_mask)) / max(self.area, 1)


@dataclass
class Scene:
    """A rendered SynthGRES scene.  `objects[i].index == i`; target_ids index this list."""

    height: int
    width: int
    split: str
    objects: list[SceneObject]
    background: np.ndarray  # (H, W, 3) uint8: background texture plus distractor blobs
    background_kind: str
    n_blobs: int
    image: np.ndarray  # (H, W, 3) uint8 RGB, the final rendering
    world: str = "shapes"  # "shapes" or "photo" (objects are SceneObject or photo_scene.PhotoObject)

    @property
    def margin(self) -> float:
        """m = 0.1 * min(W, H), the spatial-word margin of the spec."""
        return 0.1 * min(self.width, self.height)

    def union_mask(self, ids: list[int] | tuple[int, ...] | frozenset[int]) -> np.ndarray:
        """Union of the visible masks of `ids` (all False for an empty list)."""
        out = np.zeros((self.height, self.width), dtype=bool)
        for i in ids:
            out |= self.objects[i].visible_mask
        return out


# ----------------------------------------------------------------------------------------------
# Rasterisation
# ----------------------------------------------------------------------------------------------

def _rasterise(shape: str, radius: float, cx: float, cy: float, rotation: float,
               height: int, width: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Rasterise one shape into its (clipped) bounding box.  Returns (bbox, local bool mask)."""
    ext = _EXTENT[shape] * radius + 2.0
    x0, y0 = max(int(math.floor(cx - ext)), 0), max(int(math.floor(cy - ext)), 0)
    x1, y1 = min(int(math.ceil(cx + ext)) + 1, width), min(int(math.ceil(cy + ext)) + 1, height)
    local = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    lx, ly = cx - x0, cy - y0
    if shape in ("circle", "ring"):
        centre = (int(round(lx * _SCALE)), int(round(ly * _SCALE)))
        cv2.circle(local, centre, int(round(radius * _SCALE)), 1, -1, cv2.LINE_8, _SHIFT)
        if shape == "ring":
            cv2.circle(local, centre, int(round(radius * RING_INNER * _SCALE)), 0, -1, cv2.LINE_8, _SHIFT)
    else:
        c, s = math.cos(rotation), math.sin(rotation)
        pts = _TEMPLATES[shape] @ np.array([[c, s], [-s, c]]) * radius
        pts = np.round((pts + (lx, ly)) * _SCALE).astype(np.int32)
        cv2.fillPoly(local, [pts], 1, cv2.LINE_8, _SHIFT)
    return (x0, y0, x1, y1), local.astype(bool)


def _overlap(b1: tuple[int, int, int, int], m1: np.ndarray,
             b2: tuple[int, int, int, int], m2: np.ndarray) -> int:
    """Number of pixels shared by two bbox-local masks (0 fast path when the boxes are disjoint)."""
    x0, y0 = max(b1[0], b2[0]), max(b1[1], b2[1])
    x1, y1 = min(b1[2], b2[2]), min(b1[3], b2[3])
    if x0 >= x1 or y0 >= y1:
        return 0
    a = m1[y0 - b1[1]:y1 - b1[1], x0 - b1[0]:x1 - b1[0]]
    b = m2[y0 - b2[1]:y1 - b2[1], x0 - b2[0]:x1 - b2[0]]
    return int(np.count_nonzero(a & b))


# ----------------------------------------------------------------------------------------------
# Colours and background
# ----------------------------------------------------------------------------------------------

def _jitter_colour(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    """Small per-object shade jitter in HSV that keeps the colour name unambiguous."""
    r, g, b = (v / 255.0 for v in COLOUR_RGB[colour])
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + rng.uniform(-0.012, 0.012)) % 1.0
    s = min(1.0, s * rng.uniform(0.88, 1.05))
    v = min(1.0, v * rng.uniform(0.93, 1.04))  # darker yellows read as olive/brown, so stay bright
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def _low_sat_colour(rng: np.random.Generator, v_range: tuple[float, float] = (0.35, 0.9)) -> np.ndarray:
    """A random low-saturation RGB colour in [0, 255] (float32)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.0, 0.2), rng.uniform(*v_range)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _shift_value(rng: np.random.Generator, rgb: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Brighten or darken a colour by a random amount in [lo, hi] (fraction of 255)."""
    delta = rng.uniform(lo, hi) * 255.0 * (1 if rng.random() < 0.5 else -1)
    if np.any(rgb + delta > 255) or np.any(rgb + delta < 0):
        delta = -delta  # go the other way rather than clipping into a flat colour
    return np.clip(rgb + delta, 0, 255)


def make_background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """Low-saturation background: gradient, noise texture, faint stripes or faint checker.

    Smooth kinds are computed on a coarse grid and upsampled with cv2 (exact for a linear gradient);
    the crisp kinds only do single-channel integer work at full resolution.  This keeps the
    background at well under a millisecond, it used to dominate the scene cost.
    """
    kind = ("gradient", "noise", "stripes", "checker")[int(rng.integers(4))]
    c1 = _low_sat_colour(rng)
    if kind in ("gradient", "noise"):
        cell = 8 if kind == "gradient" else int(rng.integers(8, 24))
        gh, gw = height // cell + 2, width // cell + 2
        if kind == "gradient":
            c2 = _low_sat_colour(rng)
            ang = rng.uniform(0, 2 * math.pi)
            proj = (np.arange(gw, dtype=np.float32)[None, :] * math.cos(ang)
                    + np.arange(gh, dtype=np.float32)[:, None] * math.sin(ang))
            t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
            small = c1 + t[..., None] * (c2 - c1)
            interp = cv2.INTER_LINEAR
        else:
            # One luminance channel broadcast to RGB: per-channel noise would add colourful speckle,
            # and the background must stay low-saturation.
            coarse = rng.normal(0.0, rng.uniform(6, 14), size=(gh, gw, 1)).astype(np.float32)
            small = c1 + coarse
            interp = cv2.INTER_CUBIC
        small = np.clip(small, 0, 255).astype(np.uint8)
        return cv2.resize(small, (width, height), interpolation=interp), kind
    c2 = _shift_value(rng, c1, 0.03, 0.08)
    period = rng.uniform(10, 40)
    if kind == "stripes":
        ang = rng.uniform(0, math.pi)
        proj = (np.arange(width, dtype=np.float32)[None, :] * (math.cos(ang) / period)
                + np.arange(height, dtype=np.float32)[:, None] * (math.sin(ang) / period))
        sel = ((2.0 * (proj - proj.min())).astype(np.int32) & 1).astype(bool)  # half-period bands
    else:
        cx = (np.arange(width) / period).astype(np.int32)[None, :]
        cy = (np.arange(height) / period).astype(np.int32)[:, None]
        sel = ((cx + cy) & 1).astype(bool)
    # Two-entry colour lookup via cv2.LUT: ~5x faster than boolean or fancy indexing in numpy.
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[0, 0], lut[1, 0] = c2.astype(np.uint8), c1.astype(np.uint8)
    idx = sel.view(np.uint8)
    return cv2.LUT(cv2.merge([idx, idx, idx]), lut), kind


def _draw_blobs(rng: np.random.Generator, img: np.ndarray, n: int) -> None:
    """Paint n irregular low-saturation blobs (never referred to) onto the background, in place."""
    height, width = img.shape[:2]
    short = min(height, width)
    for _ in range(n):
        r = rng.uniform(0.05, 0.13) * short
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        k = 20
        ang = np.linspace(0, 2 * math.pi, k, endpoint=False)
        # Radius modulated by two random low-frequency harmonics -> a smooth irregular outline that is
        # clearly none of the eight object shapes.
        wobble = (0.25 * np.sin(2 * ang + rng.uniform(0, 6.3)) + 0.18 * np.sin(3 * ang + rng.uniform(0, 6.3))
                  + 0.1 * rng.uniform(-1, 1, k))
        rad = r * (1.0 + wobble)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        pts = np.round(pts * _SCALE).astype(np.int32)
        base = img[int(np.clip(cy, 0, height - 1)), int(np.clip(cx, 0, width - 1))].astype(np.float32)
        col = _shift_value(rng, base, 0.1, 0.22)
        # Re-tint slightly so the blob is not just a darker copy of the background.
        col = 0.75 * col + 0.25 * _low_sat_colour(rng)
        cv2.fillPoly(img, [pts], tuple(float(c) for c in col), cv2.LINE_AA, _SHIFT)


# ----------------------------------------------------------------------------------------------
# Scene generation
# ----------------------------------------------------------------------------------------------

def _sample_pairs(rng: np.random.Generator, n: int, split: str) -> list[tuple[str, str]]:
    """Draw n (colour, shape) pairs respecting the testA hold-out."""
    all_pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "testA":
        held = sorted(HELD_OUT_PAIRS)
        n_held = 1 if n < 4 or rng.random() < 0.5 else 2
        pairs = [held[int(i)] for i in rng.choice(len(held), size=n_held, replace=False)]
        pairs += [all_pairs[int(i)] for i in rng.integers(len(all_pairs), size=n - n_held)]
        order = rng.permutation(n)
        return [pairs[int(i)] for i in order]
    allowed = [p for p in all_pairs if p not in HELD_OUT_PAIRS]
    return [allowed[int(i)] for i in rng.integers(len(allowed), size=n)]


def _radius(rng: np.random.Generator, size: str, short: int) -> float:
    """Radius for a size class: [0.05, 0.08] or [0.11, 0.16] * min(W, H)."""
    lo, hi = (0.05, 0.08) if size == "small" else (0.11, 0.16)
    return rng.uniform(lo, hi) * short


def _try_place(rng: np.random.Generator, height: int, width: int,
               specs: list[tuple[str, str, str]], clutter: bool) -> list[SceneObject] | None:
    """Rejection-sample positions for all specs; None if some object could not be placed."""
    short = min(height, width)
    placed: list[SceneObject] = []
    for colour, shape, size in specs:
        ok = False
        for attempt in range(80):
            if attempt == 40 and size == "large":
                size = "small"  # crowded canvas: shrink rather than give up on the object count
            r = _radius(rng, size, short)
            ext = _EXTENT[shape] * r + 1.0
            if 2 * ext >= min(width, height):
                continue
            if clutter and placed and rng.random() < 0.6:
                # testB: put the object right next to an existing one so that occlusion is frequent.
                other = placed[int(rng.integers(len(placed)))]
                ang = rng.uniform(0, 2 * math.pi)
                dist = (other.radius + r) * rng.uniform(0.55, 0.95)
                cx, cy = other.cx + dist * math.cos(ang), other.cy + dist * math.sin(ang)
                if not (ext <= cx <= width - ext and ext <= cy <= height - ext):
                    continue
            else:
                cx, cy = rng.uniform(ext, width - ext), rng.uniform(ext, height - ext)
            rot = rng.uniform(-_ROTATION[shape], _ROTATION[shape]) if _ROTATION[shape] else 0.0
            bbox, local = _rasterise(shape, r, cx, cy, rot, height, width)
            area = int(np.count_nonzero(local))
            good = True
            for o in placed:
                inter = _overlap(bbox, local, o.bbox, o.local_mask)
                if inter >= MAX_OVERLAP * min(area, o.area):
                    good = False
                    break
            if good:
                placed.append(SceneObject(index=len(placed), shape=shape, colour=colour, size=size, radius=r,
                                          cx=cx, cy=cy, rotation=rot, rgb=(0, 0, 0), bbox=bbox,
                                          local_mask=local))
                ok = True
                break
        if not ok:
            return None
    return placed


def _assign_visibility(objects: list[SceneObject], z_order: np.ndarray, height: int, width: int) -> bool:
    """Set z, full and visible masks for a z-order; False if some object is < MIN_VISIBLE visible."""
    covered = np.zeros((height, width), dtype=bool)
    for z in range(len(objects) - 1, -1, -1):  # top-most first
        o = objects[int(z_order[z])]
        o.z = z
        full = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = o.bbox
        full[y0:y1, x0:x1] = o.local_mask
        vis = full & ~covered
        if np.count_nonzero(vis) < MIN_VISIBLE * o.area:
            return False
        covered |= full
        o.full_mask, o.visible_mask = full, vis
    return True


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Paint the objects over the background in z-order and return the RGB image.

    Each object gets a faint linear shading and a 1-px darker rim drawn *inside* its own mask, so the
    rendered pixels of an object are exactly its visible mask (no anti-aliasing bleed) while touching
    objects of the same colour remain separable by eye.
    """
    img = scene.background.copy()
    kernel = np.ones((3, 3), np.uint8)
    for o in sorted(scene.objects, key=lambda ob: ob.z):
        x0, y0, x1, y1 = o.bbox
        h, w = y1 - y0, x1 - x0
        ang = rng.uniform(0, 2 * math.pi)
        gx = (np.arange(w, dtype=np.float32) + x0 - o.cx) * (math.cos(ang) / o.radius)
        gy = (np.arange(h, dtype=np.float32) + y0 - o.cy) * (math.sin(ang) / o.radius)
        ramp = gy[:, None] + gx[None, :]
        # Per channel: saturate(rgb_c * (1 + 0.06 * ramp)); cv2 does scale, offset and uint8
        # saturation in one pass, far cheaper than float numpy + clip on small arrays.
        col = cv2.merge([cv2.convertScaleAbs(ramp, alpha=0.06 * c, beta=float(c)) for c in o.rgb])
        m = o.local_mask.view(np.uint8)
        inner = cv2.erode(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        rim = np.empty_like(col)
        rim[:] = tuple(int(c * 0.72) for c in o.rgb)
        # cv2.copyTo needs contiguous buffers, so paint into a copy of the crop and write it back.
        tile = img[y0:y1, x0:x1].copy()
        cv2.copyTo(rim, m, tile)  # whole shape in the rim colour ...
        cv2.copyTo(col, inner, tile)  # ... then the shaded interior over it
        img[y0:y1, x0:x1] = tile
    return img


def generate_scene(rng: np.random.Generator, size: int | tuple[int, int] = 320, split: str = "train") -> Scene:
    """Generate and render one scene.

    Args:
        rng: the scene's private random generator (the scene is a pure function of its state).
        size: int for a square canvas, or (height, width).
        split: "train" | "val" | "testA" | "testB" — controls object count, pairs and clutter.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(height, width) < 32:
        raise ValueError(f"canvas too small for SynthGRES: {height}x{width}")
    background, kind = make_background(rng, height, width)
    n_blobs = int(rng.integers(0, 4))
    _draw_blobs(rng, background, n_blobs)

    clutter = split == "testB"
    objects: list[SceneObject] | None = None
    for _ in range(50):
        n = int(rng.integers(5, 9)) if clutter else int(rng.integers(2, 7))
        pairs = _sample_pairs(rng, n, split)
        sizes = ["large" if rng.random() < 0.5 else "small" for _ in range(n)]
        # Large shapes first: they are the hard ones to fit, small ones fill the gaps.
        specs = sorted(((c, s, z) for (c, s), z in zip(pairs, sizes)), key=lambda t: t[2] != "large")
        placed = _try_place(rng, height, width, specs, clutter)
        if placed is None:
            continue
        for _ in range(10):
            if _assign_visibility(placed, rng.permutation(len(placed)), height, width):
                objects = placed
                break
        if objects is not None:
            break
    if objects is None:  # pragma: no cover - practically unreachable at sane canvas sizes
        raise RuntimeError("SynthGRES could not place objects; canvas too small?")
    # Shuffle list order so that object index carries no information about size or z-order.
    order = rng.permutation(len(objects))
    objects = [objects[int(i)] for i in order]
    for i, o in enumerate(objects):
        o.index = i
        o.rgb = _jitter_colour(rng, o.colour)
    scene = Scene(height=height, width=width, split=split, objects=objects, background=background,
                  background_kind=kind, n_blobs=n_blobs, image=background)
    scene.image = render(scene, rng)
    return scene
