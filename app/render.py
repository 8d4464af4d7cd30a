"""Pure drawing helpers for the demo: numpy arrays in, RGB uint8 arrays (or strings) out.

Nothing here touches Gradio, the model or global state, so every function is unit-tested on small
arrays (tests/test_render.py). Charts are drawn with matplotlib's object API (Figure + Agg canvas,
never pyplot): pyplot keeps global state and is not safe when the server renders two sessions at once.

Coordinates: region boxes are (x0, y0, x1, y1) in ORIGINAL image pixels, as mabp.introspect gives
them; functions that draw on a downscaled display image take the display scale and convert.
"""
from __future__ import annotations

import html
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from mabp.visualize import (MASK_COLOR, blend, draw_boxes, heatmap, label_colors, overlay_mask,
                            resize_mask)

DISPLAY_MAX_SIDE = 768  # analysis tabs draw on a copy at most this large: a 40 MP heat map is slow and useless
TILE_SIDE = 160  # head-mask thumbnails


# ----------------------------------------------------------------------------------------- sizes
def display_scale(size: Tuple[int, int], max_side: int = DISPLAY_MAX_SIDE) -> float:
    """Factor (<= 1) that brings an (H, W) image's longer side down to `max_side`."""
    h, w = size
    longest = max(h, w)
    return 1.0 if longest <= max_side else max_side / float(longest)


def downscale(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> Tuple[np.ndarray, float]:
    """(display copy, scale). Area interpolation: it averages instead of aliasing fine texture."""
    s = display_scale(image.shape[:2], max_side)
    if s == 1.0:
        return image, 1.0
    h, w = image.shape[:2]
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), s


def scale_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64) * scale


# -------------------------------------------------------------------------------- segmentation
def segmentation_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask tinted over the image with its contour, at the image's own (original) resolution."""
    return overlay_mask(image, mask)


def head_mask_tiles(image: np.ndarray, head_masks: Sequence[np.ndarray],
                    side: int = TILE_SIDE) -> List[Tuple[np.ndarray, str]]:
    """One small overlay per supervised head (coarse -> fine) with a caption naming its resolution."""
    thumb, _ = downscale(image, side)
    tiles = []
    for i, m in enumerate(head_masks):
        m = np.asarray(m, dtype=bool)
        caption = f"head {i + 1}: {m.shape[1]}x{m.shape[0]}, {100.0 * m.mean():.1f}% fg"
        tiles.append((overlay_mask(thumb, m, contour=False, alpha=0.6), caption))
    return tiles


def status_banner(no_target: Optional[bool], nt_prob: float = 0.0, area_fraction: float = 0.0,
                  nt_rule: str = "any", error: Optional[str] = None, message: Optional[str] = None) -> str:
    """HTML banner above the result: error, "No target", or what was found. Inline styles only, so
    it looks the same without custom CSS (Gradio 6 moved css to launch()). no_target=None is the idle
    state, showing `message` (or a default hint)."""
    style = ("padding:10px 14px;border-radius:8px;font-weight:600;font-size:1.05em;"
             "border:1px solid {b};background:{bg};color:{fg}")
    if error:
        return (f'<div id="mabp-status" class="mabp-error" style="{style.format(b="#d33", bg="#fde8e8", fg="#8a1010")}">'
                f"&#9888; {html.escape(error)}</div>")
    if no_target is None:
        return (f'<div id="mabp-status" class="mabp-idle" style="{style.format(b="#ccc", bg="#f6f6f6", fg="#444")}">'
                f"{html.escape(message or 'Choose an image and type what to segment.')}</div>")
    if no_target:
        return (f'<div id="mabp-status" class="mabp-no-target" '
                f'style="{style.format(b="#b36b00", bg="#fff4e0", fg="#7a4600")}">'
                f"No target: nothing in the image matches the expression "
                f"(p(no target) = {nt_prob:.2f}, rule &quot;{html.escape(nt_rule)}&quot;)</div>")
    return (f'<div id="mabp-status" class="mabp-target" style="{style.format(b="#2a8a3a", bg="#e8f6ea", fg="#165a22")}">'
            f"Target found: {100.0 * area_fraction:.1f}% of the image "
            f"(p(no target) = {nt_prob:.2f}, rule &quot;{html.escape(nt_rule)}&quot;)</div>")


def truncation_note(tokens: Sequence[str], num_tokens: int, max_tokens: int) -> str:
    """Markdown saying the expression was cut, listing the tokens the model actually read."""
    kept = [t for t in tokens if t not in ("[PAD]",)]
    words = " ".join(t for t in kept if t not in ("[CLS]", "[SEP]"))
    return (f"**Expression truncated**: it has {num_tokens} tokens (with [CLS]/[SEP]); the model reads "
            f"{max_tokens}. Kept: `{words}`")


def latency_text(model_ms: float, set_image_ms: Optional[float] = None, cached: bool = False) -> str:
    """One line of timing. model_ms is the predictor's latency (text + fusion + decoders + post)."""
    parts = [f"model time {model_ms:.0f} ms" + (" (outputs cached for this image and expression: post-processing only)" if cached else "")]
    if set_image_ms is not None:
        parts.append(f"image encoding {set_image_ms:.0f} ms (once per image)")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------- regions
def region_at(boxes: np.ndarray, x: float, y: float) -> int:
    """Index of the region whose box contains (x, y); the nearest box centre when none does
    (clicks on the last pixel row/column, or outside after rounding)."""
    b = np.asarray(boxes, dtype=np.float64)
    inside = (b[:, 0] <= x) & (x < b[:, 2]) & (b[:, 1] <= y) & (y < b[:, 3])
    idx = np.flatnonzero(inside)
    if idx.size:
        return int(idx[0])
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return int(np.argmin((cx - x) ** 2 + (cy - y) ** 2))


def box_center(boxes: np.ndarray, index: int) -> Tuple[float, float]:
    x0, y0, x1, y1 = np.asarray(boxes, dtype=np.float64)[index]
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def region_owner_map(boxes: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(H, W) int map: which region each pixel belongs to (-1 outside every box)."""
    h, w = size
    owner = np.full((h, w), -1, dtype=np.int32)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64)):
        xa, xb = int(np.clip(round(x0), 0, w)), int(np.clip(round(x1), 0, w))
        ya, yb = int(np.clip(round(y0), 0, h)), int(np.clip(round(y1), 0, h))
        owner[ya:yb, xa:xb] = i
    return owner


def region_grid(image: np.ndarray, boxes: np.ndarray, mask: np.ndarray, highlight: Optional[int] = None,
                alpha: float = 0.55) -> np.ndarray:
    """The scale's region grid over the image; each region's part of the (head) mask in its own colour.

    boxes are in `image` pixels (scale them first for a display copy); mask is the head mask at any
    resolution (nearest-resized to the image).
    """
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64)
    m = resize_mask(np.asarray(mask, dtype=bool), (h, w))
    owner = region_owner_map(boxes, (h, w))
    colors = label_colors(len(boxes))
    paint = image.copy()
    sel = m & (owner >= 0)
    paint[sel] = colors[owner[sel]]
    out = blend(image, paint, alpha)
    return draw_boxes(out, boxes, color=(255, 255, 255), thickness=1, highlight=highlight)


def map_overlay(image: np.ndarray, values: np.ndarray, box: Optional[Sequence[float]] = None,
                alpha: float = 0.6, vmin: Optional[float] = None, vmax: Optional[float] = None) -> np.ndarray:
    """A (h, w) map (attention, similarity) as a heat map blended on the image, the selected box outlined."""
    layer = heatmap(np.asarray(values, dtype=np.float32), size=image.shape[:2], vmin=vmin, vmax=vmax)
    out = blend(image, layer, alpha)
    if box is not None:
        out = draw_boxes(out, [box], color=(0, 255, 255), thickness=2)
    return out


def diverging_colors(values: np.ndarray, vmax: Optional[float] = None) -> np.ndarray:
    """Values -> (..., 3) uint8 blue (negative) / white (0) / red (positive); NaN -> grey.

    Word weights are un-normalised and signed, so the sign matters and 0 must stay neutral.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    m = float(np.nanmax(np.abs(v))) if vmax is None and finite.any() else (vmax or 0.0)
    t = np.zeros_like(v) if m <= 0 else np.clip(np.where(finite, v, 0.0) / m, -1, 1)
    out = np.empty(v.shape + (3,), dtype=np.float64)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    red, blue, white = np.array([200, 30, 40.]), np.array([30, 80, 200.]), np.array([255, 255, 255.])
    out[:] = white
    out += pos[..., None] * (red - white) + neg[..., None] * (blue - white)
    out[~finite] = (160, 160, 160)
    return np.round(out).astype(np.uint8)


def region_values_overlay(image: np.ndarray, boxes: np.ndarray, values: np.ndarray,
                          highlight: Optional[int] = None, alpha: float = 0.6) -> np.ndarray:
    """Paint each region box with its (signed) value in the diverging colours, over the image."""
    h, w = image.shape[:2]
    owner = region_owner_map(boxes, (h, w))
    colors = diverging_colors(np.asarray(values, dtype=np.float64))
    paint = image.copy()
    inside = owner >= 0
    paint[inside] = colors[owner[inside]]
    out = blend(image, paint, alpha)
    return draw_boxes(out, boxes, color=(255, 255, 255), thickness=1, highlight=highlight)


def cluster_overlay(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, k: int,
                    alpha: float = 0.55) -> np.ndarray:
    """Final-scale region blocks coloured by prototype cluster (paper Fig. 7)."""
    h, w = image.shape[:2]
    owner = region_owner_map(boxes, (h, w))
    colors = label_colors(max(int(k), 1))
    labels = np.asarray(labels, dtype=np.int64)
    paint = image.copy()
    inside = owner >= 0
    paint[inside] = colors[np.clip(labels[owner[inside]], 0, len(colors) - 1)]
    return blend(image, paint, alpha)


# ------------------------------------------------------------------------------------- charts
def _figure(width_px: int, height_px: int, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _to_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[:, :, :3])


def word_bar_chart(words: Sequence[str], values: Sequence[float], title: str = "",
                   width: int = 640, height: int = 260) -> np.ndarray:
    """Bar chart (RGB array) of one value per word, e.g. attention mass on each language token."""
    fig = _figure(width, height)
    ax = fig.add_subplot(111)
    vals = np.asarray(values, dtype=np.float64)
    x = np.arange(len(words))
    ax.bar(x, vals, color="#c0398a")
    ax.set_xticks(x)
    ax.set_xticklabels(list(words), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("attention")
    if title:
        ax.set_title(title, fontsize=9)
    if len(vals) and float(np.nanmax(vals)) > 0:
        ax.set_ylim(0, float(np.nanmax(vals)) * 1.15)
    fig.tight_layout()
    return _to_rgb(fig)


def pca_scatter(pca: np.ndarray, labels: np.ndarray, k: int, highlight: Optional[int] = None,
                title: str = "", width: int = 420, height: int = 380) -> np.ndarray:
    """2-D PCA of the prototypes, coloured by cluster; the selected region's prototype ringed."""
    fig = _figure(width, height)
    ax = fig.add_subplot(111)
    pts = np.asarray(pca, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    colors = label_colors(max(int(k), 1)).astype(np.float64) / 255.0
    ax.scatter(pts[:, 0], pts[:, 1], c=colors[np.clip(labels, 0, len(colors) - 1)], s=14, edgecolors="none")
    if highlight is not None and 0 <= highlight < len(pts):
        ax.scatter([pts[highlight, 0]], [pts[highlight, 1]], s=120, facecolors="none", edgecolors="black",
                   linewidths=1.5)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _to_rgb(fig)


def word_weight_heatmap(weights: np.ndarray, tokens: Sequence[str], token_mask: np.ndarray,
                        highlight_word: Optional[int] = None, width: int = 640,
                        height: int = 360) -> np.ndarray:
    """The query generator's raw word weights: regions (rows, 16 = 4x4) x real words (columns)."""
    w = np.asarray(weights, dtype=np.float64)
    keep = np.flatnonzero(np.asarray(token_mask, dtype=bool))
    sub = w[:, keep]
    fig = _figure(width, height)
    ax = fig.add_subplot(111)
    m = float(np.nanmax(np.abs(sub))) if sub.size and np.isfinite(sub).any() else 1.0
    im = ax.imshow(sub, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(len(keep)))
    ax.set_xticklabels([tokens[i] for i in keep], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(sub.shape[0]))
    n = int(round(np.sqrt(sub.shape[0]))) or 1
    ax.set_yticklabels([f"r{i // n},{i % n}" for i in range(sub.shape[0])], fontsize=7)
    ax.set_xlabel("word")
    ax.set_ylabel("region query (row, col)")
    if highlight_word is not None and highlight_word in keep:
        j = int(np.flatnonzero(keep == highlight_word)[0])
        ax.axvline(j - 0.5, color="black", lw=1)
        ax.axvline(j + 0.5, color="black", lw=1)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return _to_rgb(fig)


def real_words(tokens: Sequence[str], token_mask: np.ndarray) -> List[Tuple[int, str]]:
    """(token index, token) of the real tokens, [CLS]/[SEP] included: they get weights too."""
    mask = np.asarray(token_mask, dtype=bool)
    return [(i, t) for i, t in enumerate(tokens) if i < len(mask) and mask[i]]


__all__ = [
    "DISPLAY_MAX_SIDE", "MASK_COLOR", "display_scale", "downscale", "scale_boxes", "segmentation_overlay",
    "head_mask_tiles", "status_banner", "truncation_note", "latency_text", "region_at", "box_center",
    "region_owner_map", "region_grid", "map_overlay", "diverging_colors", "region_values_overlay",
    "cluster_overlay", "word_bar_chart", "pca_scatter", "word_weight_heatmap", "real_words",
]
