"""The app's model side: loading the checkpoint once, and one shared model serving many sessions.

`SegmentService` wraps ONE model for every browser session and API caller:
  * a lock around every model call. Two reasons: on 2 CPU cores two forward passes at once only
    slow each other down, and introspection registers forward hooks on the shared model (a pass from
    another thread running while the hooks are on would be recorded into the wrong result);
  * a small LRU of MABPPredictors keyed by image content, all sharing the model: each keeps its own
    encoded image and per-text outputs, so two users on two images do not re-encode each other's
    image on every request, and a threshold change re-uses the cached outputs.
    Both this LRU and the LRU of decoded uploads are capped by count AND by bytes (`max_bytes`, default
    DEFAULT_CACHE_BYTES each): a 38 MP photo decodes to 114 MB, so four of them in each cache would
    hold close to 1 GB. The newest entry is always kept.
Everything visual (overlays, charts) happens outside the lock.

Concurrent expressions: with the fast path built `concurrent` (a one-thread ONNX session beside the
multi-threaded one) and `parallel` > 1, a plain expression (no introspection) takes the lock only to find
or encode its image, then runs on one of `parallel` expression workers (threads with torch set to one
thread) while the lock is free: two requests in flight use both cores, one request alone takes the
multi-threaded session. An encoded image in use is never evicted. Measured: benchmarks/app_load.py
(docs/performance.md §6).

`ModelThread` runs every torch call of the app (loading included) on ONE long-lived thread. libgomp,
torch's OpenMP runtime, gives every Python thread that runs a parallel op its own thread team, and once
it manages more threads than there are cores it cuts its spin-waiting to almost nothing; a forward pass
is hundreds of small parallel ops, each then paying a sleep/wake-up. Measured on 2 cores with the lite
checkpoint: a new expression took 217 ms when called from a worker thread of a process whose main
thread had also run torch, against 119 ms when one thread does everything. Gradio calls handlers from a
pool of worker threads, so without this the app always paid the slow path.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import numpy as np

from mabp.image_io import InputError
from mabp.predictor import FastPathRefused, GRESResult, MABPPredictor

from mabp.image_files import image_digest, load_image
from mabp.postprocess import NT_RULES
from mabp.registry import SHIPPED_CHECKPOINT

from .model_card import ModelCard, model_card

log = logging.getLogger("mabp.app")

DEFAULT_CHECKPOINT = SHIPPED_CHECKPOINT
UNTRAINED_NOTICE = "no trained checkpoint found: predictions are untrained"

ProgressFn = Callable[[float, str], None]
DEFAULT_CACHE_BYTES = 256 * 2**20  # per cache (decoded uploads; encoded images): ~2 large photos each


def release_memory() -> bool:
    """Give freed heap memory back to the system (glibc's malloc_trim). After a large image the
    allocator keeps freed medium-sized blocks (decode buffers, PNG encodings, resized copies) in its
    arenas, so the server's RSS ratchets up over a session of large uploads. False where unavailable."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if not _MALLOC_TRIM:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM: Any = None
LARGE_IMAGE_PIXELS = 4_000_000  # after a request on an image this large, release_memory()


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the numpy arrays / torch tensors inside obj (nested lists, tuples and dicts)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
        return int(obj.element_size() * obj.nelement())
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def predictor_bytes(pred: MABPPredictor) -> int:
    """What one cached predictor holds: the original image, its resized tensor, the cached visual
    features and the per-text outputs."""
    return (_tensor_bytes(pred._image) + _tensor_bytes(pred._tensor) + _tensor_bytes(pred._visual)
            + _tensor_bytes(pred.cached_outputs()))


@dataclass
class LoadedModel:
    """What app.py loaded, and how to describe it honestly in the UI."""

    predictor: MABPPredictor
    source: str  # checkpoint path, or "preset lite (untrained decoder)"
    trained: bool
    notice: Optional[str]  # shown as a banner when not None
    load_s: float
    card: Optional[ModelCard] = None  # preset, training data, size, val scores, vocabulary (app/model_card.py)
    fast_path_note: str = "fast path off: not requested; serving eager PyTorch"  # mabp.fast_path.build_fast_path


def resolve_checkpoint(cli_value: Optional[str] = None, env: Optional[dict] = None) -> Tuple[Optional[Path], bool]:
    """(path, explicit): --checkpoint, else $MABP_CHECKPOINT, else the shipped lite checkpoint.

    explicit=True means the user asked for that file: a missing one is an error, not a fallback.
    """
    env = os.environ if env is None else env
    value = cli_value or env.get("MABP_CHECKPOINT") or None
    if value:
        return Path(value).expanduser(), True
    return DEFAULT_CHECKPOINT, False


def load_model(checkpoint: Optional[str] = None, fallback_preset: str = "lite", env: Optional[dict] = None,
               device: str = "cpu", preset: Optional[str] = None, fast_path: bool = False,
               concurrent: bool = False) -> LoadedModel:
    """Build the model once, on CPU. Nothing is downloaded: the lite preset's encoders come from
    installed packages, and a checkpoint (ours or a converted `paper` one) rebuilds from its config.

    The shipped checkpoint may not exist yet: then the lite preset (pretrained encoders, untrained
    decoder) is used and the returned notice says so; app.py shows it and logs it. `preset` (with
    no checkpoint) asks for an untrained preset on purpose, e.g. "tiny" for a quick smoke run.
    fast_path=True builds the ONNX Runtime path for new expressions (mabp/fast_path.py; it checks itself
    against PyTorch and is left off, with the reason logged, when it cannot serve this model);
    concurrent=True also loads its one-thread expression session (see SegmentService `parallel`).
    """
    from mabp import build_mabp
    from mabp.registry import load_checkpoint

    path, explicit = resolve_checkpoint(checkpoint, env)
    t0 = time.perf_counter()
    if preset and not checkpoint:
        path, explicit, fallback_preset = None, False, preset
    if path is not None and path.is_file():
        ckpt = load_checkpoint(path)  # read once: the model and its card come from the same dict
        model = build_mabp(checkpoint=ckpt)
        source, trained, notice = str(path), True, None
        card = model_card(ckpt, path)
        del ckpt
    elif explicit:
        raise FileNotFoundError(f"checkpoint not found: {path} (from --checkpoint or MABP_CHECKPOINT)")
    else:
        log.warning("%s (%s); using preset %r with an untrained decoder", UNTRAINED_NOTICE,
                    f"{path} missing" if path else "--preset given", fallback_preset)
        model = build_mabp(fallback_preset)
        source, trained = f"preset {fallback_preset} (pretrained encoders, untrained decoder)", False
        notice = UNTRAINED_NOTICE
        card = model_card(None, preset=fallback_preset, trained=False)
    fast, fast_note = None, "fast path off: disabled (--fast-path off / MABP_FAST_PATH=off); serving eager PyTorch"
    if fast_path:
        from mabp.fast_path import build_fast_path

        fast, fast_note = build_fast_path(model, concurrent=concurrent)
    log.info("%s", fast_note)
    predictor = MABPPredictor(model, device=device, fast_path=fast)
    warm_up(predictor)
    load_s = time.perf_counter() - t0
    log.info("model %s loaded in %.1f s (%s, %d px input)", source, load_s, model.cfg.preset, model.cfg.image_size)
    return LoadedModel(predictor, source, trained, notice, load_s, card, fast_note)


def warm_up(predictor: MABPPredictor) -> None:
    """One pass on a blank image so the first user does not pay the first-call costs (allocations,
    kernel choices: measured ~290 ms for a first expression against ~120 ms after). Leaves no image set."""
    blank = np.full((predictor.image_size, predictor.image_size, 3), 127, np.uint8)
    predictor.set_image(blank)
    predictor.predict("warm up")
    predictor.reset_image()


class ModelThread:
    """One long-lived thread for all torch work (see the module docstring).

    run(fn, *args) executes fn there and returns its result (or raises its exception) in the caller;
    called from the model thread itself it runs inline. Calls are served one at a time, in order.
    """

    def __init__(self, num_threads: Optional[int] = None):
        self._ident: Optional[int] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mabp-model",
                                            initializer=self._start, initargs=(num_threads,))

    def _start(self, num_threads: Optional[int]) -> None:
        import torch

        self._ident = threading.get_ident()
        if num_threads:
            torch.set_num_threads(int(num_threads))  # per-thread OpenMP setting: set it here

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # per-thread OpenMP setting (see ModelThread): each worker stays on one core


def _inline(fn: Callable[..., Any], *args, **kwargs) -> Any:
    return fn(*args, **kwargs)


class SegmentService:
    """Thread-safe front of one shared model (see the module docstring).

    runner: a ModelThread to run every model call on (app.py passes one); None runs them in the
    calling thread (tests, notebooks).
    parallel: expression workers for fast-path answers (module docstring); used only when the
    predictor's fast path has its one-thread session; 0 or 1 keeps every call on `runner`.
    """

    def __init__(self, predictor: MABPPredictor, max_images: int = 4, runner: Optional[ModelThread] = None,
                 max_bytes: Optional[int] = None, parallel: int = 0):
        self.model = predictor.model
        self.max_pixels = predictor.max_pixels
        self.max_tokens = predictor.cfg.text.max_tokens if hasattr(predictor.cfg.text, "max_tokens") else None
        self._template = predictor
        self._run = runner.run if runner is not None else _inline
        self._lock = threading.Lock()  # the model
        self._cache_lock = threading.Lock()  # the small dicts below (never held during a model call)
        self._pool: "OrderedDict[str, MABPPredictor]" = OrderedDict()
        self._max_images = max(1, int(max_images))
        self.max_bytes = int(max_bytes) if max_bytes else DEFAULT_CACHE_BYTES
        self.set_image_ms: dict = {}
        self.notes: "OrderedDict[str, list]" = OrderedDict()  # digest -> what was converted on input
        self._decoded: "OrderedDict[str, Tuple[np.ndarray, str]]" = OrderedDict()  # file path -> (rgb, digest)
        self._in_use: dict = {}  # id(predictor) -> expressions running on it outside the lock
        fast = predictor.fast_path
        usable = int(parallel) > 1 and fast is not None and getattr(fast, "single_thread_session", None) is not None
        self.parallel = int(parallel) if usable else 1  # expressions that can run at once (1: all on the model thread)
        self._workers: Optional[ThreadPoolExecutor] = None
        if usable:
            self._workers = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="mabp-expr",
                                               initializer=_one_torch_thread)

    # ------------------------------------------------------------------------------------- images
    def load(self, source) -> Tuple[np.ndarray, str]:
        """Decode/validate any image source -> (rgb, content digest). Raises InputError.

        Decodes of file paths are cached (a session sends the same upload path with every event; a
        40 MP JPEG takes ~0.5 s to decode); Gradio names uploads by content, so a path is stable.
        """
        path = str(source) if isinstance(source, (str, os.PathLike)) else None
        with self._cache_lock:
            hit = self._decoded.get(path) if path else None
            if hit is not None and os.path.isfile(path):
                self._decoded.move_to_end(path)
                return hit
        notes: list = []
        rgb = load_image(source, self.max_pixels, notes=notes)
        key = image_digest(rgb)
        with self._cache_lock:
            self.notes[key] = notes
            while len(self.notes) > 4 * self._max_images:
                self.notes.popitem(last=False)
            if path:
                self._decoded[path] = (rgb, key)
                while len(self._decoded) > 1 and (len(self._decoded) > self._max_images
                                                  or self.decoded_bytes() > self.max_bytes):
                    self._decoded.popitem(last=False)
        return rgb, key

    def _predictor_for(self, rgb: np.ndarray, key: str) -> Tuple[MABPPredictor, bool]:
        """The predictor holding this image (encoding it on first use). Call with the lock held."""
        pred = self._pool.get(key)
        if pred is not None:
            self._pool.move_to_end(key)
            return pred, False
        # The first predictor is the one we were given; later ones share its model (and its device).
        pred = self._template if not self._pool and not self._template.has_image else \
            MABPPredictor(self.model, device=str(self._template.device), max_pixels=self.max_pixels,
                          fast_path=self._template.fast_path)
        pred.set_image(rgb)
        self.set_image_ms[key] = pred.set_image_ms
        self._pool[key] = pred
        self._evict_predictors()
        return pred, True

    def decoded_bytes(self) -> int:
        """Bytes held by the cache of decoded uploads."""
        return sum(int(rgb.nbytes) for rgb, _key in self._decoded.values())

    def pool_bytes(self) -> int:
        """Bytes held by the encoded images (predictors), outputs cached per text included."""
        return sum(predictor_bytes(p) for p in self._pool.values())

    def _evict_predictors(self) -> None:
        """Drop the least recently used predictors beyond the count or byte cap (the newest stays).
        Called with the model lock held (the predictors' outputs grow during predict)."""
        while len(self._pool) > 1 and (len(self._pool) > self._max_images or self.pool_bytes() > self.max_bytes):
            old_key = next((k for k, p in self._pool.items() if not self._in_use.get(id(p))), None)
            if old_key is None or old_key == next(reversed(self._pool)):
                break  # everything older is answering an expression right now: evict it later
            old = self._pool.pop(old_key)
            old.reset_image()
            self.set_image_ms.pop(old_key, None)

    def prepare(self, rgb: np.ndarray, key: str, progress: Optional[ProgressFn] = None) -> float:
        """Encode the image now (e.g. right after an upload) so the first expression is fast."""
        self._report_encoding(key, progress)
        return self._run(self._prepare, rgb, key)

    def _prepare(self, rgb: np.ndarray, key: str) -> float:
        with self._lock:
            pred, _ = self._predictor_for(rgb, key)
            return pred.set_image_ms

    def _report_encoding(self, key: str, progress: Optional[ProgressFn]) -> None:
        # Progress is reported from the caller's (Gradio's) thread, before the model thread works.
        if progress and key not in self._pool:
            progress(0.1, "encoding the image (once per image)")

    # ---------------------------------------------------------------------------------- predict
    def predict(self, rgb: np.ndarray, key: str, text: str, threshold: Optional[float] = None,
                nt_rule: Optional[str] = None, introspect: bool = False,
                progress: Optional[ProgressFn] = None) -> GRESResult:
        """Segment `text` on the image. Raises InputError for bad text/threshold/rule."""
        text = MABPPredictor.check_text(text)
        if nt_rule is not None and nt_rule not in NT_RULES:
            raise InputError(f"Unknown no-target rule {nt_rule!r}: choose one of {', '.join(NT_RULES)}.")
        if threshold is not None:
            try:
                threshold = float(threshold)
            except (TypeError, ValueError):
                raise InputError(f"The mask threshold must be a number between 0 and 1, got {threshold!r}.") from None
            if not np.isfinite(threshold) or not 0.0 < threshold < 1.0:
                raise InputError(f"The mask threshold must be between 0 and 1 (exclusive), got {threshold}.")
        self._report_encoding(key, progress)
        if progress and introspect:
            progress(0.5, "recording attention, word weights and prototypes")
        if self._workers is not None and not introspect:
            with self._template.fast_path.requests():  # others in flight: one-thread runs (mabp/fast_path.py)
                try:
                    return self._predict_parallel(rgb, key, text, threshold, nt_rule)
                except FastPathRefused:
                    pass  # eager PyTorch must run alone (forward hooks): on the model thread, below
        return self._run(self._predict, rgb, key, text, threshold, nt_rule, introspect)

    def _predict_parallel(self, rgb: np.ndarray, key: str, text: str, threshold: Optional[float],
                          nt_rule: Optional[str]) -> GRESResult:
        """The image found/encoded on the model thread, the expression on an expression worker."""
        pred, cached = self._run(self._check_out, rgb, key, text)
        try:
            result = self._workers.submit(pred.predict, text, threshold, nt_rule, fast_only=True).result()
            result.extras["cached"] = cached
            return result
        finally:
            with self._lock:
                self._in_use[id(pred)] -= 1
                if not self._in_use[id(pred)]:
                    del self._in_use[id(pred)]
                self._evict_predictors()  # what could not be evicted while in use

    def _check_out(self, rgb: np.ndarray, key: str, text: str) -> Tuple[MABPPredictor, bool]:
        """The image's predictor (encoded if new), marked in use until the caller gives it back."""
        with self._lock:
            pred, _ = self._predictor_for(rgb, key)
            self._in_use[id(pred)] = self._in_use.get(id(pred), 0) + 1
            self._evict_predictors()
            return pred, pred.has_outputs(text)

    def _predict(self, rgb: np.ndarray, key: str, text: str, threshold: Optional[float], nt_rule: Optional[str],
                 introspect: bool) -> GRESResult:
        with self._lock:
            pred, _ = self._predictor_for(rgb, key)
            # Whether the model outputs for this text were already cached on this image (then the
            # result's latency is post-processing only); the predictor keeps them per text.
            cached = pred.has_outputs(text)
            result = pred.predict(text, threshold=threshold, nt_rule=nt_rule, introspect=introspect)
            result.extras["cached"] = cached
            self._evict_predictors()  # per-text outputs grew
            return result

    def cached_texts(self, key: str) -> int:
        pred = self._pool.get(key)
        return 0 if pred is None else len(pred.cached_outputs())
