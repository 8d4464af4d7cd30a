"""Segment what an expression refers to in one image, from the command line.

    python -m train.predict --image photo.jpg --text "the two dogs on the left"
    python -m train.predict --checkpoint run/best.pt --image scene.png --text "all circles" "the red star"

Writes `<out>/<stem>-<n>.png` (overlay) and `<stem>-<n>-mask.png` per expression and prints one JSON
line per expression (no_target, nt_prob, area fraction, truncation, latency).
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
    ap.add_argument("--image", required=True)
    ap.add_argument("--text", required=True, nargs="+", help="one or more expressions")
    ap.add_argument("--checkpoint", help="an MABP checkpoint (default: the shipped lite checkpoint)")
    ap.add_argument("--preset", help="build an untrained preset instead (for smoke tests)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--nt-rule", choices=["first", "last", "any"], default=None)
    ap.add_argument("--out", default="outputs/predict")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
