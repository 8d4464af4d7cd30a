"""Image/mask resizing shared by every dataset, and the numpy → tensor edge.

Two modes:
- "squash": `cv2.resize` to exactly S×S, ignoring the aspect ratio. This is what MABP does (its mapper
  resizes every image to 480×480 and evaluates against the nearest-resized GT), so it is the default for
  reproducing the paper.
- "letterbox": keep the aspect ratio, resize the longest side to S, pad bottom/right with zeros. The
  returned `meta` records the scale and the valid region so a prediction can be mapped back to the
  original image with `unletterbox_mask`.

Images use bilinear interpolation (cv2.INTER_LINEAR, cv2's default and MABP's); masks use
cv2.INTER_NEAREST so they stay binary.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import cv2
import numpy as np
import torch

RESIZE_MODES = ("squash", "letterbox")


def letterbox_geometry(height: int, width: int, size: int) -> Dict[str, Any]:
    """Geometry of a letterbox resize of an (height, width) image into size×size.

    Returns meta with keys: mode, orig_size (H, W), size S, scale (S / max(H, W)),
    valid (h, w) = the top-left region of the S×S canvas holding the image.
    """
    scale = size / float(max(height, width))
    # Round (not floor) so a 480×640 image letterboxed into 480 gives exactly 360×480; never 0 pixels.
    h = min(size, max(1, int(round(height * scale))))
    w = min(size, max(1, int(round(width * scale))))
    return {"mode": "letterbox", "orig_size": (int(height), int(width)), "size": int(size),
            "scale": scale, "valid": (h, w)}


def squash_geometry(height: int, width: int, size: int) -> Dict[str, Any]:
    """Geometry of a squash resize: per-axis scales, the whole canvas is valid."""
    return {"mode": "squash", "orig_size": (int(height), int(width)), "size": int(size),
            "scale": (size / float(height), size / float(width)), "valid": (int(size), int(size))}


def resize_sample(image: np.ndarray, mask: np.ndarray, size: int,
                  mode: str = "squash") -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Resize an image and its mask to size×size.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool (or 0/1 integers).
        size: output side S.
        mode: "squash" (the paper) or "letterbox" (aspect kept, zero padding at bottom/right).
    Returns:
        (image (S, S, 3) uint8, mask (S, S) bool, meta) — meta as in `letterbox_geometry` /
        `squash_geometry`.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        raise ValueError(f"mask {mask.shape} does not match image {(h, w)}")
    # cv2 cannot resize bool arrays; uint8 0/1 keeps nearest interpolation exact.
    mask_u8 = mask.astype(np.uint8)
    if mode == "squash":
        meta = squash_geometry(h, w, size)
        img_out = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        mask_out = cv2.resize(mask_u8, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
        return img_out, mask_out, meta
    meta = letterbox_geometry(h, w, size)
    vh, vw = meta["valid"]
    img_out = np.zeros((size, size, 3), dtype=np.uint8)
    mask_out = np.zeros((size, size), dtype=bool)
    img_out[:vh, :vw] = cv2.resize(image, (vw, vh), interpolation=cv2.INTER_LINEAR)
    mask_out[:vh, :vw] = cv2.resize(mask_u8, (vw, vh), interpolation=cv2.INTER_NEAREST).astype(bool)
    return img_out, mask_out, meta


def unletterbox_mask(mask_s: np.ndarray, meta: Dict[str, Any], out_size: Tuple[int, int]) -> np.ndarray:
    """Map a prediction made on the S×S canvas back to an (H, W) image.

    Works for both modes (for "squash" the whole canvas is valid). Bool / integer masks are resized with
    nearest neighbour and returned as bool; float maps (probabilities, logits) with bilinear
    interpolation and returned as float32.

    Args:
        mask_s: (S, S) prediction on the resized canvas.
        meta: the meta returned by `resize_sample` (or `letterbox_geometry` / `squash_geometry`).
        out_size: (H, W) of the original image.
    """
    h, w = int(out_size[0]), int(out_size[1])
    vh, vw = meta["valid"]
    crop = np.asarray(mask_s)[:vh, :vw]
    if np.issubdtype(crop.dtype, np.floating):
        return cv2.resize(crop.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(crop.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def to_tensor_image(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → (3, H, W) float32 tensor in 0..255.

    No normalisation here on purpose: the model normalises internally (mean/std in 0–255 space for the
    paper preset, (x−127)/128 for EfficientNet-Lite), so datasets stay model-agnostic.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {img.shape}")
    # One copy that converts and lays the result out contiguously (channels first).
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).to(
        torch.float32, memory_format=torch.contiguous_format)


__all__ = ["resize_sample", "unletterbox_mask", "to_tensor_image", "letterbox_geometry",
           "squash_geometry", "RESIZE_MODES"]
