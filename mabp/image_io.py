"""Turning whatever a user hands us into an RGB uint8 image, with clear errors for bad input."""
from __future__ import annotations

from typing import Any

import numpy as np


class InputError(ValueError):
    """Bad user input (image or text). The message says what was wrong and what to do."""


DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: the full-size mask and its resize stay well under 1 GB


def to_rgb_uint8(image: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB copy of `image`.

    Accepts numpy arrays (H, W), (H, W, 1), (H, W, 3), (H, W, 4) of uint8, uint16, bool or float
    (floats in [0, 1] are scaled by 255, larger floats are clipped to 0..255), and PIL images.
    RGBA is composited over white (transparent areas become white, not whatever colour they hide).
    """
    if image is None:
        raise InputError("No image was given: upload or choose an image first.")
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL.Image without importing PIL here
        image = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype == object or arr.ndim not in (2, 3):
        raise InputError(f"Expected an image array of shape (H, W) or (H, W, C), got shape {arr.shape}.")
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise InputError(f"Expected 1, 3 or 4 colour channels, got {arr.shape[2]} (shape {arr.shape}).")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"The image is empty ({w}x{h} pixels).")
    if h * w > max_pixels:
        raise InputError(f"The image is too large ({w}x{h} = {h * w / 1e6:.0f} MP; the limit is "
                         f"{max_pixels / 1e6:.0f} MP). Downscale it and try again.")
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32)
        arr = np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError("The image contains NaN or infinite values.")
        scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    raise InputError(f"Unsupported image data type {arr.dtype}.")
