"""Pure drawing helpers (numpy + OpenCV): mask overlays with contours, region grids, heat maps.

Every function takes and returns (H, W, 3) uint8 RGB arrays and never mutates its inputs.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import cv2
import numpy as np

MASK_COLOR = (255, 64, 160)  # a magenta that stands out on natural and synthetic images


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return image


def resize_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool/label map to (H, W)."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(mask.dtype)


def overlay_mask(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = MASK_COLOR, alpha: float = 0.5,
                 contour: bool = True, thickness: Optional[int] = None) -> np.ndarray:
    """Blend `color` over the mask's pixels and draw its outline. mask: (H, W) bool (resized if needed)."""
    image = _check_image(image)
    mask = resize_mask(mask.astype(bool), image.shape[:2])
    out = image.copy()
    if mask.any():
        tint = np.array(color, dtype=np.float32)
        out[mask] = np.round(out[mask].astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
        if contour:
            t = thickness or max(1, round(min(image.shape[:2]) / 250))
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), t, lineType=cv2.LINE_AA)
    return out


def heatmap(values: np.ndarray, size: Optional[Tuple[int, int]] = None, vmin: Optional[float] = None,
            vmax: Optional[float] = None, colormap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    """(h, w) float map -> (H, W, 3) uint8 RGB heat map (bilinear resize to `size`)."""
    v = np.asarray(values, dtype=np.float32)
    lo = float(np.nanmin(v)) if vmin is None else vmin
    hi = float(np.nanmax(v)) if vmax is None else vmax
    norm = np.zeros_like(v) if hi <= lo else np.clip((v - lo) / (hi - lo), 0, 1)
    if size is not None:
        norm = cv2.resize(np.nan_to_num(norm), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    bgr = cv2.applyColorMap(np.round(norm * 255).astype(np.uint8), colormap)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def blend(image: np.ndarray, layer: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    image = _check_image(image)
    layer = cv2.resize(layer, (image.shape[1], image.shape[0])) if layer.shape[:2] != image.shape[:2] else layer
    return np.round(image.astype(np.float32) * (1 - alpha) + layer.astype(np.float32) * alpha).astype(np.uint8)


def draw_boxes(image: np.ndarray, boxes: Iterable[Sequence[float]], color: Sequence[int] = (255, 255, 255),
               thickness: int = 1, highlight: Optional[int] = None,
               highlight_color: Sequence[int] = (255, 220, 0)) -> np.ndarray:
    """Outline (x0, y0, x1, y1) boxes in image pixels; box `highlight` drawn thicker in another colour."""
    out = _check_image(image).copy()
    boxes = list(boxes)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if i == highlight:
            continue
        cv2.rectangle(out, (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1),
                      tuple(int(c) for c in color), thickness)
    if highlight is not None and 0 <= highlight < len(boxes):
        x0, y0, x1, y1 = boxes[highlight]
        cv2.rectangle(out, (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1),
                      tuple(int(c) for c in highlight_color), max(2, thickness * 2))
    return out


def label_colors(n: int, seed: int = 0) -> np.ndarray:
    """n distinct RGB colours (HSV wheel), (n, 3) uint8."""
    hues = (np.arange(n) * (180.0 / max(n, 1)) + seed * 7) % 180
    hsv = np.stack([hues, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def color_labels(labels: np.ndarray, size: Tuple[int, int], n: Optional[int] = None) -> np.ndarray:
    """(h, w) int label map -> (H, W, 3) colour image (nearest resize)."""
    n = int(labels.max()) + 1 if n is None else n
    colors = label_colors(n)
    img = colors[np.clip(labels, 0, n - 1)]
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
