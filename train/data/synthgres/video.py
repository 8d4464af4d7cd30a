"""SynthGRES video: scenes whose shapes move at constant velocity and bounce off the borders, exported in
the MeViS layout so the video loader, the 1-in-5 frame sampler and the J&F evaluator run end to end offline.

    clip = generate_clip("val", 3, num_frames=24)      # frames, per-object visible masks, expressions
    export_mevis("exports/synth-mevis", "valid_u", source_split="val", num_videos=24)

A clip is a SynthGRES scene (``scene.generate_scene``: same background, blobs, shapes, colours, z-order)
whose objects get a velocity (25 % stay still); every frame is re-rasterised and re-painted with the
scene renderer (``scene._rasterise`` / ``scene.render``, with the same shading seed each frame, so an
object keeps its look). Visible masks are recomputed per frame from the fixed z-order, so objects can
pass behind one another and be hidden for a while (then their mask is empty in those frames).

Expressions come from the SynthGRES grammar (``grammar.generate_expressions`` on the first frame) and
their meaning is **re-evaluated on every frame** (``meaning.Node.evaluate``): an expression is kept only
if it has exactly one reading in every frame and refers to the same object set throughout. Positional
and relational expressions ("the leftmost circle", "the star above the red square") therefore survive
only when the motion does not change what they mean, which is what MeViS's format can represent (an
expression names a fixed set of object tracks). No-target expressions must stay empty in every frame.

MeViS layout written (``<out>/<split>/``)::

    JPEGImages/<video>/<00000>.jpg                   frames (JPEG, quality 95)
    meta_expressions.json   {"videos": {video: {"frames": [...], "expressions": {"0": {"exp", "obj_id",
                                                                                         "anno_id"}}}}}
    mask_dict.json          {anno_id: [COCO RLE or null per frame]}  (one track per object per video;
                                                                      null where it is fully hidden)

A "valid" split (no masks, as MeViS's server-only split) is written with ``with_masks=False``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .dataset import split_seed
from .grammar import Expression, generate_expressions
from .scene import _EXTENT, Scene, SceneObject, _rasterise, generate_scene, render

_STREAM_VIDEO = 11  # a random stream of its own: never collides with the image benchmark's scenes
STILL_FRACTION = 0.25
SPEED_RANGE = (1.0, 3.5)  # pixels per frame at a 320 px canvas (scaled with the canvas)


@dataclass
class VideoExpression:
    """One expression of a clip: its sentence, the object indices it refers to in every frame, its tags."""

    sentence: str
    target_ids: Tuple[int, ...]
    tags: Dict[str, Optional[str]]


@dataclass
class SynthClip:
    """A generated clip. frames[t]: (H, W, 3) uint8 RGB; visible[t][i]: (H, W) bool of object i."""

    name: str
    frames: List[np.ndarray]
    visible: List[List[np.ndarray]]
    expressions: List[VideoExpression]
    objects: List[SceneObject]  # the first frame's objects (shape / colour / size)

    def target_mask(self, t: int, ids: Sequence[int]) -> np.ndarray:
        """Union of the visible masks of `ids` in frame t, (H, W) bool."""
        out = np.zeros(self.frames[t].shape[:2], dtype=bool)
        for i in ids:
            out |= self.visible[t][i]
        return out


def _frame_scene(base: Scene, positions: np.ndarray) -> Scene:
    """The base scene with objects moved to `positions` (N, 2) and re-rasterised; visibility from base z."""
    h, w = base.height, base.width
    objects = []
    for o, (cx, cy) in zip(base.objects, positions):
        bbox, local = _rasterise(o.shape, o.radius, float(cx), float(cy), o.rotation, h, w)
        objects.append(SceneObject(index=o.index, shape=o.shape, colour=o.colour, size=o.size, radius=o.radius,
                                   cx=float(cx), cy=float(cy), rotation=o.rotation, rgb=o.rgb, z=o.z, bbox=bbox,
                                   local_mask=local))
    covered = np.zeros((h, w), dtype=bool)
    for o in sorted(objects, key=lambda ob: -ob.z):  # top-most first
        full = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = o.bbox
        full[y0:y1, x0:x1] = o.local_mask
        o.full_mask, o.visible_mask = full, full & ~covered
        covered |= full
    return Scene(height=h, width=w, split=base.split, objects=objects, background=base.background,
                 background_kind=base.background_kind, n_blobs=base.n_blobs, image=base.background)


def _trajectories(rng: np.random.Generator, base: Scene, num_frames: int) -> np.ndarray:
    """(T, N, 2) centres: constant velocity, reflected at the borders (the shape stays inside the canvas)."""
    n = len(base.objects)
    scale = min(base.height, base.width) / 320.0
    pos = np.array([(o.cx, o.cy) for o in base.objects], dtype=np.float64)
    ang = rng.uniform(0, 2 * math.pi, n)
    speed = rng.uniform(*SPEED_RANGE, n) * scale * (rng.random(n) >= STILL_FRACTION)
    vel = np.stack([np.cos(ang), np.sin(ang)], axis=1) * speed[:, None]
    ext = np.array([_EXTENT[o.shape] * o.radius + 1.0 for o in base.objects])
    lo = np.stack([ext, ext], axis=1)
    hi = np.stack([base.width - ext, base.height - ext], axis=1)
    out = np.empty((num_frames, n, 2))
    for t in range(num_frames):
        out[t] = pos
        pos = pos + vel
        under, over = pos < lo, pos > hi
        pos = np.where(under, 2 * lo - pos, np.where(over, 2 * hi - pos, pos))
        vel = np.where(under | over, -vel, vel)
    return out


def _stable(expr: Expression, scenes: Sequence[Scene]) -> bool:
    """One reading in every frame and the same target set throughout."""
    first = frozenset(expr.target_ids)
    for sc in scenes:
        res = expr.meaning.evaluate(sc)
        if not res.ok or frozenset(res.targets) != first:
            return False
    return True


def generate_clip(split: str, index: int, num_frames: int = 24, size: int = 320, n_expressions: int = 4,
                  seed: Optional[int] = None) -> SynthClip:
    """Clip `index` of a SynthGRES split as a pure function of (split, index, num_frames, size, seed).

    Args:
        split: "train" / "val" / "testA" / "testB" (the image benchmark's scene and grammar profiles).
        index: clip number ≥ 0.
        num_frames: frames (≥ 1).
        size: square canvas side in pixels (≥ 64).
        n_expressions: at most this many expressions (fewer when too few candidates stay stable).
    Raises: ValueError for an impossible argument.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    rng = np.random.default_rng([split_seed(split, seed), _STREAM_VIDEO, int(index)])
    base = generate_scene(rng, size, split)
    shade_seed = int(rng.integers(1 << 62))
    traj = _trajectories(rng, base, num_frames)
    scenes = [_frame_scene(base, traj[t]) for t in range(num_frames)]
    frames = [render(sc, np.random.default_rng(shade_seed)) for sc in scenes]
    chosen: List[VideoExpression] = []
    seen = set()
    for attempt in range(4):
        for e in generate_expressions(scenes[0], rng, 3 * n_expressions, split):
            if len(chosen) == n_expressions:
                break
            if e.sentence in seen or not _stable(e, scenes):
                continue
            seen.add(e.sentence)
            chosen.append(VideoExpression(e.sentence, tuple(e.target_ids), dict(e.tags)))
        if len(chosen) == n_expressions:
            break
    return SynthClip(name=f"synth_{split}_{index:05d}", frames=frames,
                     visible=[[o.visible_mask for o in sc.objects] for sc in scenes],
                     expressions=chosen, objects=scenes[0].objects)


def _rle(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def export_mevis(out: os.PathLike, split: str = "valid_u", source_split: str = "val", num_videos: int = 24,
                 num_frames: int = 24, size: int = 320, n_expressions: int = 4, with_masks: bool = True,
                 seed: Optional[int] = None, progress: bool = False) -> Path:
    """Write `num_videos` generated clips as MeViS split `split` under `out` (atomically: a temporary
    folder renamed at the end; an existing split folder is replaced).

    Returns the split folder. Raises ValueError for an impossible argument.
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    root = Path(out)
    dest = root / split
    tmp = root / f".{split}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "JPEGImages").mkdir(parents=True)
    videos: Dict[str, Any] = {}
    masks: Dict[str, List[Optional[Dict[str, Any]]]] = {}
    anno = 0
    it = range(num_videos)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"export {split}", unit="clip")
    try:
        for k in it:
            clip = generate_clip(source_split, k, num_frames, size, n_expressions, seed)
            names = [f"{t:05d}" for t in range(num_frames)]
            vdir = tmp / "JPEGImages" / clip.name
            vdir.mkdir()
            for name, frame in zip(names, clip.frames):
                cv2.imwrite(str(vdir / f"{name}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
            track: Dict[int, int] = {}
            exprs: Dict[str, Any] = {}
            for j, e in enumerate(clip.expressions):
                for i in e.target_ids:
                    if i not in track:
                        track[i] = anno
                        if with_masks:
                            masks[str(anno)] = [_rle(clip.visible[t][i]) if clip.visible[t][i].any() else None
                                                for t in range(num_frames)]
                        anno += 1
                entry: Dict[str, Any] = {"exp": e.sentence}
                if with_masks:
                    entry.update(obj_id=list(e.target_ids), anno_id=[track[i] for i in e.target_ids],
                                 tags=e.tags)
                exprs[str(j)] = entry
            videos[clip.name] = {"frames": names, "expressions": exprs}
        with open(tmp / "meta_expressions.json", "w", encoding="utf-8") as f:
            json.dump({"videos": videos}, f)
        if with_masks:
            with open(tmp / "mask_dict.json", "w", encoding="utf-8") as f:
                json.dump(masks, f)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest




def write_clip(clip: SynthClip, path: os.PathLike, fps: float = 12.0) -> Path:
    """Encode a clip's frames as a browser-playable H.264 MP4 (`mabp.video_io.Mp4Writer`); returns the path."""
    from mabp.video_io import Mp4Writer

    with Mp4Writer(path, fps=fps) as w:
        for frame in clip.frames:
            w.write(frame)
    return Path(path)


__all__ = ["SynthClip", "VideoExpression", "generate_clip", "export_mevis", "write_clip"]
