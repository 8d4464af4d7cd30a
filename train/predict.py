"""Segment what an expression refers to in one image, from the command line.

    python -m train.predict --image photo.jpg --text "the two dogs on the left"
    python -m train.predict --checkpoint run/best.pt --image scene.png --text "all circles" "the red star"

Writes `<out>/<stem>-<n>.png` (overlay) and `<stem>-<n>-mask.png` per expression and prints one JSON
line per expression (no_target, nt_prob, area fraction, truncation, latency).

A clip, frame by frame (paper §IV-D; `mabp.video`):

    python -m train.predict --video clip.mp4 --text "the two red circles" [--out out.mp4 --masks masks/]
        [--stride 2] [--mask-format rle --masks masks.json] [--max-seconds 20 --max-frames 300 --max-side 1280]

writes the overlay as H.264 MP4 (browsers play it), the per-frame masks (PNG folder or COCO-RLE JSON)
and a no-target timeline `<out stem>.timeline.json` / `.csv`, with a progress bar in frames per second.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import List, Optional



def load_model(checkpoint: Optional[str], preset: Optional[str]):
    from mabp import build_mabp
    from mabp.registry import SHIPPED_CHECKPOINT as DEFAULT_CHECKPOINT

    if checkpoint:
        return build_mabp(checkpoint=checkpoint)
    if preset:
        print(f"note: preset {preset!r} with no checkpoint has an untrained decoder: masks are meaningless",
              file=sys.stderr)
        return build_mabp(preset)
    if DEFAULT_CHECKPOINT.is_file():
        return build_mabp(checkpoint=DEFAULT_CHECKPOINT)
    raise SystemExit(f"error: no --checkpoint given and the shipped checkpoint {DEFAULT_CHECKPOINT} is missing; "
                     "pass --checkpoint PATH or --preset lite")


def read_image(path: str):
    """An image file -> (H, W, 3) uint8 RGB (mabp.image_files: header checked before decoding, EXIF
    orientation applied); a clear one-line error instead of a traceback."""
    from mabp.image_files import read_image_file
    from mabp.image_io import InputError

    try:
        return read_image_file(path)
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image")
    src.add_argument("--video", help="a clip: segment every --stride-th frame (one --text)")
    ap.add_argument("--text", required=True, nargs="+", help="one or more expressions (one with --video)")
    ap.add_argument("--checkpoint", help="an MABP checkpoint (default: the shipped lite checkpoint)")
    ap.add_argument("--preset", help="build an untrained preset instead (for smoke tests)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--nt-rule", choices=["first", "last", "any"], default=None)
    ap.add_argument("--out", default="outputs/predict",
                    help="output folder; with --video also an .mp4 path (default <folder>/<stem>-overlay.mp4)")
    ap.add_argument("--threads", type=int, default=None)
    vid = ap.add_argument_group("video")
    vid.add_argument("--stride", type=int, default=1, help="segment every k-th frame (default 1)")
    vid.add_argument("--masks", default=None, help="per-frame masks: a folder (png) or a .json file (rle)")
    vid.add_argument("--mask-format", choices=["png", "rle"], default=None,
                     help="png (default) or rle (COCO RLE JSON; the default when --masks ends in .json)")
    vid.add_argument("--max-seconds", type=float, default=None, help="refuse longer clips")
    vid.add_argument("--max-frames", type=int, default=None, help="refuse clips with more frames (after --stride)")
    vid.add_argument("--max-side", type=int, default=1280,
                     help="downscale frames whose longer side exceeds this (default 1280; the model sees its own size)")
    args = ap.parse_args(argv)
    if args.video is not None:
        return predict_video_main(args)

    import cv2
    import numpy as np
    import torch

    from mabp.image_io import InputError
    from mabp.predictor import MABPPredictor
    from mabp.visualize import overlay_mask

    from mabp.registry import CheckpointError

    if args.threads:
        torch.set_num_threads(args.threads)
    image = read_image(args.image)
    t0 = time.perf_counter()
    try:
        model = load_model(args.checkpoint, args.preset)
    except (CheckpointError, FileNotFoundError) as exc:  # one line naming the file, like train.evaluate
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictor = MABPPredictor(model)
    load_s = time.perf_counter() - t0
    try:
        predictor.set_image(image)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(args.image).stem)
    rgb = image
    status = 0
    for n, text in enumerate(args.text):
        try:
            r = predictor.predict(text, threshold=args.threshold, nt_rule=args.nt_rule)
        except InputError as exc:
            print(json.dumps({"text": text, "error": str(exc)}))
            status = 2
            continue
        overlay = overlay_mask(rgb, r.mask)
        cv2.imwrite(str(out_dir / f"{stem}-{n}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out_dir / f"{stem}-{n}-mask.png"), r.mask.astype(np.uint8) * 255)
        print(json.dumps({"text": r.text, "no_target": r.no_target, "nt_prob": round(r.nt_prob, 4),
                          "area_fraction": round(r.area_fraction, 5), "truncated": r.truncated,
                          "latency_ms": round(r.latency_ms, 1), "overlay": str(out_dir / f"{stem}-{n}.png")}))
    print(f"model load {load_s:.1f} s, set_image {predictor.set_image_ms:.0f} ms", file=sys.stderr)
    return status


def predict_video_main(args) -> int:
    """The --video branch: validate everything, then segment the clip with a tqdm bar (frames/s)."""
    import torch
    from tqdm import tqdm

    from mabp.image_io import InputError
    from mabp.predictor import MABPPredictor
    from mabp.video import segment_clip
    from mabp.video_io import VideoLimits, probe_video

    if len(args.text) != 1:
        print("error: --video takes exactly one --text expression; run once per expression", file=sys.stderr)
        return 2
    for name, val in (("--stride", args.stride), ("--max-frames", args.max_frames), ("--max-side", args.max_side),
                      ("--threads", args.threads)):
        if val is not None and val < 1:
            print(f"error: {name} must be >= 1, got {val}", file=sys.stderr)
            return 2
    if args.max_seconds is not None and not args.max_seconds > 0:
        print(f"error: --max-seconds must be > 0, got {args.max_seconds}", file=sys.stderr)
        return 2
    limits = VideoLimits(max_seconds=args.max_seconds, max_frames=args.max_frames, max_side=args.max_side)
    try:  # the clip first: a wrong file fails before the model loads
        info = probe_video(args.video, limits, args.stride)
        MABPPredictor.check_text(args.text[0])
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(args.video).stem)
    out = Path(args.out)
    video_path = out if out.suffix.lower() == ".mp4" else out / f"{stem}-overlay.mp4"
    timeline = video_path.with_name(video_path.stem + ".timeline.json")
    fmt = args.mask_format or ("rle" if args.masks and args.masks.lower().endswith(".json") else "png")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    predictor = MABPPredictor(load_model(args.checkpoint, args.preset))
    load_s = time.perf_counter() - t0
    for note in info.notes:
        print(f"note: {note}", file=sys.stderr)
    expected = -(-info.frame_count // args.stride) if info.frame_count else None
    with tqdm(total=expected, desc="frames", unit="frame") as bar:
        def progress(done: int, total: int, fps: float) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(fps=f"{fps:.2f}", refresh=False)

        try:
            res = segment_clip(predictor, args.video, args.text[0], out_video=video_path, masks=args.masks,
                               timeline=timeline, stride=args.stride, limits=limits, threshold=args.threshold,
                               nt_rule=args.nt_rule, mask_format=fmt, progress=progress)
        except InputError as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 2
    n_none = sum(r["no_target"] for r in res.timeline)
    print(json.dumps({"text": args.text[0], "frames": res.frames, "stride": args.stride, "size": list(res.size),
                      "no_target_frames": n_none, "fps": round(res.fps, 2), "model_fps": round(res.model_fps, 2),
                      "overlay": str(res.video), "masks": str(res.masks) if res.masks else None,
                      "timeline": str(res.timeline_path), "notes": res.notes}))
    print(f"model load {load_s:.1f} s; {res.frames} frames in {res.wall_s:.1f} s = {res.fps:.2f} frames/s end to end "
          f"({res.model_fps:.2f} frames/s model only)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
