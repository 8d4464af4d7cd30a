"""The demo's Video tab: upload a short clip, type an expression, get the overlay video, the no-target
probability per frame and a download of the masks (paper §IV-D: every frame is an independent image).

`VideoCallbacks.segment_video` is a plain function (tested directly); `build_video_tab(...)` creates the tab's
components inside the caller's `gr.Blocks` / `gr.Tabs` and wires them. The work itself is
`mabp.video.segment_clip`; all torch work runs on the app's model thread (`app.service.ModelThread`),
so a clip occupies the model for its duration and image requests queue behind it.

Limits (stated in the UI): ≤ 20 s and ≤ 300 frames after the stride; frames are downscaled so the
longer side is ≤ 640 px (the model itself sees its own input size, 320×320 for `lite`).
Errors never raise out of the callback: it returns empty outputs and a one-line message.

No `from __future__ import annotations`: Gradio reads the handler's hints to inject gr.Progress.
"""
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import gradio as gr
import pandas as pd

from mabp.image_io import InputError
from mabp.predictor import MABPPredictor
from mabp.video import ClipOutputs, segment_clip
from mabp.video_io import VideoLimits

log = logging.getLogger("mabp.app")

ROOT = Path(__file__).resolve().parents[1]
VIDEO_EXAMPLES_DIR = ROOT / "assets" / "examples" / "video"
APP_LIMITS = VideoLimits(max_seconds=20.0, max_frames=300, max_side=640)
MAX_TEXT_CHARS = 10_000
PLOT_COLUMNS = ["time_s", "probability", "series"]


def limits_text(limits: VideoLimits = APP_LIMITS) -> str:
    return (f"Clips up to {limits.max_seconds:g} s and {limits.max_frames} frames after the stride; frames are "
            f"downscaled to at most {limits.max_side} px on the longer side (the model sees its own input size). "
            "Every frame is segmented independently, as the paper does for video (§IV-D).")


def empty_plot() -> pd.DataFrame:
    return pd.DataFrame({"time_s": pd.Series([], dtype=float), "probability": pd.Series([], dtype=float),
                         "series": pd.Series([], dtype=str)})


def timeline_frame(out: ClipOutputs, threshold: float = 0.5) -> pd.DataFrame:
    """The plot's data: p(no target) per processed frame, and the decision threshold as a second series."""
    rows = [{"time_s": r["time_s"], "probability": r["nt_prob"], "series": "p(no target)"} for r in out.timeline]
    if out.timeline:
        first, last = out.timeline[0]["time_s"], out.timeline[-1]["time_s"]
        rows += [{"time_s": t, "probability": threshold, "series": "decision threshold"} for t in (first, last)]
    return pd.DataFrame(rows, columns=PLOT_COLUMNS)


def load_video_examples(folder: Path = VIDEO_EXAMPLES_DIR) -> List[List[str]]:
    """[clip path, expression] rows from assets/examples/video/examples.json (missing clips skipped)."""
    manifest = folder / "examples.json"
    if not manifest.is_file():
        return []
    rows = []
    for item in json.loads(manifest.read_text()):
        clip = folder / item["file"]
        if clip.is_file():
            rows.extend([str(clip), text] for text in item["expressions"])
    return rows


class VideoCallbacks:
    """The tab's handler around one shared model.

    Args:
        predictor: the app's predictor; the tab uses its own MABPPredictor on the same model.
        runner: the app's ModelThread (None: run in the calling thread, as tests do).
        folder: where outputs are written (default: beside Gradio's cache, pruned after 15 min).
        limits: the clip limits.
    """

    def __init__(self, predictor: MABPPredictor, runner: Any = None, folder: Optional[Path] = None,
                 limits: VideoLimits = APP_LIMITS, max_age_s: float = 900.0):
        self.predictor = MABPPredictor(predictor.model, device=str(predictor.device), max_pixels=predictor.max_pixels,
                                       fast_path=predictor.fast_path)
        self._run: Callable[..., Any] = runner.run if runner is not None else (lambda fn, *a, **k: fn(*a, **k))
        base = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
        self.folder = Path(folder or base / f"mabp-video-{os.getpid()}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self.max_age_s = max_age_s
        self._lock = threading.Lock()  # one clip at a time on this tab's predictor (when no runner serialises)

    def _prune(self) -> None:
        now = time.time()
        for p in self.folder.iterdir():
            try:
                if now - p.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            except OSError:
                pass

    def _work(self, video: str, text: str, stride: int, threshold: Optional[float], nt_rule: Optional[str],
              progress: Callable[[int, int, float], None]) -> Tuple[ClipOutputs, Path]:
        with self._lock:
            return self._work_locked(video, text, stride, threshold, nt_rule, progress)

    def _work_locked(self, video: str, text: str, stride: int, threshold: Optional[float], nt_rule: Optional[str],
                     progress: Callable[[int, int, float], None]) -> Tuple[ClipOutputs, Path]:
        job = self.folder / uuid.uuid4().hex[:12]
        job.mkdir()
        try:
            out = segment_clip(self.predictor, video, text, out_video=job / "overlay.mp4", masks=job / "masks",
                               timeline=job / "timeline.json", stride=stride, limits=self.limits,
                               threshold=threshold, nt_rule=nt_rule, progress=progress)
            zpath = job / "masks.zip"
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted((job / "masks").iterdir()):
                    z.write(p, f"masks/{p.name}")
                z.write(job / "timeline.json", "timeline.json")
                z.write(job / "timeline.csv", "timeline.csv")
        except BaseException:
            shutil.rmtree(job, ignore_errors=True)
            raise
        finally:
            self.predictor.reset_image()
        return out, zpath

    def segment_video(self, video: Any, text: Any, stride: Any = 1, threshold: Any = None, nt_rule: Any = None,
                progress: gr.Progress = gr.Progress()) -> list:
        """-> [overlay mp4 path | None, plot DataFrame, masks zip path | None, Markdown summary or error]."""
        def fail(msg: str) -> list:
            return [None, empty_plot(), None, f"**⚠ {msg}**"]

        try:
            if not video:
                return fail("No clip was given: upload a video (MP4, WebM, MOV, AVI, MKV) or pick an example.")
            if text is None or not str(text).strip():
                return fail("The expression is empty: type what to segment, e.g. 'the red circle'.")
            text = str(text)[:MAX_TEXT_CHARS]
            try:
                stride = 1 if stride is None or stride == "" else int(stride)
            except (TypeError, ValueError):
                return fail(f"The frame stride must be a whole number >= 1, got {stride!r}.")
            if stride < 1:
                return fail(f"The frame stride must be >= 1, got {stride}.")
            if threshold is not None:
                try:
                    threshold = float(threshold)
                except (TypeError, ValueError):
                    return fail(f"The mask threshold must be a number between 0 and 1, got {threshold!r}.")
                if not 0.0 < threshold < 1.0:
                    return fail(f"The mask threshold must be between 0 and 1 (exclusive), got {threshold}.")
            self._prune()

            def report(done: int, total: int, fps: float) -> None:
                try:
                    progress(done / max(total, 1), desc=f"frame {done}/{total} · {fps:.1f} frames/s")
                except Exception:  # progress is cosmetic
                    pass

            out, zpath = self._run(self._work, str(video), text, stride, threshold, nt_rule or None, report)
        except InputError as exc:
            return fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - the UI must never crash; the log keeps the traceback
            log.exception("video segmentation failed")
            return fail(f"Internal error while segmenting the clip ({type(exc).__name__}); see the server log.")
        n_none = sum(r["no_target"] for r in out.timeline)
        thr = threshold if threshold is not None else self.predictor.cfg.inference.threshold
        lines = [f"**{out.frames} frames** (stride {stride}, {out.size[1]}×{out.size[0]} px) in {out.wall_s:.1f} s — "
                 f"{out.fps:.1f} frames/s end to end, {out.model_fps:.1f} frames/s model only.",
                 f"No target in {n_none} of {out.frames} frames."]
        lines += [f"Note: {n}." for n in out.notes]
        return [str(out.video), timeline_frame(out, thr), str(zpath), "\n\n".join(lines)]


def build_video_tab(predictor: MABPPredictor, runner: Any = None, threshold: Optional[Any] = None,
                    nt_rule: Optional[Any] = None, examples_dir: Path = VIDEO_EXAMPLES_DIR) -> VideoCallbacks:
    """Create the "Video" tab inside the current gr.Tabs and wire it; returns its callbacks.

    threshold / nt_rule: the page's existing controls (components) to share; None = the model's defaults.
    """
    cb = VideoCallbacks(predictor, runner)
    with gr.Tab("Video", id="video"):
        gr.Markdown(limits_text(cb.limits))
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                clip = gr.Video(label="Clip", sources=["upload"], elem_id="video-input", height=280)
                vtext = gr.Textbox(label="Expression", lines=1, max_lines=3, elem_id="video-expression",
                                   placeholder="e.g. the small pink shape / everything red")
                stride = gr.Slider(1, 10, value=1, step=1, label="Segment every k-th frame", elem_id="video-stride")
                run = gr.Button("Segment the clip", variant="primary", elem_id="video-run")
            with gr.Column(scale=2, min_width=360):
                overlay = gr.Video(label="Overlay (mask per frame)", interactive=False, elem_id="video-overlay",
                                   height=320)
                plot = gr.LinePlot(empty_plot(), x="time_s", y="probability", color="series",
                                   title="No-target probability per frame", x_title="time (s)",
                                   y_title="p(no target)", y_lim=[0, 1], height=220, elem_id="video-plot")
                masks = gr.File(label="Masks (PNG per frame) + timeline (JSON, CSV), zipped", interactive=False,
                                elem_id="video-masks")
                summary = gr.Markdown(elem_id="video-summary")
        rows = load_video_examples(examples_dir)
        if rows:
            gr.Examples(examples=rows, inputs=[clip, vtext], cache_examples=False,
                        label="Example clips (generated SynthGRES scenes with moving shapes)")
    inputs = [clip, vtext, stride]
    inputs += [threshold] if threshold is not None else [gr.State(None)]
    inputs += [nt_rule] if nt_rule is not None else [gr.State(None)]
    for trigger in (run.click, vtext.submit):
        trigger(cb.segment_video, inputs, [overlay, plot, masks, summary], api_visibility="private",
                trigger_mode="always_last")
    return cb


__all__ = ["VideoCallbacks", "build_video_tab", "APP_LIMITS", "load_video_examples", "timeline_frame", "limits_text"]
