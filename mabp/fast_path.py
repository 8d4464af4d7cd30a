"""The CPU fast path: a late-fusion MABP run by ONNX Runtime, same maths in fp32.

Two graphs, exported once per process from the model itself (`torch.onnx.export`, traced, so each is
specialised to the model's input size and the tokenizer's fixed padded length, which is all the
predictor ever feeds them):
- the image graph (`VisualGraph`): the language-free visual pass that `MABPPredictor.set_image` caches;
- the expression graph (`ExpressionGraph`): text encoder + PWAM fusion + pixel decoder + MABP decoder,
  what a new expression on an encoded image costs.
onnxruntime's CPU provider runs them with its graph optimisations (fused attention, layer norm and GELU,
constant folding, pre-packed GEMM weights). The only differences from eager PyTorch are float rounding
(~1e-5 in probabilities, ~1e-4 in logits).

Why both graphs and the text encoder inside: ORT's worker threads busy-wait for a moment after each run.
PyTorch work right after a run (a text encoder, an image pass) then shares the cores with them and was
measured 3.6x slower; turning the busy-wait off costs ORT ~15 % per run. With the whole model in ORT, only
the short post-processing runs in PyTorch. The image graph, which runs right before an expression, does
not busy-wait (two sessions' pools on two cores collided: set_image + predict 88-96 ms, 48-61 without).
Result (lite, 2 threads): model time 39-40 ms against 51-52 ms eager.

Measured on the shipped `lite` checkpoint, 2 threads, quiet: docs/performance.md ("Inference").
Agreement on SynthGRES val: benchmarks/fast_path_agreement.py.

`OnnxFastPath.build` checks itself: on two probe images and expressions, every mask and no-target
probability must equal eager PyTorch's within `tolerance`. When it cannot serve (onnxruntime missing, a
model whose visual stages see the language, a GPU model, an export failure, a disagreement)
`build_fast_path` returns None with the reason and the predictor runs eager PyTorch.
"""
from __future__ import annotations

import contextlib
import io
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .modeling.expression_graph import ExpressionGraph, rebuild_visual, visual_tensors
from .modeling.visual_graph import VisualGraph

VISUAL_NAMES = ("v0", "v1", "v2", "v3")
TEXT_NAMES = ("input_ids", "attention_mask")
# onnxruntime graph rewrites left out. SkipLayerNormFusion turns Add + LayerNormalization into its
# SkipLayerNormalization kernel, which measured ~8x slower per element than the two ops it replaces on the
# pixel decoder's (1, 4725, 256) maps (paper at 480x480: 2.4 ms per norm, 29 ms per expression).
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


class FastPathUnavailable(RuntimeError):
    """The fast path cannot serve this model here; the message says why (the caller falls back to eager)."""


@dataclass
class FastPathInfo:
    """How the fast path was built: seconds to export and to load both graphs, their size and the
    probe's largest probability difference from eager PyTorch."""
    export_s: float
    load_s: float
    onnx_mb: float
    threads: int
    max_prob_diff: float = float("nan")


def _session_options(threads: int, spinning: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _export(module: nn.Module, args: Tuple[torch.Tensor, ...], names: Sequence[str]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns at every shape read as a Python int: the graph is meant to be specialised to
        # this input size and token length (`accepts_*` check both before every run).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=list(names), dynamo=False, opset_version=18,
                          do_constant_folding=True)
    return buf.getvalue()


class OnnxFastPath:
    """Both graphs in ONNX Runtime sessions. Shareable by all predictors of one model.

    encode_visual(images) replaces `MABP.encode_visual`; __call__(visual, input_ids, attention_mask)
    replaces `MABP.encode_text` + `MABP.fuse` + `MABP.forward_features` and returns the same
    {"pred_masks": [H x mask logits], "nt_logits": [H x (1, 2) or None]} dict. Build with
    `OnnxFastPath.build(model)` (or `build_fast_path`, which never raises).

    Concurrent expressions (`build(..., concurrent=True)`): a second expression session with ONE
    intra-op thread serves every run that starts while another is in progress, so two callers on two
    cores each run on their own core; a run that starts alone takes the multi-threaded session (the
    lowest latency for a single user) unless the caller has declared other requests in progress
    (`requests()`, a context manager around each request): under load the multi-threaded session's
    busy-waiting threads take CPU from the requests' other work (measured: server CPU per request 96 ms
    with one-thread runs, 134-150 ms with two-thread runs). onnxruntime's `Run` is thread-safe; with one
    intra-op thread it runs on the caller's thread and has no pool to share. `runs` counts the runs per
    session.
    """

    def __init__(self, visual_session, expression_session, shapes: Dict[str, Tuple[int, ...]],
                 nt_heads: Sequence[bool], info: FastPathInfo, visual_like: Any = None,
                 single_thread_session: Any = None):
        self.visual_session = visual_session
        self.expression_session = expression_session
        self.single_thread_session = single_thread_session
        self._flight = threading.Lock()
        self._multi_busy = False
        self._requests = 0
        self.runs = {"multi_thread": 0, "single_thread": 0}
        self.shapes = dict(shapes)
        self.nt_heads = list(nt_heads)
        self.info = info
        self.visual_like = visual_like  # Swin: a VisualFeatures with the traced stage sizes; None: a list

    # --------------------------------------------------------------------------------------- build
    @classmethod
    def build(cls, model: nn.Module, threads: Optional[int] = None, tolerance: float = 1e-3,
              concurrent: bool = False) -> "OnnxFastPath":
        """Export `model`'s two graphs, load them in onnxruntime and check them against eager PyTorch.

        Args:
            model: an eval-mode MABP on the CPU whose visual stages are language-free
                (`model.visual_cacheable()`: every `lite` model, and `paper`/`tiny` with closed gates).
            threads: onnxruntime intra-op threads (default: torch.get_num_threads()).
            tolerance: the largest allowed difference of any mask or no-target probability on the probe.
            concurrent: also load a one-thread expression session for runs that overlap another (see
                the class docstring; its prepacked weights add ~175 MB of RSS for the lite model, measured
                by benchmarks/app_load.py). Both sessions are probed.
        Raises:
            FastPathUnavailable: onnxruntime is not installed, the model is not a language-free-visual CPU
                model, an export failed, or the probe disagreed (the message gives the difference).
        """
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise FastPathUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        if next(model.parameters()).device.type != "cpu":
            raise FastPathUnavailable("the ONNX Runtime path serves CPU models only")
        if not model.visual_cacheable():
            raise FastPathUnavailable("the model's visual stages see the language (no cacheable visual pass)")
        threads = threads or torch.get_num_threads()
        model.eval()
        # two probes (image, expression): the first is also the tracing example
        probes = [_probe(model, "the big red circle on the left", seed=0),
                  _probe(model, "every shape except the small green squares", seed=1)]
        images, ids, mask = probes[0]
        with torch.no_grad():
            visual = model.encode_visual(images)
            eager = [model(*p) for p in probes]
        like = visual if hasattr(visual, "feats") else None
        maps = visual_tensors(visual)
        t0 = time.perf_counter()
        try:
            visual_bytes = _export(VisualGraph(model).eval(), (images,), ["images"])
            expression_bytes = _export(ExpressionGraph(model, like).eval(), (*maps, ids, mask),
                                       [*VISUAL_NAMES, *TEXT_NAMES])
        except Exception as exc:  # an exporter limitation is a reason to serve eager, not to fail
            raise FastPathUnavailable(f"ONNX export failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        # The image graph runs once per image, right before expressions: its threads must not busy-wait
        # into the expression run (2 pools on 2 cores); the expression graph's may (~15 % faster).
        sessions = [ort.InferenceSession(b, _session_options(threads, spinning=spin),
                                         providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
                    for b, spin in ((visual_bytes, False), (expression_bytes, True))]
        single = None
        if concurrent and threads > 1:
            single = ort.InferenceSession(expression_bytes, _session_options(1), providers=["CPUExecutionProvider"],
                                          disabled_optimizers=DISABLED_OPTIMIZERS)
        load_s = time.perf_counter() - t0
        shapes = {"images": tuple(images.shape), **{n: tuple(t.shape) for n, t in zip(VISUAL_NAMES, maps)},
                  "input_ids": tuple(ids.shape), "attention_mask": tuple(mask.shape)}
        info = FastPathInfo(export_s=export_s, load_s=load_s, threads=threads,
                            onnx_mb=(len(visual_bytes) + len(expression_bytes)) / 2**20)
        path = cls(*sessions, shapes, [n is not None for n in eager[0]["nt_logits"]], info, like, single)
        diff = max(_prob_diff(path(path.encode_visual(im), i, m), e) for (im, i, m), e in zip(probes, eager))
        if single is not None:  # the one-thread session answers too: probe it on its own
            diff = max(diff, *(_prob_diff(path(path.encode_visual(im), i, m, session=single), e)
                               for (im, i, m), e in zip(probes, eager)))
        info.max_prob_diff = diff
        path.runs = {"multi_thread": 0, "single_thread": 0}  # the probe's runs are not service
        if not diff <= tolerance:
            raise FastPathUnavailable(f"ONNX Runtime disagreed with PyTorch on the probe: a probability differs "
                                      f"by {diff:.2e} (> {tolerance:.0e})")
        return path

    # ----------------------------------------------------------------------------------------- run
    def accepts_image(self, images: torch.Tensor) -> bool:
        """True for a (1, 3, S, S) float32 batch of the traced size."""
        return tuple(images.shape) == self.shapes["images"] and images.dtype == torch.float32

    def accepts(self, visual: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
        """True if these inputs have the shapes the expression graph was traced with (batch 1, same input
        size, same padded token length; for Swin the same stage sizes)."""
        if hasattr(visual, "feats") != (self.visual_like is not None):
            return False
        if self.visual_like is not None and [tuple(s) for s in visual.sizes] != [tuple(s) for s in self.visual_like.sizes]:
            return False
        maps = visual_tensors(visual)
        if len(maps) != 4 or any(m.dtype != torch.float32 for m in maps):
            return False
        got = [tuple(m.shape) for m in maps] + [tuple(input_ids.shape), tuple(attention_mask.shape)]
        return got == [self.shapes[n] for n in (*VISUAL_NAMES, *TEXT_NAMES)]

    def encode_visual(self, images: torch.Tensor) -> Any:
        """(1, 3, S, S) float32 RGB 0..255 -> what `MABP.encode_visual` returns (list or VisualFeatures)."""
        outs = self.visual_session.run(None, {"images": _numpy(images)})
        return rebuild_visual([torch.from_numpy(o) for o in outs], self.visual_like)

    @contextlib.contextmanager
    def requests(self) -> Iterator[None]:
        """Declare one request in progress for the duration (its queueing and pre/post-processing
        included): while two or more are, every run takes the one-thread session. Thread-safe."""
        with self._flight:
            self._requests += 1
        try:
            yield
        finally:
            with self._flight:
                self._requests -= 1

    def __call__(self, visual: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 session: Any = None) -> Dict[str, List[Optional[torch.Tensor]]]:
        """Run the expression graph. Thread-safe. session=None picks one (class docstring)."""
        feed = {n: _numpy(m) for n, m in zip(VISUAL_NAMES, visual_tensors(visual))}
        feed["input_ids"] = _numpy(input_ids).astype(np.int64, copy=False)
        feed["attention_mask"] = _numpy(attention_mask).astype(np.int64, copy=False)
        took_multi = False
        if session is None:
            with self._flight:
                took_multi = self.single_thread_session is None or not (self._multi_busy or self._requests > 1)
                if took_multi:
                    self._multi_busy = True
                session = self.expression_session if took_multi else self.single_thread_session
                self.runs["multi_thread" if took_multi else "single_thread"] += 1
        try:
            outs = [torch.from_numpy(o) for o in session.run(None, feed)]
        finally:
            if took_multi:
                with self._flight:
                    self._multi_busy = False
        heads = len(self.nt_heads)
        nts = iter(outs[heads:])
        return {"pred_masks": outs[:heads], "nt_logits": [next(nts) if has else None for has in self.nt_heads]}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _probe(model: nn.Module, text: str, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic image of smooth colour blobs (masks and attention are not degenerate on it) and
    the tokens of `text`: the export example and the agreement probe."""
    from .tokenizer import TextTokenizer

    s = model.cfg.image_size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g) * 255
    images = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    tok = TextTokenizer(model.cfg.text)([text])
    return images, tok.input_ids, tok.attention_mask


def _prob_diff(a: Dict[str, list], b: Dict[str, list]) -> float:
    """Largest difference of any mask probability (sigmoid) or no-target probability (softmax)."""
    diff = 0.0
    for x, y in zip(a["pred_masks"], b["pred_masks"]):
        diff = max(diff, float((x.float().sigmoid() - y.float().sigmoid()).abs().max()))
    for x, y in zip(a["nt_logits"], b["nt_logits"]):
        if x is not None and y is not None:
            diff = max(diff, float((x.float().softmax(-1) - y.float().softmax(-1)).abs().max()))
    return diff


def build_fast_path(model: nn.Module, threads: Optional[int] = None, tolerance: float = 1e-3,
                    concurrent: bool = False) -> Tuple[Optional[OnnxFastPath], str]:
    """`OnnxFastPath.build` that never raises: (path or None, a one-line account for the log)."""
    try:
        path = OnnxFastPath.build(model, threads=threads, tolerance=tolerance, concurrent=concurrent)
    except FastPathUnavailable as exc:
        return None, f"fast path off: {exc}; serving eager PyTorch"
    i = path.info
    both = " + a 1-thread session for concurrent expressions" if path.single_thread_session is not None else ""
    return path, (f"fast path on: ONNX Runtime ({i.onnx_mb:.0f} MB of graphs, exported in {i.export_s:.1f} s, "
                  f"loaded in {i.load_s:.1f} s, {i.threads} threads{both}; probe agreement {i.max_prob_diff:.1e})")
