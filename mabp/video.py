"""Referring segmentation of a clip, frame by frame (paper §IV-D: each frame is an independent image).

    outputs = segment_clip(predictor, "clip.mp4", "the two red circles", out_video="out.mp4",
                           masks="masks/", timeline="out.timeline.json", stride=1)

Used by `python -m train.predict --video ...` and by the app's Video tab. The expression is encoded once
per clip and each frame once (`MABPPredictor.predict_video`); frames are decoded, segmented, drawn and
encoded one at a time, so memory stays bounded on long clips.

Outputs (each optional but the timeline, which is returned in memory too):

* an overlay video: H.264 / yuv420p / +faststart MP4 (`mabp.video_io.Mp4Writer`), which browsers play,
  at fps / stride, the mask drawn as the image demo draws it (`mabp.visualize.overlay_mask`) with a
  caption per frame (frame number and the no-target decision with its probability);
* per-frame masks: a folder of `<frame index, 5 digits>.png` (0 / 255, the size of the decoded frames),
  or a COCO-RLE JSON file (`{"size": [H, W], "frames": {"<index>": {"size", "counts"}}}`, pycocotools);
* a no-target timeline: JSON (and CSV beside it) with one row per processed frame:
  frame, time_s, no_target, nt_prob, area_fraction.

Bad input (see `mabp.video_io`) raises InputError before any output exists; any failure later removes
whatever was partly written (temporary names, renamed into place only at the end).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import cv2
import numpy as np

from .image_io import InputError
from .predictor import GRESResult, MABPPredictor
from .video_io import Mp4Writer, VideoInfo, VideoLimits, iter_frames, probe_video
from .visualize import overlay_mask

MASK_FORMATS = ("png", "rle")
ProgressFn = Callable[[int, int, float], None]  # (frames done, frames expected, frames per second)


@dataclass
class ClipOutputs:
    """What `segment_clip` produced."""

    info: VideoInfo
    stride: int
    timeline: List[Dict[str, Any]]  # one row per processed frame (see the module docstring)
    video: Optional[Path] = None
    masks: Optional[Path] = None
    timeline_path: Optional[Path] = None
    frames: int = 0
    wall_s: float = 0.0  # decode + model + drawing + encoding
    model_s: float = 0.0  # set_image + predict only
    notes: List[str] = field(default_factory=list)
    size: tuple = (0, 0)  # (H, W) of the processed frames

    @property
    def fps(self) -> float:
        """Frames processed per second, end to end."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def model_fps(self) -> float:
        return self.frames / self.model_s if self.model_s > 0 else 0.0


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of (H, W, 3) uint8 `image` with `text` on a dark strip at the top left (OpenCV Hershey font)."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.35, min(w, h) / 640)
    thick = max(1, int(round(scale * 1.5)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(2, int(4 * scale))
    x1, y1 = min(w, tw + 2 * pad), min(h, th + base + 2 * pad)
    out[:y1, :x1] = (out[:y1, :x1].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def draw_frame(frame: np.ndarray, result: GRESResult, index: int) -> np.ndarray:
    """The overlay frame: mask tinted and outlined, caption 'frame N · target|no target (p=…)'."""
    out = overlay_mask(frame, result.mask)
    state = "no target" if result.no_target else f"target {100 * result.area_fraction:.1f}%"
    return caption(out, f"frame {index} | {state} | p(none)={result.nt_prob:.2f}")


def _check_masks_dest(masks: Path, fmt: str) -> None:
    """A masks folder may be replaced only if it holds nothing but our own files."""
    if fmt == "png" and masks.exists():
        if not masks.is_dir():
            raise InputError(f"--masks {masks} exists and is not a folder; pass a folder path (or a .json "
                             "file with the rle format).")
        foreign = [p.name for p in masks.iterdir() if not (p.suffix == ".png" and p.stem.isdigit())]
        if foreign:
            raise InputError(f"--masks folder {masks} holds other files ({', '.join(sorted(foreign)[:3])}...); "
                             "pass an empty or new folder.")
    if fmt == "rle" and masks.is_dir():
        raise InputError(f"--masks {masks} is a folder; the rle format writes one JSON file: pass a .json path.")


def _stage_timeline(rows: List[Dict[str, Any]], path: Path, meta: Dict[str, Any]) -> List[tuple]:
    """Write the timeline JSON and CSV under temporary names; returns [(tmp, final), ...]."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps({**meta, "frames": rows}, indent=1))
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=["frame", "time_s", "no_target", "nt_prob", "area_fraction"])
    wr.writeheader()
    wr.writerows(rows)
    tmp_csv = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.csv.tmp")
    tmp_csv.write_text(buf.getvalue())
    return [(tmp, path), (tmp_csv, path.with_suffix(".csv"))]


def segment_clip(predictor: MABPPredictor, path: os.PathLike, text: str, out_video: Optional[os.PathLike] = None,
                 masks: Optional[os.PathLike] = None, timeline: Optional[os.PathLike] = None, stride: int = 1,
                 limits: VideoLimits = VideoLimits(), threshold: Optional[float] = None,
                 nt_rule: Optional[str] = None, mask_format: str = "png",
                 progress: Optional[ProgressFn] = None) -> ClipOutputs:
    """Segment `text` on every `stride`-th frame of the clip at `path` and write the requested outputs.

    Args:
        predictor: a ready MABPPredictor (any preset).
        path: the clip (any container / codec OpenCV's FFmpeg decodes).
        text: the expression.
        out_video: overlay MP4 to write (None = none).
        masks: per-frame masks: a folder (mask_format "png") or a .json file ("rle"); None = none.
        timeline: no-target timeline JSON (a CSV is written beside it); None = returned only.
        stride: use every stride-th frame (the overlay runs at fps / stride).
        limits: duration / frame / size limits (`mabp.video_io.VideoLimits`).
        threshold, nt_rule: as `MABPPredictor.predict`.
        mask_format: "png" or "rle".
        progress: called after each frame with (done, expected, frames per second).
    Returns: ClipOutputs. Raises: InputError for bad input (nothing written), RuntimeError if encoding fails.
    """
    if mask_format not in MASK_FORMATS:
        raise InputError(f"Unknown mask format {mask_format!r}: choose one of {', '.join(MASK_FORMATS)}.")
    text = predictor.check_text(text)
    info = probe_video(path, limits, stride)
    masks_p = Path(masks) if masks is not None else None
    if masks_p is not None:
        _check_masks_dest(masks_p, mask_format)
    expected = max(1, -(-info.frame_count // stride)) if info.frame_count else 0
    out = ClipOutputs(info=info, stride=stride, timeline=[], notes=list(info.notes))
    writer = Mp4Writer(out_video, fps=info.fps / stride) if out_video is not None else None
    tmp_masks: Optional[Path] = None
    if masks_p is not None and mask_format == "png":
        tmp_masks = masks_p.with_name(f".{masks_p.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp_masks.mkdir(parents=True)
    rles: Dict[str, Any] = {}
    staged: List[tuple] = []  # (temporary path, final path) renamed once the video is complete
    t0 = time.perf_counter()
    try:
        for fr in predictor.predict_video(iter_frames(path, stride, limits, info), text, threshold=threshold,
                                          nt_rule=nt_rule):
            r = fr.result
            out.model_s += fr.set_image_ms / 1000 + r.latency_ms / 1000
            out.size = r.image_size
            if writer is not None:
                writer.write(draw_frame(fr.image, r, fr.index))
            if tmp_masks is not None:
                cv2.imwrite(str(tmp_masks / f"{fr.index:05d}.png"), r.mask.astype(np.uint8) * 255)
            elif masks_p is not None:
                from pycocotools import mask as mask_utils

                enc = mask_utils.encode(np.asfortranarray(r.mask.astype(np.uint8)))
                rles[str(fr.index)] = {"size": [int(v) for v in enc["size"]], "counts": enc["counts"].decode("ascii")}
            out.timeline.append({"frame": fr.index, "time_s": round(fr.index / info.fps, 4),
                                 "no_target": bool(r.no_target), "nt_prob": round(float(r.nt_prob), 5),
                                 "area_fraction": round(float(r.area_fraction), 6)})
            out.frames += 1
            out.wall_s = time.perf_counter() - t0
            if progress is not None:
                progress(out.frames, max(expected, out.frames), out.fps)
        # ---- every frame done: stage the small files, finish the video, then rename all into place
        if masks_p is not None and tmp_masks is None:
            masks_p.parent.mkdir(parents=True, exist_ok=True)
            tmp = masks_p.with_name(f".{masks_p.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps({"size": list(out.size), "stride": stride, "frames": rles}))
            staged.append((tmp, masks_p))
        if timeline is not None:
            tl = Path(timeline)
            tl.parent.mkdir(parents=True, exist_ok=True)
            meta = {"video": str(path), "text": text, "fps": info.fps, "stride": stride, "size": list(out.size),
                    "notes": out.notes}
            staged.extend(_stage_timeline(out.timeline, tl, meta))
        if writer is not None:
            out.video = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        if tmp_masks is not None:
            shutil.rmtree(tmp_masks, ignore_errors=True)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    if tmp_masks is not None:
        if masks_p.exists():
            shutil.rmtree(masks_p)  # only our own PNGs (checked before the run)
        os.replace(tmp_masks, masks_p)
    for tmp, final in staged:
        os.replace(tmp, final)
    out.masks = masks_p
    out.timeline_path = Path(timeline) if timeline is not None else None
    out.wall_s = time.perf_counter() - t0
    return out


__all__ = ["segment_clip", "ClipOutputs", "draw_frame", "caption", "MASK_FORMATS"]
