"""The Gradio 6 demo: `create_app(predictor) -> gr.Blocks`. It only ARRANGES.

Model math lives in mabp/ (predictor, introspection, clustering), scenes in train/data/synthgres,
pictures in app/render.py (pure functions). This file wires components to those and keeps
per-session state.

Laziness: the Segmentation tab needs only the prediction. The other tabs need the introspection
(a second decoder pass under forward hooks), computed the first time such a tab is looked at, or
straight away when a new expression is asked while one is visible. Each tab is drawn only when it is
selected, or when an input changes while it is visible (`render_tab` skips the hidden ones).

Errors: bad input never raises out of a UI callback. The callback shows gr.Warning plus a red
banner and returns empty outputs; the API endpoint /segment raises gr.Error(print_exception=False),
which gradio_client receives as a clean error (no traceback on either side).

No `from __future__ import annotations` here: Gradio reads the handlers' type hints at run time to
inject gr.SelectData / gr.Progress, and string annotations would hide them.
"""
import dataclasses
import json
import logging
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr
import numpy as np

from mabp.image_io import InputError
from mabp.introspect import Introspection, cluster_prototypes
from mabp.predictor import GRESResult, MABPPredictor

from . import render
from .components import ApiImageFile, ApiText, ApiThreshold, SafeImage
from .model_card import ModelCard, card_markdown, model_card, vocabulary_markdown
from .outputs import PngWriter
from .service import LARGE_IMAGE_PIXELS, NT_RULES, ModelThread, SegmentService, release_memory
from .video import build_video_tab

log = logging.getLogger("mabp.app")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "assets" / "examples"
MAX_TEXT_CHARS = 10_000  # longer than any sentence; stops a pasted book from reaching the tokenizer
TABS = ("segmentation", "regions", "attention", "prototypes", "language")
WORLDS = ("shapes", "photo")
VIEW_CHOICES = [("Overlay", "overlay"), ("Mask", "mask"), ("Cut-out", "cut-out")]
# Enter in the threshold's number box: blur it, which makes the slider send `release` (= apply).
THRESHOLD_ENTER_JS = """() => {
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.key === 'Enter' && t && t.tagName === 'INPUT' && t.type === 'number' && t.closest('#threshold')) {
      e.preventDefault(); t.blur();
    }
  }, true);
}"""
SCALE_CHOICES = [("4x4 · head 1 (1/32)", 0), ("8x8 · head 2 (1/16)", 1), ("16x16 · head 3 (1/8)", 2),
                 ("16x16 · final head (1/4)", 3)]


@dataclass
class Session:
    """What one browser session keeps between events (gr.State). The full-size image is NOT kept
    here (it can be 40 MP): callbacks get the uploaded file path and the service caches the decode."""

    key: Optional[str] = None  # content digest of the current image
    display: Optional[np.ndarray] = None  # the image, downscaled for the analysis tabs
    scale: float = 1.0  # display / original
    size: Tuple[int, int] = (0, 0)  # original (H, W)
    result: Optional[GRESResult] = None
    info: Optional[Introspection] = None
    clusters: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    point: Optional[Tuple[float, float]] = None  # selected point (x, y) in ORIGINAL pixels; None = automatic
    label: str = ""  # where the image came from, for the banner ("Random scene #123, shapes world")


def _no_progress(*_a, **_k) -> None:
    return None


def _progress_fn(progress: Any):
    """Adapt gr.Progress to the service's (fraction, text) callback; never let it raise."""
    def call(frac: float, desc: str) -> None:
        try:
            progress(frac, desc=desc)
        except Exception:  # progress is cosmetic
            pass
    return call


def expected_label(expr: Dict[str, Any], objects: Optional[List[Dict[str, Any]]] = None) -> str:
    """The expected answer of one example expression in words: "no target", or "target: " and the
    objects it covers ("small red circle + large blue heart"; "objects 1, 3" when the scene's objects
    are not listed)."""
    exp = str(expr.get("expected", "?"))
    ids = expr.get("target_ids")
    if exp == "target" and ids:
        by_id = {o.get("id"): o for o in (objects or [])}
        if all(i in by_id for i in ids):
            names = [" ".join(str(by_id[i][k]) for k in ("size", "colour", "shape") if by_id[i].get(k)) for i in ids]
            return "target: " + " + ".join(names)
        return f"target: object{'s' if len(ids) > 1 else ''} {', '.join(str(i) for i in ids)}"
    return exp


def _expressions(item: Dict[str, Any]) -> List[Dict[str, Any]]:
    """An entry's expressions as dicts (plain strings, the old format, have no expected answer)."""
    out = []
    for e in item.get("expressions", []):
        out.append(e if isinstance(e, dict) else {"text": str(e), "expected": "?"})
    return [e for e in out if e.get("text")]


def photo_world_example(item: Dict[str, Any], random_scene: Any, folder: Path) -> Optional[Path]:
    """Generate a photo-world scene example from its seed (never committed), or None with a log line
    when this SynthGRES has no photo world (older signature, or missing system packages)."""
    if random_scene is None:
        log.info("example %r skipped: SynthGRES is not available", item.get("title"))
        return None
    seed = int(item.get("seed", 0))
    try:
        image, _scene, _sugg = random_scene(seed, 320, world="photo")
    except TypeError:
        log.info("example %r skipped: this SynthGRES has no photo world", item.get("title"))
        return None
    except RuntimeError as exc:
        log.info("example %r skipped: the photo world is unavailable (%s)", item.get("title"), exc)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthgres-photo-{seed}.png"
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR))
    return path


def read_examples(examples_dir: Path = EXAMPLES_DIR, random_scene: Any = None,
                  generated_dir: Optional[Path] = None) -> List[Tuple[Path, Dict[str, Any]]]:
    """(image path, entry) of every example offered in the gallery, from examples.json.

    Entries with "gallery": false (e.g. real photos the shipped checkpoint does not answer right)
    are left out; "synthgres-photo" entries are generated from their seed into `generated_dir`."""
    manifest = examples_dir / "examples.json"
    if not manifest.is_file():
        return []
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        log.warning("could not read %s: %s", manifest, exc)
        return []
    generated_dir = generated_dir or Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / \
        f"mabp-examples-{os.getpid()}"
    items = []
    for it in data.get("examples", []):
        if it.get("gallery", True) is False:
            continue
        if it.get("kind") == "synthgres-photo":
            path = photo_world_example(it, random_scene, generated_dir)
        else:
            path = examples_dir / it["file"] if it.get("file") else None
        if path is not None and path.is_file():
            items.append((path, it))
    return items


def load_examples(examples_dir: Path = EXAMPLES_DIR, random_scene: Any = None,
                  generated_dir: Optional[Path] = None
                  ) -> Tuple[List[List[str]], List[str], Dict[str, List[str]]]:
    """Gallery rows [image path, expression, expected answer], their labels, and each image's
    suggestion chips (file name -> expressions)."""
    items = read_examples(examples_dir, random_scene, generated_dir)
    rows, labels, chips = [], [], {}
    for path, item in items:
        chips[path.name] = [e["text"] for e in _expressions(item)]
    # Round-robin over the images (first expression of every image, then the second ...), so the first
    # page of the gallery shows every image.
    depth = max((len(_expressions(it)) for _p, it in items), default=0)
    for rank in range(min(depth, 3)):
        for path, item in items:
            exprs = _expressions(item)
            if rank < len(exprs):
                rows.append([str(path), exprs[rank]["text"], expected_label(exprs[rank], item.get("objects"))])
                labels.append(f"{item.get('title', path.stem)}: {exprs[rank]['text']}")
    return rows, labels, chips


def scene_generator():
    """SynthGRES's random_scene(seed, size) -> (image, scene, suggestions), or None if not installed."""
    try:
        from train.data.synthgres import random_scene
    except Exception as exc:  # SynthGRES is optional for the app: the button then says so
        log.warning("SynthGRES is not available (%s): the random-scene button is disabled", exc)
        return None
    return random_scene


class DemoCallbacks:
    """The event handlers, as plain methods so tests can call them on real arrays."""

    def __init__(self, service: SegmentService, max_tokens: int = 20, png: Optional[PngWriter] = None,
                 card: Optional[ModelCard] = None):
        self.service = service
        self.max_tokens = max_tokens
        self.random_scene = scene_generator()
        self.png = png or PngWriter()  # every picture goes out as a unique file (see app/outputs.py)
        self.card = card  # what the model knows: the out-of-vocabulary notice reads it
        self.chips: Dict[str, List[str]] = {}  # example file name -> its suggestion chips

    def _file(self, image: Optional[np.ndarray], stem: str = "img") -> Optional[str]:
        return None if image is None else self.png.write(image, stem)

    # ------------------------------------------------------------------------------ helpers
    def _image(self, image: Any, session: Session, progress: Any = None) -> Tuple[np.ndarray, str, Session]:
        """Decode the input image (InputError if bad) and start a fresh session when it changed."""
        rgb, key = self.service.load(image)
        if session is None or session.key != key:
            display, scale = render.downscale(rgb)
            h, w = rgb.shape[:2]
            # a label set before the image was decoded (a random scene) stays with it
            label = session.label if session is not None and session.key is None else ""
            session = Session(key=key, display=display, scale=scale, size=(h, w), label=label)
        return rgb, key, session

    @staticmethod
    def _check_text(text: Any) -> str:
        if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
            raise InputError(f"The expression is too long ({len(text):,} characters; the limit is "
                             f"{MAX_TEXT_CHARS:,}). The model reads only its first {20} tokens anyway.")
        return MABPPredictor.check_text(text)

    def _seg_outputs(self, session: Session, rgb: np.ndarray, r: GRESResult, cached: bool,
                     view: str = "overlay") -> list:
        view = view if view in render.VIEWS else "overlay"
        preview = self._file(render.segmentation_view(rgb, r.mask, view), view.replace("-", ""))
        mask_file = self.png.write(render.binary_mask_png_array(r.mask), "mask")
        overlay_file = preview if view == "overlay" else self._file(render.segmentation_view(rgb, r.mask), "overlay")
        tiles = [(self._file(t, "head"), c) for t, c in
                 render.head_mask_tiles(rgb if session.display is None else session.display, r.head_masks)]
        set_ms = self.service.set_image_ms.get(session.key)
        latency = render.latency_text(r.latency_ms, set_ms, cached=cached, engine=r.extras.get("engine"),
                                      flip_tta=bool(r.extras.get("flip_tta")), refine=r.extras.get("refine"))
        notes = self.service.notes.get(session.key)
        if notes:
            latency += "  \nInput: " + "; ".join(notes) + "."
        trunc = render.truncation_note(r.tokens, r.num_tokens, self.max_tokens) if r.truncated else ""
        notice = self.card.notice(r.text) if self.card is not None else None
        banner = render.status_banner(r.no_target, r.nt_prob, r.area_fraction, r.nt_rule,
                                      pixels=int(np.count_nonzero(r.mask)), notice=notice,
                                      nt_threshold=r.nt_threshold)
        self._trim(r.mask.size)
        return [session, banner, preview, tiles, latency, trunc,
                gr.DownloadButton(value=mask_file, interactive=True),
                gr.DownloadButton(value=overlay_file, interactive=True)]

    @staticmethod
    def _trim(pixels: int) -> None:
        """After work on a large image, hand freed memory back (app/service.py: release_memory).
        Measured with benchmarks/app_load.py --big-uploads 30 --big-mp 30: RSS after 1071 MB without,
        961 MB with (MABP_MALLOC_TRIM=0 turns it off)."""
        if pixels >= LARGE_IMAGE_PIXELS and os.environ.get("MABP_MALLOC_TRIM", "1") != "0":
            release_memory()

    @staticmethod
    def _no_downloads() -> list:
        return [gr.DownloadButton(value=None, interactive=False), gr.DownloadButton(value=None, interactive=False)]

    @classmethod
    def _seg_error(cls, session: Optional[Session], message: str) -> list:
        """A lasting red banner; the previous result is cleared from every output (one toast too)."""
        gr.Warning(message)
        if session is not None:
            session.result, session.info, session.clusters = None, None, {}
        return [session, render.status_banner(None, error=message), None, [], "", ""] + cls._no_downloads()

    @staticmethod
    def _keep_small(r: GRESResult) -> GRESResult:
        """The result as kept in the session: one full-size mask, not two (raw_mask is what the
        official evaluator scores; the app never shows it)."""
        return dataclasses.replace(r, raw_mask=r.mask)

    # ------------------------------------------------------------------------------ segment
    def segment(self, image: Any, text: Any, threshold: float, nt_rule: str, tab: str,
                session: Optional[Session], view: str = "overlay", progress: gr.Progress = gr.Progress()) -> list:
        """Run the model for (image, text); outputs: session, banner, preview, head tiles, latency, note,
        mask download, overlay download."""
        try:
            text = self._check_text(text)
            rgb, key, session = self._image(image, session, progress)
            introspect = tab not in (None, "segmentation")
            r = self.service.predict(rgb, key, text, threshold, nt_rule, introspect=introspect,
                                     progress=_progress_fn(progress))
            if session.result is None or session.result.text != r.text:
                session.point = None  # a new expression: the analysis tabs select its largest region again
            session.result = self._keep_small(r)
            session.info = r.extras.get("introspection")
            session.clusters = {}
            return self._seg_outputs(session, rgb, r, bool(r.extras.get("cached")), view)
        except InputError as exc:
            return self._seg_error(session, str(exc))
        except Exception as exc:  # a bug, not bad input: keep the server up, log it for us
            log.exception("segment failed")
            return self._seg_error(session, f"Internal error ({type(exc).__name__}); see the server log.")

    def prepare_image(self, image: Any, session: Optional[Session],
                      progress: gr.Progress = gr.Progress()) -> list:
        """On upload: validate and encode the image now, so typing the first expression is fast."""
        if image is None:
            return [Session(), render.status_banner(None), None, [], "", ""] + self._no_downloads()
        try:
            rgb, key, session = self._image(image, session)
            ms = self.service.prepare(rgb, key, _progress_fn(progress))
            h, w = session.size
            notes = self.service.notes.get(session.key) or []
            msg = (f"{session.label + ': ' if session.label else ''}"
                   f"Image ready ({w}x{h}{'; ' + '; '.join(notes) if notes else ''}); encoded in {ms:.0f} ms. "
                   "Type what to segment" + (" or click a suggestion." if session.label else "."))
            banner = render.status_banner(None, message=msg)
            self._trim(h * w)
            return [session, banner, None, [], "", ""] + self._no_downloads()
        except InputError as exc:
            return self._seg_error(Session(), str(exc))
        except Exception as exc:
            log.exception("prepare_image failed")
            return self._seg_error(Session(), f"Internal error ({type(exc).__name__}); see the server log.")

    def change_view(self, image: Any, session: Optional[Session], view: str) -> Any:
        """The view switch (overlay / mask / cut-out): redraw the last answer, no model call."""
        if session is None or session.result is None or image is None:
            return gr.skip()
        try:
            rgb, _key, _s = self._image(image, session)
        except InputError:
            return gr.skip()
        view = view if view in render.VIEWS else "overlay"
        return self._file(render.segmentation_view(rgb, session.result.mask, view), view.replace("-", ""))

    # ------------------------------------------------------------------------------- tabs
    @staticmethod
    def _point(session: Session, scale: int = -1) -> Tuple[float, float]:
        """The selected point; by default the centre of the region (at `scale`) that holds the most
        of the mask, or the image centre when the mask is empty."""
        if session.point is None:
            h, w = session.size
            point = (w / 2.0, h / 2.0)
            if session.info is not None and session.info.scales:
                sc = session.info.scales[scale]
                q = render.largest_mask_region(sc.boxes, sc.share)
                if q is not None:
                    point = render.box_center(sc.boxes, q)
            session.point = point
        return session.point
    def _ensure_info(self, image: Any, session: Session, progress: Any) -> Session:
        r = session.result
        if session.info is None and r is not None:
            rgb, key, session = self._image(image, session)
            full = self.service.predict(rgb, key, r.text, r.threshold, r.nt_rule, introspect=True,
                                        progress=_progress_fn(progress))
            session.result, session.info = full, full.extras.get("introspection")
        return session

    def render_tab(self, image: Any, tab: str, session: Optional[Session], scale_idx: Any, region: Any,
                   layer: Any, k: Any, word: Any, progress: gr.Progress = gr.Progress()) -> list:
        """Draw only the visible analysis tab; every other output is gr.skip().

        Outputs: session, [region slider, region grid, similarity, caption], [attention map, word bars,
        caption], [clusters, PCA, caption], [word dropdown, heat map, word map, caption].
        """
        outs: list = [gr.skip()] * 15
        if tab not in TABS or tab == "segmentation":
            return outs
        if session is None or session.result is None:
            msg = "Segment an expression first: this tab explains the last prediction."
            idx = {"regions": 4, "attention": 7, "prototypes": 10, "language": 14}[tab]
            outs[idx] = msg
            return outs
        try:
            session = self._ensure_info(image, session, progress)
        except InputError as exc:
            gr.Warning(str(exc))
            return outs
        outs[0] = session
        info = session.info
        if info is None:
            idx = {"regions": 4, "attention": 7, "prototypes": 10, "language": 14}[tab]
            outs[idx] = "This model gives no introspection."
            return outs
        try:
            if tab == "regions":
                outs[1:5] = self.draw_regions(session, scale_idx, region)
            elif tab == "attention":
                outs[5:8] = self.draw_attention(session, layer)
            elif tab == "prototypes":
                outs[8:11] = self.draw_prototypes(session, k)
            elif tab == "language":
                outs[11:15] = self.draw_language(session, word)
        except Exception as exc:  # drawing must never take the app down
            log.exception("render_tab(%s) failed", tab)
            gr.Warning(f"Could not draw the {tab} tab ({type(exc).__name__}).")
        return outs

    # The draw_* methods are pure given the session (no model call): tests call them directly.
    @staticmethod
    def _int(value: Any, default: int, lo: int, hi: int) -> int:
        try:
            v = int(round(float(value)))
        except (TypeError, ValueError):
            v = default
        return int(min(max(v, lo), hi))

    def draw_regions(self, session: Session, scale_idx: Any, region: Any) -> list:
        info = session.info
        s = self._int(scale_idx, 1, 0, len(info.scales) - 1)
        sc = info.scales[s]
        q = render.region_at(sc.boxes, *self._point(session, s))
        disp_boxes = render.scale_boxes(sc.boxes, session.scale)
        grid = render.region_grid(session.display, disp_boxes, sc.mask, highlight=q)
        width = grid.shape[1]
        grid = render.stack_below(grid, render.legend_strip(width, [
            (None, "mask part of each region (1 colour per region)"), ((255, 255, 255), "region windows"),
            ((255, 220, 0), "selected region")]))
        final = info.scales[-1]
        caption = (f"**{sc.n}x{sc.n} regions** (head {s + 1}, map {sc.grid_hw[1]}x{sc.grid_hw[0]}). "
                   f"Selected region {q} (row {q // sc.n}, col {q % sc.n}): "
                   f"{100 * float(sc.share[q]):.0f}% of it predicted foreground by this head.")
        sim = None
        if info.similarity is not None:
            j = render.region_at(final.boxes, *self._point(session))
            values = np.asarray(info.similarity[j], dtype=np.float64)
            sim = render.map_overlay(session.display, values, box=render.scale_boxes(final.boxes, session.scale)[j])
            sim = render.stack_below(sim, render.colorbar_strip(
                sim.shape[1], float(np.nanmin(values)), float(np.nanmax(values)),
                "prototype . pixel feature (dot product)"))
            caption += (f" Right: similarity of final region {j}'s prototype with every pixel's feature "
                        f"(the prototype of the {final.n}x{final.n} window under the selection).")
        slider = gr.Slider(minimum=0, maximum=len(sc.boxes) - 1, value=q, step=1)
        return [slider, self._file(grid, "regions"), self._file(sim, "similarity"), caption]

    def draw_attention(self, session: Session, layer: Any) -> list:
        info = session.info
        if not info.layers:
            return [None, None, "This model records no cross-attention."]
        i = self._int(layer, 0, 0, len(info.layers) - 1)
        la = info.layers[i]
        boxes = next((sc.boxes for sc in info.scales if sc.n == la.n), info.scales[min(la.scale, len(info.scales) - 1)].boxes)
        q = render.region_at(boxes, *self._point(session))
        att = np.asarray(la.image[q], dtype=np.float64)
        img = render.map_overlay(session.display, att, box=render.scale_boxes(boxes, session.scale)[q])
        img = render.stack_below(img, render.colorbar_strip(img.shape[1], float(np.nanmin(att)), float(np.nanmax(att)),
                                                            "attention mass per image token"))
        words = render.real_words(info.tokens, info.token_mask)
        values = [float(la.language[q, j]) for j, _ in words]
        bars = render.word_bar_chart([t for _, t in words], values,
                                     xlabel="attention mass (share of the query's attention)")
        img_mass = float(la.image[q].sum())
        word_mass = float(sum(values))
        pad_mass = max(0.0, float(la.language[q].sum()) - word_mass)
        caption = (f"**Decoder layer {i}** (scale {la.scale}, {la.n}x{la.n} region queries, map "
                   f"{la.grid_hw[1]}x{la.grid_hw[0]}). Query {q} (the region under the selection) puts "
                   f"{100 * img_mass:.0f}% of its cross-attention on the image, {100 * word_mass:.0f}% on the "
                   f"words" + (f" and {100 * pad_mass:.0f}% on padding tokens (not masked in the memory)"
                               if pad_mass >= 0.005 else "") + ".")
        return [self._file(img, "attention"), self._file(bars, "words"), caption]

    def draw_prototypes(self, session: Session, k: Any) -> list:
        info = session.info
        if info.prototypes is None:
            return [None, None, "This model records no prototypes."]
        k = self._int(k, 4, 1, 16)
        if k not in session.clusters:
            session.clusters[k] = cluster_prototypes(info.prototypes, k)
        c = session.clusters[k]
        final = info.scales[-1]
        img = render.cluster_overlay(session.display, render.scale_boxes(final.boxes, session.scale),
                                     c["labels"], c["k"])
        colours = render.label_colors(max(int(c["k"]), 1))
        counts = np.bincount(np.asarray(c["labels"], dtype=np.int64), minlength=len(colours))
        img = render.stack_below(img, render.legend_strip(
            img.shape[1], [(colours[i], f"cluster {i} ({int(counts[i])})") for i in range(len(colours))]))
        j = render.region_at(final.boxes, *self._point(session))
        scatter = render.pca_scatter(c["pca"], c["labels"], c["k"], highlight=j,
                                     title=f"PCA of {len(c['labels'])} region prototypes, k = {c['k']}")
        sil = "undefined (one cluster, or all prototypes identical)" if c["silhouette"] is None \
            else f"{c['silhouette']:.3f}"
        caption = (f"**KMeans on the final {final.n}x{final.n} region prototypes** (paper Fig. 7): "
                   f"k = {c['k']}{' (reduced: fewer distinct prototypes)' if c['k'] != k else ''}, "
                   f"silhouette = {sil}. The ringed point is the selected region ({j}).")
        return [self._file(img, "clusters"), self._file(scatter, "pca"), caption]

    def draw_language(self, session: Session, word: Any) -> list:
        info = session.info
        if info.word_weights is None:
            return [gr.skip(), None, None, "This model has no query generator word weights."]
        words = render.real_words(info.tokens, info.token_mask)
        valid = [i for i, _ in words]
        w = self._int(word, valid[1] if len(valid) > 1 else valid[0], 0, len(info.tokens) - 1)
        if w not in valid:
            w = valid[1] if len(valid) > 1 else valid[0]
        heat = render.word_weight_heatmap(info.word_weights, info.tokens, info.token_mask, highlight_word=w)
        coarse = info.scales[0]
        q = render.region_at(coarse.boxes, *self._point(session))
        ww = np.asarray(info.word_weights[:, w], dtype=np.float64)
        wmap = render.region_values_overlay(session.display, render.scale_boxes(coarse.boxes, session.scale),
                                            ww, highlight=q)
        m = float(np.nanmax(np.abs(ww))) if np.isfinite(ww).any() else 0.0
        wmap = render.stack_below(wmap, render.colorbar_strip(wmap.shape[1], -m, m, f"raw weight of '{info.tokens[w]}'",
                                                              colors="diverging"))
        dropdown = gr.Dropdown(choices=[(f"{i}: {t}", str(i)) for i, t in words], value=str(w))
        caption = (f"**Query generator**: each of the {info.word_weights.shape[0]} region queries "
                   f"({coarse.n}x{coarse.n} grid) is a weighted sum of the words with these raw, "
                   f"un-normalised weights (red positive, blue negative). The map shows word "
                   f"'{info.tokens[w]}' over the grid.")
        return [dropdown, self._file(heat, "word-weights"), self._file(wmap, "word-map"), caption]

    # ------------------------------------------------------------------------- selections
    def select_region(self, image: Any, tab: str, session: Optional[Session], scale_idx: Any, region: Any,
                      layer: Any, k: Any, word: Any, progress: gr.Progress = gr.Progress()) -> list:
        """The region slider moved: select that region's centre, then redraw the tab."""
        if session is not None and session.info is not None:
            s = self._int(scale_idx, 1, 0, len(session.info.scales) - 1)
            boxes = session.info.scales[s].boxes
            session.point = render.box_center(boxes, self._int(region, 0, 0, len(boxes) - 1))
        return self.render_tab(image, tab, session, scale_idx, region, layer, k, word, progress)

    def click_image(self, image: Any, tab: str, session: Optional[Session], scale_idx: Any, region: Any,
                    layer: Any, k: Any, word: Any, evt: gr.SelectData,
                    progress: gr.Progress = gr.Progress()) -> list:
        """A click on an analysis image selects the point under it (display -> original pixels)."""
        if session is not None and evt is not None and isinstance(evt.index, (list, tuple)) and len(evt.index) == 2:
            x, y = evt.index
            h, w = session.size  # a click on a legend strip under the image counts as its bottom row
            session.point = (min(float(x) / session.scale, w - 1.0), min(float(y) / session.scale, h - 1.0))
        return self.render_tab(image, tab, session, scale_idx, region, layer, k, word, progress)

    def set_tab(self, tab: str) -> str:
        return tab if tab in TABS else "segmentation"

    # --------------------------------------------------------------------------- scenes
    def new_scene(self, seed: Any, world: str = "shapes") -> list:
        """A SynthGRES scene and its suggested expressions. Outputs: image, suggestions, expression,
        session, banner. Seed 0 (or empty) draws a new seed on every click and leaves the box at 0; the
        seed used is shown in the banner, so a scene can be made again by typing it in."""
        skip = [gr.skip()] * 4
        if self.random_scene is None:
            msg = "SynthGRES is not installed here, so no random scene can be made."
            gr.Warning(msg)
            return skip + [render.status_banner(None, error=msg)]
        world = world if world in WORLDS else "shapes"
        try:
            s = abs(int(seed)) if seed not in (None, "") and np.isfinite(float(seed)) else 0
        except (TypeError, ValueError, OverflowError):
            s = 0
        if s == 0:  # 0 / empty = a new random scene on every click
            s = random.randrange(1, 10**6)
        try:
            if world == "shapes":
                image, _scene, suggestions = self.random_scene(s, 320)
            else:
                image, _scene, suggestions = self.random_scene(s, 320, world=world)
        except TypeError:  # an older SynthGRES: random_scene(seed, size) only
            msg = f"This version of SynthGRES has no {world} world: choose the shapes world."
            gr.Warning(msg)
            return skip + [render.status_banner(None, error=msg)]
        except RuntimeError as exc:  # e.g. the photo world's system packages are missing (the message says which)
            msg = f"The {world} world is not available here: {exc}"
            gr.Warning(msg)
            return skip + [render.status_banner(None, error=msg)]
        samples = [[sentence] for sentence, _ids, _tags in suggestions]
        label = f"Random scene #{s} ({world} world)"
        banner = render.status_banner(None, message=f"{label}: click a suggested expression or type your own.")
        return [self._file(image, f"scene-{s}"), gr.Dataset(samples=samples, visible=bool(samples)), "",
                Session(label=label), banner]

    def example_chips(self, image: Any) -> Any:
        """After an example is loaded: that image's own suggestion chips (its gallery expressions)."""
        name = Path(str(image)).name if image else ""
        chips = self.chips.get(name)
        if not chips:
            return gr.Dataset(samples=[], visible=False)
        return gr.Dataset(samples=[[c] for c in chips], visible=True)

    @staticmethod
    def pick_suggestion(sample: Any) -> str:
        if isinstance(sample, (list, tuple)) and sample:
            return str(sample[0])
        return "" if sample is None else str(sample)

    # ---------------------------------------------------------------------------- API
    def api_segment(self, image: Any, text: Any, threshold: Optional[float] = None) -> Tuple[str, dict]:
        """Segment what `text` refers to in `image` (one object, several, or none).

        Args:
            image: the image file (PNG, JPEG, BMP, TIFF, WebP or GIF; at most 40 MP).
            text: the referring expression, e.g. "the two red circles".
            threshold: mask threshold on the per-pixel probability, 0 < t < 1.
        Returns:
            The mask as a PNG (0/255, the image's own size) and a JSON summary. Bad input raises a
            gr.Error whose message says what was wrong.
        """
        try:
            text = self._check_text(text)
            rgb, key = self.service.load(image)
            r = self.service.predict(rgb, key, text, threshold)
        except InputError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("/segment failed")
            raise gr.Error(f"Internal error ({type(exc).__name__}).", print_exception=False) from None
        mask = r.mask.astype(np.uint8) * 255
        self._trim(mask.size)
        info = {"no_target": r.no_target, "nt_prob": round(float(r.nt_prob), 6),
                "area_fraction": round(float(r.area_fraction), 6), "latency_ms": round(float(r.latency_ms), 2),
                "truncated": r.truncated, "height": int(mask.shape[0]), "width": int(mask.shape[1]),
                "threshold": r.threshold, "nt_rule": r.nt_rule, "nt_threshold": r.nt_threshold,
                "mask_refinement": r.extras.get("refine", "none"),
                "pixels": int(np.count_nonzero(r.mask)),
                "out_of_vocabulary": bool(self.card is not None and self.card.out_of_vocabulary_notice(r.text)),
                "known_only_from_drawings": self.card.drawn_only_in(r.text) if self.card is not None else []}
        return self.png.write(mask, "mask"), info


API_DESCRIPTION = (
    "Segment what `text` refers to in `image`: one object, several, or none. Returns the mask as a PNG "
    "(0/255, at the image's own size; all 0 for no target) and a JSON summary {no_target, nt_prob, "
    "area_fraction, pixels, latency_ms, truncated, out_of_vocabulary, known_only_from_drawings, height, width, "
    "threshold, nt_rule, nt_threshold, mask_refinement}; mask_refinement names the edge refinement applied "
    "before the threshold (\"none\" or the guided filter's settings); known_only_from_drawings lists the expression's nouns the model saw only as drawings. "
    "Bad input (not an image, over 40 MP, empty text, threshold outside (0, 1)) is an error whose "
    "message says what to change.")


def _about(card: Optional[ModelCard], source: str) -> str:
    """The page header: what the app does and the model card (never a server path)."""
    head = ("## MABP — segment whatever a sentence refers to\n"
            "One object, several, or none at all (generalized referring expression segmentation, "
            "Li et al., *Bring Adaptive Binding Prototypes to GRES*).")
    line = card_markdown(card) if card is not None else f"**Model**: {Path(source).name}"
    return head + "  \n" + line


def notice_html(notice: Optional[str]) -> str:
    if not notice:
        return ""
    return ('<div id="mabp-notice" style="padding:8px 12px;border-radius:8px;border:1px solid #b36b00;'
            'background:#fff4e0;color:#7a4600;font-weight:600">&#9888; ' + notice + "</div>")


def _chart(elem_id: str):
    """An output image of the analysis tabs: PNG, no label and no corner buttons over the chart."""
    return gr.Image(show_label=False, format="png", interactive=False, buttons=[], elem_id=elem_id)


def create_app(predictor: MABPPredictor, notice: Optional[str] = None, source: Optional[str] = None,
               examples_dir: Path = EXAMPLES_DIR, max_images: int = 4,
               concurrency_limit: int = 2, runner: Optional[ModelThread] = None,
               card: Optional[ModelCard] = None, cache_bytes: Optional[int] = None, parallel: int = 0) -> gr.Blocks:
    """Build the demo around a ready predictor (lite checkpoint in app.py, a tiny model in tests).

    notice: shown in a banner at the top (app.py passes "no trained checkpoint found ..." when it
    fell back to the untrained lite preset). card: the model card (app/model_card.py; app.py passes
    the loaded checkpoint's) — without one, an untrained preset's card is shown. cache_bytes caps the
    decoded-image and encoded-image caches (SegmentService). parallel: expression workers of the
    fast path (SegmentService). Call `.launch()` on the result; the queue is set here.
    """
    service = SegmentService(predictor, max_images=max_images, runner=runner, max_bytes=cache_bytes,
                             parallel=parallel)
    card = card or model_card(None, preset=predictor.cfg.preset, trained=False)
    cb = DemoCallbacks(service, max_tokens=predictor.cfg.text.max_tokens, card=card)
    inf = predictor.cfg.inference
    rows, labels, cb.chips = load_examples(examples_dir, cb.random_scene)
    source = source or f"preset {predictor.cfg.preset}"

    with gr.Blocks(title="MABP — generalized referring segmentation", delete_cache=(1800, 3600)) as demo:
        demo.mabp_callbacks = cb  # tests and benchmarks reach the handlers through the app
        session = gr.State(None, time_to_live=3600)
        tab_state = gr.State("segmentation")
        gr.Markdown(_about(card, source), elem_id="model-card")
        with gr.Accordion("What this model knows", open=False, elem_id="vocabulary"):
            gr.Markdown(vocabulary_markdown(card))
        gr.HTML(notice_html(notice), visible=bool(notice), elem_id="notice-box")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = SafeImage(label="Image", type="filepath", image_mode=None, format="png",
                                  sources=["upload", "clipboard"], height=340, elem_id="input-image")
                with gr.Row():
                    seed = gr.Number(label="Scene seed (0 = new each click)", value=0, precision=0, scale=2,
                                     minimum=0, elem_id="seed")
                    world = gr.Radio(list(WORLDS), value="shapes", label="World", scale=2, elem_id="world")
                    scene_btn = gr.Button("New random scene", scale=1, interactive=cb.random_scene is not None,
                                          elem_id="scene-btn")
                suggestions = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[],
                                         label="Suggested expressions (click to use)", type="values",
                                         elem_id="suggestions", visible=False)  # a random scene's or an example's
                with gr.Row():
                    text = gr.Textbox(label="Expression (Enter to segment)", lines=1, max_lines=3, scale=4,
                                      placeholder="e.g. the two red circles / everything but the stars",
                                      elem_id="expression")
                    run = gr.Button("Segment", variant="primary", scale=1, elem_id="run")
                threshold = gr.Slider(0.01, 0.99, value=float(inf.threshold), step=0.01,
                                      label="Mask threshold (Enter applies a typed value)", elem_id="threshold")
                nt_rule = gr.Radio(list(NT_RULES), value=inf.nt_rule, label="No-target rule",
                                   info="first: head 1 (paper numbers) · last: final head · any: any head says none",
                                   elem_id="nt-rule")
                k = gr.Slider(2, 12, value=4, step=1, label="Prototype clusters k (Prototypes tab)")
            with gr.Column(scale=2, min_width=360, elem_id="outputs"):
                banner = gr.HTML(render.status_banner(None), elem_id="status")
                with gr.Tabs(selected="segmentation"):
                    with gr.Tab("Segmentation", id="segmentation") as t_seg:
                        view = gr.Radio(VIEW_CHOICES, value="overlay", show_label=False, elem_id="view",
                                        container=False)
                        overlay = gr.Image(label="The answer (preview, at most 1600 px)", format="png",
                                           interactive=False, elem_id="overlay", height=420, show_label=False,
                                           buttons=["fullscreen"])
                        with gr.Row():
                            mask_dl = gr.DownloadButton("Download mask (PNG, original size)", value=None,
                                                        interactive=False, size="sm", elem_id="mask-download")
                            overlay_dl = gr.DownloadButton("Download overlay (PNG, preview size)", value=None,
                                                           interactive=False, size="sm", elem_id="overlay-download")
                        heads = gr.Gallery(label="Every supervised head (coarse → fine)", columns=4, height=200,
                                           interactive=False, elem_id="heads")
                        latency = gr.Markdown(elem_id="latency")
                        trunc = gr.Markdown(elem_id="truncation")
                    with gr.Tab("Regions", id="regions") as t_reg:
                        with gr.Row():
                            scale_idx = gr.Radio(SCALE_CHOICES, value=1, label="Region grid", scale=2)
                            region = gr.Slider(0, 63, value=0, step=1, label="Region (or click the image)", scale=1)
                        with gr.Row():
                            with gr.Column(min_width=300):
                                gr.Markdown("**Regions and their part of the mask** (click to select)")
                                reg_img = _chart("regions-img")
                            with gr.Column(min_width=300):
                                gr.Markdown("**Prototype similarity** of the selected final region")
                                reg_sim = _chart("similarity-img")
                        reg_md = gr.Markdown()
                    with gr.Tab("Attention", id="attention") as t_att:
                        layer = gr.Slider(0, 8, value=0, step=1, label="Decoder layer")
                        with gr.Row():
                            with gr.Column(min_width=300):
                                gr.Markdown("**Cross-attention of the selected region query** (click to select)")
                                att_img = _chart("attention-img")
                            with gr.Column(min_width=300):
                                gr.Markdown("**Attention on each word**")
                                att_bar = _chart("words-img")
                        att_md = gr.Markdown()
                    with gr.Tab("Prototypes", id="prototypes") as t_pro:
                        with gr.Row():
                            with gr.Column(min_width=300):
                                gr.Markdown("**Region prototypes by cluster** (click to select)")
                                pro_img = _chart("clusters-img")
                            with gr.Column(min_width=300):
                                gr.Markdown("**PCA of the prototypes**")
                                pro_pca = _chart("pca-img")
                        pro_md = gr.Markdown()
                    with gr.Tab("Language", id="language") as t_lang:
                        word = gr.Dropdown(choices=[], label="Word", allow_custom_value=True)
                        gr.Markdown("**Word weights per region query**")
                        lang_heat = _chart("word-heat")
                        gr.Markdown("**The word's weight on the 4x4 region grid** (click to select)")
                        lang_map = _chart("word-map")
                        lang_md = gr.Markdown()
                    demo.mabp_video = build_video_tab(predictor, runner, threshold, nt_rule)  # app/video.py
        expected = gr.Textbox(visible=False, label="Expected answer")
        if rows:
            examples = gr.Examples(examples=rows, inputs=[image, text, expected], cache_examples=False,
                                   label="Examples (SynthGRES scenes; the expected answer beside each)",
                                   examples_per_page=len({r[0] for r in rows}), elem_id="examples")
        else:
            examples = None

        # Hidden flow behind the lean API endpoint /segment (a file in, mask PNG + JSON out).
        with gr.Column(visible=False):
            api_image = ApiImageFile(label="image", type="filepath")
            api_text = ApiText(label="text")
            api_threshold = ApiThreshold(label="threshold", value=float(inf.threshold))
            api_mask = gr.Image(label="mask", format="png", type="filepath")
            api_json = gr.JSON(label="result")
            api_btn = gr.Button("segment")
        api_btn.click(cb.api_segment, [api_image, api_text, api_threshold], [api_mask, api_json],
                      api_name="segment", api_description=API_DESCRIPTION)

        # ----------------------------------------------------------------------------- wiring
        seg_in = [image, text, threshold, nt_rule, tab_state, session, view]
        seg_out = [session, banner, overlay, heads, latency, trunc, mask_dl, overlay_dl]
        tab_in = [image, tab_state, session, scale_idx, region, layer, k, word]
        tab_out = [session, region, reg_img, reg_sim, reg_md, att_img, att_bar, att_md, pro_img, pro_pca, pro_md,
                   word, lang_heat, lang_map, lang_md]
        private = {"api_visibility": "private"}
        n_out = len(seg_out)

        def run_segment(trigger):
            return trigger(cb.segment, seg_in, seg_out, trigger_mode="always_last", **private).success(
                cb.render_tab, tab_in, tab_out, **private)

        def segment_if_ready(im, t, th, r, tab, s, v):
            """After an upload: segment the typed expression, unless the upload was refused (its error
            banner stays, shown once)."""
            if not (t or "").strip() or s is None or s.key is None:
                return [gr.skip()] * n_out
            return cb.segment(im, t, th, r, tab, s, v)

        def cleared():
            return [Session(), render.status_banner(None), None, [], "", ""] + cb._no_downloads()

        run_segment(text.submit)
        run_segment(run.click)
        run_segment(threshold.release)
        run_segment(nt_rule.input)
        view.input(cb.change_view, [image, session, view], [overlay], **private)
        image.upload(cb.prepare_image, [image, session], seg_out, **private).success(
            segment_if_ready, seg_in, seg_out, **private).success(cb.render_tab, tab_in, tab_out, **private)
        image.clear(cleared, None, seg_out, **private)
        # a new image makes the previous scene's or example's suggestions stale
        image.upload(lambda: gr.Dataset(samples=[], visible=False), None, [suggestions], **private)
        image.clear(lambda: gr.Dataset(samples=[], visible=False), None, [suggestions], **private)
        scene_btn.click(cb.new_scene, [seed, world], [image, suggestions, text, session, banner], **private).success(
            # only a freshly made scene (a refused world leaves the old image, session and error banner)
            lambda im, s: cb.prepare_image(im, s) if im and s is not None and s.key is None and s.label
            else [gr.skip()] * n_out, [image, session], seg_out, **private)
        suggestions.click(cb.pick_suggestion, [suggestions], [text], **private).success(
            cb.segment, seg_in, seg_out, **private).success(cb.render_tab, tab_in, tab_out, **private)
        if examples is not None:
            examples.load_input_event.success(cb.example_chips, [image], [suggestions], **private).success(
                cb.segment, seg_in, seg_out, **private).success(cb.render_tab, tab_in, tab_out, **private)
        for tab_name, tab in (("segmentation", t_seg), ("regions", t_reg), ("attention", t_att),
                              ("prototypes", t_pro), ("language", t_lang)):
            tab.select(lambda name=tab_name: name, None, [tab_state], **private).success(
                cb.render_tab, tab_in, tab_out, **private)
        scale_idx.input(cb.render_tab, tab_in, tab_out, **private)
        region.release(cb.select_region, tab_in, tab_out, trigger_mode="always_last", **private)
        layer.release(cb.render_tab, tab_in, tab_out, trigger_mode="always_last", **private)
        k.release(cb.render_tab, tab_in, tab_out, trigger_mode="always_last", **private)
        word.input(cb.render_tab, tab_in, tab_out, **private)
        for img in (reg_img, reg_sim, att_img, pro_img, lang_map):
            img.select(cb.click_image, tab_in, tab_out, **private)
        demo.load(None, None, None, js=THRESHOLD_ENTER_JS, **private)

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=256)
    return demo


def launch_options(host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> dict:
    """Keyword arguments for demo.launch() shared by app.py, tests and the benchmark."""
    return {"server_name": host, "server_port": port, "share": share, "show_error": True,
            "max_file_size": "64mb", "footer_links": ["api", "gradio"]}
