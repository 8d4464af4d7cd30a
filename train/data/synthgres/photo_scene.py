"""Scene generation for the SynthGRES photo world (README, "The SynthGRES photo world").

A scene is a background (a random crop of a background photo, flipped / blurred, or SynthGRES's
procedural low-saturation background) with 1-6 cut-outs (5-8 in testB) pasted on it.  Each cut-out
is a manifest stamp scaled so that its longer side is 0.18-0.28 (small) or 0.38-0.5 (large) of
min(W, H), randomly flipped, with a mild brightness / contrast jitter (a per-object lookup table: it
never moves a hue, so colour words stay true).  The alpha comes from the stamp (resampled, so its
edge is soft over about one pixel); the *full mask* of an object is alpha >= 0.5 and its *visible
mask* is the full mask minus the full masks of every object above it — the segmentation target.
Placement follows SynthGRES: the full masks of two objects overlap by < 25 % of the smaller, and
every object keeps >= 40 % of its area visible.  testB adds 0-2 low-saturation blobs (never referred
to) and denser placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .photo import PLURALE_TANTUM, PhotoAssets, Stamp
from .scene import MAX_OVERLAP, Scene, _assign_visibility, _draw_blobs, _overlap, make_background

SMALL_RANGE = (0.18, 0.28)  # longer side / min(W, H)
LARGE_RANGE = (0.38, 0.5)
CLOSEUP_RANGE = (0.6, 0.95)  # a close-up: one object filling most of the frame (train stream, opt-in)
PHOTO_BACKGROUND_SHARE = 0.65  # else procedural


@dataclass
class PhotoObject:
    """One referable cut-out.  Pixel coordinates; (cx, cy) is the centre of its full mask's bounding box."""

    index: int
    stamp: int  # manifest index
    noun: str
    plural: str
    groups: tuple[str, ...]
    top: str
    photographic: bool
    colour: str | None
    size: str  # "small" | "large" (longer side class)
    longest: float  # longer side of the pasted stamp, px
    flip: bool
    cx: float = 0.0
    cy: float = 0.0
    z: int = 0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (exclusive) of the pasted stamp
    alpha: np.ndarray = field(default=None, repr=False)  # (h, w) uint8 alpha inside bbox
    rgb: np.ndarray = field(default=None, repr=False)  # (h, w, 3) uint8 jittered colours inside bbox
    local_mask: np.ndarray = field(default=None, repr=False)  # alpha >= 128 inside bbox, bool
    full_mask: np.ndarray = field(default=None, repr=False)  # (H, W) bool
    visible_mask: np.ndarray = field(default=None, repr=False)  # (H, W) bool
    colour_shares: tuple[tuple[str, float], ...] = ()
    cats: frozenset[str] = frozenset()  # noun + taxonomy words (precomputed: matched in hot loops)

    @property
    def shape(self) -> str:
        """The object's category for tags (single / multi-same / multi-mixed): its noun."""
        return self.noun

    @property
    def categories(self) -> frozenset[str]:
        """Every category word naming this object: its noun and its taxonomy words."""
        return self.cats

    @property
    def pair(self) -> tuple[str | None, str]:
        """(colour word or None, noun)."""
        return (self.colour, self.noun)

    @property
    def radius(self) -> float:
        """Half the longer side (used by the clutter placement)."""
        return self.longest / 2

    @property
    def area(self) -> int:
        """Pixels of the full mask."""
        return int(np.count_nonzero(self.local_mask))

    @property
    def visible_fraction(self) -> float:
        """Visible pixels / full-mask pixels."""
        return float(np.count_nonzero(self.visible_mask)) / max(self.area, 1)

    def shows(self, colour: str, tolerance: float = 0.1) -> bool:
        """True when >= `tolerance` of the stamp's visible pixels show `colour`."""
        return any(c == colour and v >= tolerance for c, v in self.colour_shares)


def _photo_background(rng: np.random.Generator, assets: PhotoAssets, height: int, width: int) -> np.ndarray:
    """A random crop of a background photo (flip, optional blur, mild dimming)."""
    bg = assets.background(int(rng.integers(len(assets.background_files))))
    bh, bw = bg.shape[:2]
    aspect = width / height
    scale = rng.uniform(0.45, 1.0)
    ch = min(bh, int(round(scale * min(bh, bw / aspect))))
    cw = min(bw, max(1, int(round(ch * aspect))))
    ch = max(1, min(ch, bh))
    y0, x0 = int(rng.integers(0, bh - ch + 1)), int(rng.integers(0, bw - cw + 1))
    crop = bg[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = cv2.resize(np.ascontiguousarray(crop), (width, height),
                     interpolation=cv2.INTER_AREA if cw > width else cv2.INTER_LINEAR)
    r = rng.random()
    if r < 0.35:
        k = int(rng.choice([3, 5, 7]))
        out = cv2.GaussianBlur(out, (k, k), 0)
    # Contrast / brightness of the background: never the same look twice.
    c, b = rng.uniform(0.75, 1.05), rng.uniform(-20, 15)
    lut = np.clip((np.arange(256, dtype=np.float32) - 128) * c + 128 + b, 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut)


def _pick_stamps(rng: np.random.Generator, n: int, pool: dict[str, list[int]], held: dict[str, list[int]],
                 stamps: tuple[Stamp, ...], split: str) -> list[int]:
    """n manifest indices: nouns repeat (multi-same) and share a top group (mixed categories)."""
    nouns = sorted(pool)
    by_top: dict[str, list[str]] = {}
    for nn in nouns:
        by_top.setdefault(stamps[pool[nn][0]].top, []).append(nn)
    tops = sorted(by_top)
    theme = tops[int(rng.integers(len(tops)))] if rng.random() < 0.6 else None
    chosen: list[str] = []
    for _ in range(n):
        u = rng.random()
        repeatable = [c for c in chosen if c not in PLURALE_TANTUM]
        if repeatable and u < 0.3:
            noun = repeatable[int(rng.integers(len(repeatable)))]
        elif theme is not None and u < 0.75:
            noun = by_top[theme][int(rng.integers(len(by_top[theme])))]
        else:
            noun = nouns[int(rng.integers(len(nouns)))]
        if noun in PLURALE_TANTUM and noun in chosen:  # "the grapes" is one object: never two of them
            others = [x for x in nouns if x not in PLURALE_TANTUM]
            noun = others[int(rng.integers(len(others)))]
        chosen.append(noun)
    if split == "testA":  # every testA scene shows at least one held-out stamp of a known noun
        held_nouns = sorted(held)
        if not any(c in held for c in chosen):
            chosen[int(rng.integers(n))] = held_nouns[int(rng.integers(len(held_nouns)))]
    out = []
    for noun in chosen:
        cands = held[noun] if split == "testA" and noun in held else pool[noun]
        out.append(cands[int(rng.integers(len(cands)))])
    return out


def _prepare(assets: PhotoAssets, rng: np.random.Generator, idx: int, size: str, short: int,
             closeup: bool = False) -> PhotoObject:
    """Scale, flip and jitter one stamp (placement comes later). closeup: a "large" object scaled to
    CLOSEUP_RANGE of the short side."""
    st = assets.stamps[idx]
    lo, hi = CLOSEUP_RANGE if closeup else SMALL_RANGE if size == "small" else LARGE_RANGE
    longest = rng.uniform(lo, hi) * short
    rgba = assets.stamp_at(idx, max(4, int(round(longest))))
    flip = bool(rng.random() < 0.5)
    if flip:
        rgba = rgba[:, ::-1]
    c, b = rng.uniform(0.9, 1.1), rng.uniform(-12, 12)
    lut = np.clip((np.arange(256, dtype=np.float32) - 128) * c + 128 + b, 0, 255).astype(np.uint8)
    rgb = cv2.LUT(np.ascontiguousarray(rgba[..., :3]), lut)
    alpha = np.ascontiguousarray(rgba[..., 3])
    return PhotoObject(index=0, stamp=idx, noun=st.noun, plural=st.plural, groups=st.groups, top=st.top,
                       photographic=st.photographic, colour=st.colour, size=size, longest=float(max(rgba.shape[:2])),
                       flip=flip, alpha=alpha, rgb=rgb, local_mask=alpha >= 128, colour_shares=st.colour_shares,
                       cats=frozenset((st.noun, *st.groups)))


def _place(rng: np.random.Generator, objs: list[PhotoObject], height: int, width: int, clutter: bool,
           assets: PhotoAssets) -> bool:
    """Rejection-sample positions (in place); False if some object could not be placed."""
    short = min(height, width)
    placed: list[PhotoObject] = []
    for o in objs:
        ok = False
        for attempt in range(60):
            if attempt == 30 and o.size == "large":  # crowded canvas: shrink rather than drop the object
                shrunk = _prepare(assets, rng, o.stamp, "small", short)
                o.size, o.longest, o.flip, o.alpha, o.rgb, o.local_mask = (
                    shrunk.size, shrunk.longest, shrunk.flip, shrunk.alpha, shrunk.rgb, shrunk.local_mask)
            h, w = o.alpha.shape
            if h >= height or w >= width:
                continue
            if clutter and placed and rng.random() < 0.6:
                other = placed[int(rng.integers(len(placed)))]
                ang = rng.uniform(0, 2 * math.pi)
                dist = (other.radius + o.radius) * rng.uniform(0.45, 0.85)
                x0 = int(round(other.cx + dist * math.cos(ang) - w / 2))
                y0 = int(round(other.cy + dist * math.sin(ang) - h / 2))
                if not (0 <= x0 <= width - w and 0 <= y0 <= height - h):
                    continue
            else:
                x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            bbox = (x0, y0, x0 + w, y0 + h)
            area = o.area
            if any(_overlap(bbox, o.local_mask, p.bbox, p.local_mask) >= MAX_OVERLAP * min(area, p.area)
                   for p in placed):
                continue
            ys, xs = np.nonzero(o.local_mask)
            o.bbox = bbox
            o.cx = x0 + (float(xs.min()) + float(xs.max()) + 1) / 2
            o.cy = y0 + (float(ys.min()) + float(ys.max()) + 1) / 2
            placed.append(o)
            ok = True
            break
        if not ok:
            return False
    return True


def render_photo(scene: Scene) -> np.ndarray:
    """Alpha-composite the objects over the background in z-order; returns (H, W, 3) uint8 RGB."""
    img = scene.background.copy()
    for o in sorted(scene.objects, key=lambda ob: ob.z):
        x0, y0, x1, y1 = o.bbox
        a = o.alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
        tile = img[y0:y1, x0:x1].astype(np.float32)
        img[y0:y1, x0:x1] = (tile + a * (o.rgb.astype(np.float32) - tile) + 0.5).astype(np.uint8)
    return img


def generate_photo_scene(rng: np.random.Generator, assets: PhotoAssets, size: int | tuple[int, int] = 320,
                         split: str = "train", photographic_only: bool = False, closeup_share: float = 0.0) -> Scene:
    """Generate and render one photo-world scene (a pure function of the rng state and the assets).

    Args:
        rng: the scene's private generator.
        assets: decoded stamps / backgrounds (see photo.get_assets).
        size: int (square) or (height, width); min side >= 64.
        split: "train" | "val" | "testA" | "testB" (testA: held-out stamps; testB: 5-8 objects, clutter).
        photographic_only: use photographs only (no drawn stamps).
        closeup_share: train only: the share of scenes that are close-ups, one object whose longer side
            is 0.6-0.95 of the short side (real photographs are often framed so; the default 0 draws
            nothing extra from rng, so every existing scene stays the same). The fixed splits ignore it.

    Raises:
        ValueError: canvas too small or unknown split.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(height, width) < 64:
        raise ValueError(f"canvas too small for the photo world: {height}x{width} (min side 64)")
    if split not in ("train", "val", "testA", "testB"):
        raise ValueError(f"unknown split {split!r}")
    stamps = assets.stamps
    pool: dict[str, list[int]] = {}
    held: dict[str, list[int]] = {}
    for s in stamps:
        if photographic_only and not s.photographic:
            continue
        (held if s.split == "testA" else pool).setdefault(s.noun, []).append(s.index)
    held = {k: v for k, v in held.items() if k in pool}  # known nouns only

    if assets.background_files and rng.random() < PHOTO_BACKGROUND_SHARE:
        background, kind = _photo_background(rng, assets, height, width), "photo"
    else:
        background, kind = make_background(rng, height, width)
    clutter = split == "testB"
    n_blobs = int(rng.integers(0, 3)) if clutter else 0
    if n_blobs:
        _draw_blobs(rng, background, n_blobs)
    short = min(height, width)
    closeup = split == "train" and closeup_share > 0 and bool(rng.random() < closeup_share)
    objects: list[PhotoObject] | None = None
    for _ in range(50):
        n = 1 if closeup else int(rng.integers(5, 9)) if clutter else int(rng.integers(1, 7))
        idxs = _pick_stamps(rng, n, pool, held, stamps, split)
        sizes = ["large" if closeup or rng.random() < 0.4 else "small" for _ in range(n)]
        objs = [_prepare(assets, rng, i, z, short, closeup) for i, z in zip(idxs, sizes)]
        objs.sort(key=lambda o: o.size != "large")  # large first: the hard ones to fit
        if not _place(rng, objs, height, width, clutter, assets):
            continue
        for _ in range(10):
            if _assign_visibility(objs, rng.permutation(len(objs)), height, width):  # type: ignore[arg-type]
                objects = objs
                break
        if objects is not None:
            break
    if objects is None:  # pragma: no cover - practically unreachable at sane canvas sizes
        raise RuntimeError("photo world: could not place the objects; canvas too small?")
    order = rng.permutation(len(objects))
    objects = [objects[int(i)] for i in order]
    for i, o in enumerate(objects):
        o.index = i
    scene = Scene(height=height, width=width, split=split, objects=objects, background=background,  # type: ignore[arg-type]
                  background_kind=kind, n_blobs=n_blobs, image=background, world="photo")
    scene.image = render_photo(scene)
    return scene
