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
PREVIEW_MAX_SIDE = 1600  # the on-screen answer; the full-resolution mask is a download
TILE_SIDE = 160  # head-mask thumbnails
VIEWS = ("overlay", "mask", "cut-out")
TINY_MASK_FRACTION = 0.001  # below 0.1 % of the image the banner gives the pixel count


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
    """The mask tinted over the image with its contour, at the image's own resolution (head tiles)."""
    return overlay_mask(image, mask)


def _mask_to(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A bool mask resized to (H, W): area-averaged then thresholded when shrinking (thin parts
    survive better than with nearest), nearest when the size is the same or larger."""
    m = np.asarray(mask, dtype=bool)
    h, w = size
    if m.shape == (h, w):
        return m
    if m.shape[0] > h:
        return cv2.resize(m.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) >= 96
    return resize_mask(m, (h, w))


def _line_width(size: Tuple[int, int]) -> int:
    return max(1, int(round(min(size) / 300)))


def dim_outside(image: np.ndarray, mask: np.ndarray, keep: float = 0.35) -> np.ndarray:
    """Everything outside the mask desaturated and darkened to `keep` of its brightness; the mask's
    pixels untouched. Works on any colour: the object keeps its own colours, the rest turns dark grey."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    dull = (0.8 * gray + 0.2 * image.astype(np.float32)) * keep
    out = np.where(np.asarray(mask, dtype=bool)[..., None], image, np.round(dull).astype(np.uint8))
    return out.astype(np.uint8)


def double_outline(image: np.ndarray, mask: np.ndarray, width: Optional[int] = None,
                   ring_small: bool = True) -> np.ndarray:
    """Outline the mask twice: a dark line under a light one, visible on any colour. A mask too small to
    find (under ~0.1 % of the image) also gets a ring around it."""
    out = image.copy()
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return out
    t = width or _line_width(m.shape)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 0, 0), 3 * t, lineType=cv2.LINE_AA)
    cv2.drawContours(out, contours, -1, (255, 255, 255), t, lineType=cv2.LINE_AA)
    if ring_small and m.mean() < TINY_MASK_FRACTION:
        ys, xs = np.nonzero(m)
        cx, cy = int(xs.mean()), int(ys.mean())
        r = int(max(np.ptp(xs), np.ptp(ys)) / 2 + 6 * t + 4)
        cv2.circle(out, (cx, cy), r, (0, 0, 0), 3 * t, lineType=cv2.LINE_AA)
        cv2.circle(out, (cx, cy), r, (255, 255, 0), t, lineType=cv2.LINE_AA)
    return out


def checkerboard(size: Tuple[int, int], square: int = 16, light: int = 235, dark: int = 200) -> np.ndarray:
    """(H, W, 3) grey checkerboard: the usual 'transparent' background of a cut-out."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // square) + (xx // square)) % 2 == 0, light, dark).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=2)


def segmentation_view(image: np.ndarray, mask: np.ndarray, view: str = "overlay",
                      max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
    """The answer as shown on screen, at most `max_side` px on its long side.

    overlay: outside the mask dimmed and desaturated, the mask in its own colours with a dark + light
    outline (visible on red, pink, purple... alike); no mask -> the image unchanged.
    mask: white mask on black. cut-out: the masked pixels on a checkerboard.
    Unknown views raise ValueError.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: choose one of {', '.join(VIEWS)}")
    img, _ = downscale(image, max_side)
    m = _mask_to(mask, img.shape[:2])
    if view == "mask":
        return np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=2)
    if view == "cut-out":
        return np.where(m[..., None], img, checkerboard(img.shape[:2])).astype(np.uint8)
    if not m.any():
        return img.copy()
    return double_outline(dim_outside(img, m), m)


def binary_mask_png_array(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) uint8 0/255: the downloadable mask, at the original resolution."""
    return np.asarray(mask, dtype=bool).astype(np.uint8) * 255


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


def area_text(area_fraction: float, pixels: Optional[int] = None) -> str:
    """'12.3% of the image', or the pixel count when the mask is under 0.1 % (a rounded '0.0%' would
    read as nothing found)."""
    if pixels is not None and area_fraction < TINY_MASK_FRACTION:
        return f"{pixels:,} px"
    return f"{100.0 * area_fraction:.1f}% of the image"


def status_banner(no_target: Optional[bool], nt_prob: float = 0.0, area_fraction: float = 0.0,
                  nt_rule: str = "any", error: Optional[str] = None, message: Optional[str] = None,
                  pixels: Optional[int] = None, notice: Optional[str] = None, nt_threshold: float = 0.5) -> str:
    """HTML banner above the result: error, "No target", or what was found. Inline styles only, so
    it looks the same without custom CSS (Gradio 6 moved css to launch()). no_target=None is the idle
    state, showing `message` (or a default hint). `pixels`: the mask's pixel count (shown instead of a
    percentage for tiny masks). `notice`: a warning shown under the answer (e.g. out-of-vocabulary).
    `nt_threshold`: the model's no-target threshold, stated when it is not the official 0.5 (a
    calibrated checkpoint), so that p(no target) = 0.4 answering "no target" reads as intended."""
    extra = ""
    cut = "" if nt_threshold == 0.5 else f", no target above {nt_threshold:g}"
    if notice:
        extra = ('<div id="mabp-oov" class="mabp-oov" style="margin-top:6px;padding:8px 12px;border-radius:8px;'
                 'border:1px solid #b36b00;background:#fff4e0;color:#7a4600;font-weight:600">&#9888; '
                 + html.escape(notice) + "</div>")
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
                f"(p(no target) = {nt_prob:.2f}{cut}, rule &quot;{html.escape(nt_rule)}&quot;)</div>" + extra)
    return (f'<div id="mabp-status" class="mabp-target" style="{style.format(b="#2a8a3a", bg="#e8f6ea", fg="#165a22")}">'
            f"Target found: {area_text(area_fraction, pixels)} "
            f"(p(no target) = {nt_prob:.2f}{cut}, rule &quot;{html.escape(nt_rule)}&quot;)</div>" + extra)


def truncation_note(tokens: Sequence[str], num_tokens: int, max_tokens: int) -> str:
    """Markdown saying the expression was cut, listing the tokens the model actually read."""
    kept = [t for t in tokens if t not in ("[PAD]",)]
    words = " ".join(t for t in kept if t not in ("[CLS]", "[SEP]"))
    return (f"**Expression truncated**: it has {num_tokens} tokens (with [CLS]/[SEP]); the model reads "
            f"{max_tokens}. Kept: `{words}`")


ENGINES = {"onnxruntime": "ONNX Runtime", "pytorch": "PyTorch"}


def latency_text(model_ms: float, set_image_ms: Optional[float] = None, cached: bool = False,
                 engine: Optional[str] = None, flip_tta: bool = False, refine: Optional[str] = None) -> str:
    """One line of timing. model_ms is the predictor's latency (text + fusion + decoders + post); engine
    ("onnxruntime" | "pytorch", GRESResult.extras["engine"]) names what ran the fusion and decoders;
    flip_tta (GRESResult.extras["flip_tta"]) says each figure covers two passes (mabp/flip_tta.py);
    refine (GRESResult.extras["refine"], e.g. "guided r=8 eps=0.001") names the mask refinement included
    in the post-processing (mabp/mask_refine.py); None or "none" says nothing."""
    tta = "two passes: the image and its mirror" if flip_tta else ""
    edges = f"mask edges refined by the guided filter ({refine.replace('guided ', '')})" \
        if refine and refine != "none" else ""
    if cached:
        first = f"model time {model_ms:.0f} ms (outputs cached for this image and expression: post-processing only" \
            + (f"; {edges}" if edges else "") + ")"
    else:
        notes = ", ".join(x for x in ((ENGINES.get(engine, engine) if engine else ""), tta, edges) if x)
        first = f"model time {model_ms:.0f} ms" + (f" ({notes})" if notes else "")
    parts = [first]
    if set_image_ms is not None:
        parts.append(f"image encoding {set_image_ms:.0f} ms (once per image{', both views' if flip_tta else ''})")
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


def largest_mask_region(boxes: np.ndarray, share: np.ndarray) -> Optional[int]:
    """The region holding the most predicted-foreground pixels (share x box area); None when the mask
    is empty, so the caller can fall back to the image centre."""
    b = np.asarray(boxes, dtype=np.float64)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    pixels = np.asarray(share, dtype=np.float64) * area
    if not np.isfinite(pixels).any() or np.nanmax(pixels) <= 0:
        return None
    return int(np.nanargmax(pixels))


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


# ------------------------------------------------------------------------------- legends, colour bars
def _font_scale(width: int) -> float:
    """Text size for strips under an image: the image is shown scaled to the page (down to ~360 px on
    a phone), so the text grows with the image width to stay ~9 px tall or more on screen."""
    return max(0.45, width / 950.0)


def _put(img: np.ndarray, text: str, org: Tuple[int, int], scale: float, color=(20, 20, 20)) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, max(1, int(round(scale * 1.6))),
                lineType=cv2.LINE_AA)


def _text_w(text: str, scale: float) -> int:
    (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(round(scale * 1.6))))
    return w


def colorbar_strip(width: int, vmin: float, vmax: float, label: str, colors: str = "inferno") -> np.ndarray:
    """A white strip with a horizontal colour bar, its end values and `label` (the units), to stack
    under a heat map of the same width. colors: "inferno" (mabp.visualize.heatmap's map) or
    "diverging" (diverging_colors: blue negative, white 0, red positive)."""
    scale = _font_scale(width)
    line = int(34 * scale) + 6
    pad = max(6, width // 60)
    strip = np.full((pad + line + int(18 * scale) + 3 * pad + line, width, 3), 255, np.uint8)
    _put(strip, label, (pad, pad + line - 6), scale)
    y0 = pad + line + pad // 2
    bar_h = max(8, int(18 * scale))
    ramp = np.linspace(0.0, 1.0, max(2, width - 2 * pad))
    if colors == "diverging":
        row = diverging_colors(ramp * 2 - 1, vmax=1.0)
    else:
        row = heatmap(ramp[None, :], vmin=0.0, vmax=1.0)[0]
    strip[y0:y0 + bar_h, pad:pad + len(ramp)] = row[None]
    lo, hi = f"{vmin:.3g}", f"{vmax:.3g}"
    ty = y0 + bar_h + line - 4
    _put(strip, lo, (pad, ty), scale)
    _put(strip, hi, (width - pad - _text_w(hi, scale), ty), scale)
    if colors == "diverging":
        _put(strip, "0", (width // 2 - _text_w("0", scale) // 2, ty), scale)
    return strip


def legend_strip(width: int, items: Sequence[Tuple[Sequence[int], str]], title: str = "") -> np.ndarray:
    """A white strip with colour swatches and labels (wrapped over as many lines as needed), to stack
    under an image of the same width. items: (RGB colour, label); a colour of None draws a rainbow
    swatch ("one colour per region")."""
    scale = _font_scale(width)
    line = int(34 * scale) + 8
    pad = max(6, width // 60)
    sw = int(24 * scale) + 4
    rows: List[List[Tuple[Optional[Sequence[int]], str, int]]] = [[]]
    x = pad + (_text_w(title + "  ", scale) if title else 0)
    for color, label in items:
        w = sw + 6 + _text_w(label, scale) + 2 * pad
        if x + w > width - pad and rows[-1]:
            rows.append([])
            x = pad
        rows[-1].append((color, label, x))
        x += w
    strip = np.full((pad + line * len(rows) + pad, width, 3), 255, np.uint8)
    if title:
        _put(strip, title, (pad, pad + line - 10), scale, color=(70, 70, 70))
    for r, row in enumerate(rows):
        y = pad + r * line
        for color, label, x in row:
            y0, y1 = y + 4, y + 4 + sw
            if color is None:
                strip[y0:y1, x:x + sw] = label_colors(sw)[None, :, :]
            else:
                strip[y0:y1, x:x + sw] = np.asarray(color, np.uint8)
            cv2.rectangle(strip, (x, y0), (x + sw - 1, y1 - 1), (60, 60, 60), 1)
            _put(strip, label, (x + sw + 6, y + line - 10), scale)
    return strip


def stack_below(image: np.ndarray, *strips: np.ndarray) -> np.ndarray:
    """The image with legend / colour-bar strips under it (clicks on the image keep their coordinates)."""
    parts = [image] + [s for s in strips if s is not None and s.shape[1] == image.shape[1]]
    return np.ascontiguousarray(np.vstack(parts))


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


CHART_FONT = 13  # chart text in points at 100 dpi: charts are ~480-640 px wide and shown down to ~360 px


def word_bar_chart(words: Sequence[str], values: Sequence[float], title: str = "",
                   width: int = 560, height: Optional[int] = None, xlabel: str = "attention mass") -> np.ndarray:
    """Horizontal bar chart (RGB array) of one value per word, words top to bottom in reading order.

    Horizontal so every word label stays full-size however long the expression is: the chart grows
    taller instead of squeezing the labels (the height follows the number of words)."""
    n = max(1, len(words))
    height = height or int(90 + 30 * n + (30 if title else 0))
    fig = _figure(width, height)
    ax = fig.add_subplot(111)
    vals = np.asarray(values, dtype=np.float64)
    y = np.arange(len(words))
    ax.barh(y, vals, color="#c0398a")
    ax.set_yticks(y)
    ax.set_yticklabels(list(words), fontsize=CHART_FONT)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=CHART_FONT - 1)
    ax.tick_params(axis="x", labelsize=CHART_FONT - 2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(4))  # few ticks: long decimals must not run into each other
    if title:
        ax.set_title(title, fontsize=CHART_FONT - 1)
    if len(vals) and float(np.nanmax(vals)) > 0:
        ax.set_xlim(0, float(np.nanmax(vals)) * 1.15)
    fig.tight_layout()
    return _to_rgb(fig)


def pca_scatter(pca: np.ndarray, labels: np.ndarray, k: int, highlight: Optional[int] = None,
                title: str = "", width: int = 520, height: int = 480) -> np.ndarray:
    """2-D PCA of the prototypes, coloured by cluster (with a legend); the selected region's prototype ringed."""
    fig = _figure(width, height)
    ax = fig.add_subplot(111)
    pts = np.asarray(pca, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    colors = label_colors(max(int(k), 1)).astype(np.float64) / 255.0
    for c in range(max(int(k), 1)):
        sel = labels == c
        if sel.any():
            ax.scatter(pts[sel, 0], pts[sel, 1], color=colors[c], s=16, edgecolors="none",
                       label=f"cluster {c} ({int(sel.sum())})")
    if highlight is not None and 0 <= highlight < len(pts):
        ax.scatter([pts[highlight, 0]], [pts[highlight, 1]], s=140, facecolors="none", edgecolors="black",
                   linewidths=1.8, label="selected region")
    ax.set_xlabel("PC 1", fontsize=CHART_FONT - 1)
    ax.set_ylabel("PC 2", fontsize=CHART_FONT - 1)
    ax.tick_params(labelsize=CHART_FONT - 3)
    ax.legend(fontsize=CHART_FONT - 3, loc="best", framealpha=0.85)
    if title:
        ax.set_title(title, fontsize=CHART_FONT - 1)
    fig.tight_layout()
    return _to_rgb(fig)


def word_weight_heatmap(weights: np.ndarray, tokens: Sequence[str], token_mask: np.ndarray,
                        highlight_word: Optional[int] = None, width: int = 600,
                        height: Optional[int] = None) -> np.ndarray:
    """The query generator's raw word weights: real words (rows) x region queries (columns, 16 = 4x4),
    with a colour bar of the signed weight. Words are rows so their labels stay full-size."""
    w = np.asarray(weights, dtype=np.float64)
    keep = np.flatnonzero(np.asarray(token_mask, dtype=bool))
    sub = w[:, keep].T  # (words, queries)
    height = height or int(150 + 30 * max(1, len(keep)))
    fig = _figure(width, height)
    ax = fig.add_subplot(111)
    m = float(np.nanmax(np.abs(sub))) if sub.size and np.isfinite(sub).any() else 1.0
    im = ax.imshow(sub, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto", interpolation="nearest")
    ax.set_yticks(np.arange(len(keep)))
    ax.set_yticklabels([tokens[i] for i in keep], fontsize=CHART_FONT)
    n = int(round(np.sqrt(sub.shape[1]))) or 1
    ax.set_xticks(np.arange(sub.shape[1]))
    ax.set_xticklabels([f"{i // n},{i % n}" for i in range(sub.shape[1])], fontsize=CHART_FONT - 4, rotation=90)
    ax.set_xlabel("region query (row,col)", fontsize=CHART_FONT - 1)
    if highlight_word is not None and highlight_word in keep:
        j = int(np.flatnonzero(keep == highlight_word)[0])
        ax.axhline(j - 0.5, color="black", lw=1.5)
        ax.axhline(j + 0.5, color="black", lw=1.5)
    cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cb.set_label("raw word weight (signed)", fontsize=CHART_FONT - 2)
    cb.ax.tick_params(labelsize=CHART_FONT - 4)
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
    "cluster_overlay", "word_bar_chart", "pca_scatter", "word_weight_heatmap", "real_words", "PREVIEW_MAX_SIDE",
    "VIEWS", "segmentation_view", "dim_outside", "double_outline", "checkerboard", "binary_mask_png_array",
    "area_text", "colorbar_strip", "legend_strip", "stack_below", "largest_mask_region",
]
