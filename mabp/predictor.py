"""A predictor that takes one image and answers many expressions (segment-anything style).

    predictor = MABPPredictor(build_mabp(checkpoint="assets/checkpoints/mabp-lite-synthgres.pt"))
    predictor.set_image(image_rgb_uint8)
    result = predictor.predict("the two red circles")
    result.mask        # (H, W) bool at the original size, empty when result.no_target

What can be cached honestly: MABP fuses language INSIDE the visual encoder (PWAM after every stage,
gated back into the next stage), so with the paper's fusion only the image decoding / resizing /
normalisation is text-independent. A model built with `visual.fusion="late"` runs its visual stages
without language; `set_image` then also caches the whole language-free backbone pass and `predict`
runs only BERT, the PWAM fusions, the pixel decoder and the decoder.

The same cache is exact for a PWAM model whose residual gates are closed (all zero). The official
gates are zero-initialised and receive exactly zero gradient, so every model trained the official way
(the authors' released weights included, if their gates are zero) is cached this way automatically.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from .flip_tta import merge_flipped, mirror_id_pairs, mirror_token_ids
from .image_io import DEFAULT_MAX_PIXELS, InputError, to_rgb_uint8
from .introspect import DecoderRecorder, Introspection, build_introspection, head_query_counts
from .mask_refine import GuidedRefine, refine_label, resolve_refine
from .postprocess import decide_no_target, nt_probabilities, postprocess
from .tokenizer import TextTokenizer


class FastPathRefused(RuntimeError):
    """`run_model(..., fast_only=True)` could not use the fast path (the caller runs it eagerly instead)."""


@dataclass
class GRESResult:
    """The answer to one expression on the current image."""

    text: str
    mask: np.ndarray  # (H, W) bool at the original size; all False when no_target
    no_target: bool
    nt_prob: float  # probability of "no target" under the chosen rule
    nt_probs: List[float]  # per head (coarse -> final)
    head_masks: List[np.ndarray]  # per supervised head, bool at the head's resolution (coarse -> fine)
    raw_mask: np.ndarray  # (H, W) bool before emptying for no-target (what the official evaluator scores)
    latency_ms: float  # model time of this call (text encoder + fusion + decoders + post-processing)
    tokens: List[str]
    num_tokens: int  # before truncation, including [CLS] and [SEP]
    truncated: bool  # the expression did not fit the model's token budget and was cut
    threshold: float
    nt_rule: str
    image_size: tuple  # (H, W) of the original image
    extras: Dict[str, object] = field(default_factory=dict)
    nt_threshold: float = 0.5  # a head votes "no target" above this NT probability (0.5: argmax)

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass
class VideoFrameResult:
    """The answers on one frame of a clip (`MABPPredictor.predict_video`)."""

    index: int  # the frame's index in the clip (before any stride)
    results: List[GRESResult]  # one per expression, in the order given
    set_image_ms: float  # encoding this frame (decode excluded)
    image: np.ndarray  # the frame as segmented, (H, W, 3) uint8 RGB (for drawing; not a copy)

    @property
    def result(self) -> GRESResult:
        """The first (or only) expression's answer."""
        return self.results[0]


class MABPPredictor:
    def __init__(self, model: torch.nn.Module, device: Optional[str] = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, cache_texts: int = 16, fast_path=None,
                 flip_tta: Optional[bool] = None, refine: Union[None, bool, GuidedRefine] = None):
        """fast_path: an optional `mabp.fast_path.OnnxFastPath` built for `model` (shareable by the
        predictors of one model): it encodes images and answers expressions when it accepts the inputs;
        eager PyTorch does the rest (introspection included: it needs forward hooks).
        flip_tta: also answer on the mirrored image with left/right swapped and average the two
        (mabp/flip_tta.py; two passes per expression and per image); None = the model's `cfg.inference.flip_tta`.
        refine: the mask refinement (mabp/mask_refine.py: the guided filter with the image as guide,
        applied at the image's own size): None = the model's `cfg.inference.refine`, False = none, True =
        the config's radius / eps, or a GuidedRefine.
        Raises ValueError when flip TTA is asked for and the vocabulary lacks "left" / "right", or for
        invalid refinement settings."""
        self.model = model.eval()
        self.fast_path = fast_path
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.cfg = model.cfg
        self.tokenizer = TextTokenizer(self.cfg.text)
        self.flip_tta = bool(self.cfg.inference.flip_tta if flip_tta is None else flip_tta)
        self.refine = resolve_refine(self.cfg.inference, refine)
        self._mirror_pairs = mirror_id_pairs(self.tokenizer.tokenizer.get_vocab()) if self.flip_tta else []
        self.max_pixels = max_pixels
        self._image: Optional[np.ndarray] = None
        self._tensor: Optional[torch.Tensor] = None
        self._visual = None
        self._visual_mirrored = None  # flip TTA: the mirrored image's cached features
        self._outputs: "OrderedDict[str, dict]" = OrderedDict()  # text -> raw model outputs on this image
        self._cache_texts = cache_texts
        # text -> (tokenizer output, text-encoder output). The text encoder never sees the image, so its
        # output is reused across images (a clip's frames encode the expression once).
        self._lang: "OrderedDict[str, tuple]" = OrderedDict()
        self.set_image_ms = 0.0
        # Guards the per-text caches and the (Rust) tokenizer, which refuses concurrent use: two threads
        # may answer expressions on one image at once through the fast path (app/service.py).
        self._cache_lock = threading.RLock()

    # ---------------------------------------------------------------------------------------- image
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def has_image(self) -> bool:
        return self._tensor is not None

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) float in 0..255, squashed to S x S as in the paper."""
        s = self.image_size
        h, w = image.shape[:2]
        # Bilinear as the official mapper; area averaging when shrinking a lot avoids aliasing.
        interp = cv2.INTER_AREA if min(h, w) > 2 * s else cv2.INTER_LINEAR
        resized = cv2.resize(image, (s, s), interpolation=interp)
        return torch.from_numpy(resized).permute(2, 0, 1).float().unsqueeze(0).to(self.device)

    @torch.inference_mode()
    def set_image(self, image) -> None:
        """Validate and cache the image (and, for late-fusion models, its language-free features)."""
        t0 = time.perf_counter()
        rgb = to_rgb_uint8(image, self.max_pixels)
        tensor = self.preprocess(rgb)
        visual = self._encode_visual(tensor)
        visual_m = self._encode_visual(tensor.flip(-1)) if self.flip_tta else None
        with self._cache_lock:
            self._image, self._tensor, self._visual, self._visual_mirrored = rgb, tensor, visual, visual_m
            self._outputs.clear()
        self.set_image_ms = (time.perf_counter() - t0) * 1000

    def _encode_visual(self, tensor: torch.Tensor):
        """The language-free features of (1, 3, S, S) `tensor` when the model allows caching them, else None."""
        if self.fast_path is not None and self.fast_path.accepts_image(tensor):
            return self.fast_path.encode_visual(tensor)  # the fast path exists only for cacheable models
        if self.model.visual_cacheable():
            return self.model.encode_visual(tensor)
        return None

    def reset_image(self) -> None:
        with self._cache_lock:
            self._image = self._tensor = self._visual = self._visual_mirrored = None
            self._outputs.clear()

    def has_outputs(self, text: str) -> bool:
        """Whether the model outputs for `text` (as given) on the current image are cached."""
        with self._cache_lock:
            return text in self._outputs

    def cached_outputs(self) -> List[dict]:
        """A snapshot of the cached per-text entries (for memory accounting; safe while others predict)."""
        with self._cache_lock:
            return list(self._outputs.values())

    # ----------------------------------------------------------------------------------------- text
    EMPTY_TEXT = "The expression is empty: type what to segment, e.g. 'the red circle'."

    @staticmethod
    def check_text(text, tokenizer: Optional[TextTokenizer] = None) -> str:
        """Validate an expression -> its whitespace-normalised form. Raises InputError (one line).

        Text that is whitespace only, or (given the tokenizer) that yields no word pieces at all -- only
        zero-width or control characters, lone accents -- is empty: the model would see [CLS][SEP] only.
        """
        if text is None or not isinstance(text, str):
            raise InputError("No expression was given: type what to segment, e.g. 'the red circle'.")
        text = " ".join(text.split())
        if not text or (tokenizer is not None and not tokenizer.word_pieces(text)):
            raise InputError(MABPPredictor.EMPTY_TEXT)
        return text

    @torch.inference_mode()
    def run_model(self, text: str, record: bool = False, fast_only: bool = False) -> dict:
        """Raw outputs for `text` on the current image (cached per text for threshold changes).

        record=True runs the decoder under forward hooks (DecoderRecorder) and keeps the records; a
        cached entry without records is recomputed once with them. Without it no hook exists.
        fast_only=True (for callers running beside other threads that use the torch model): raise
        FastPathRefused instead of running eager PyTorch when the fast path cannot answer.
        Thread-safe for fast-path answers; eager runs must be serialised by the caller.
        """
        return self._answer(text, record, fast_only)[0]

    @torch.inference_mode()
    def _answer(self, text: str, record: bool, fast_only: bool) -> Tuple[dict, np.ndarray, bool]:
        """(cache entry, the RGB image it was computed on, whether it came from the cache).

        The image, its features and the cache lookup are read in one locked step, so a `set_image` by
        another thread meanwhile cannot pair one image's outputs with another image's size.
        """
        with self._cache_lock:
            if self._tensor is None:
                raise InputError("No image is set: call set_image(image) first.")
            image, visual, tensor, visual_m = self._image, self._visual, self._tensor, self._visual_mirrored
            hit = self._outputs.get(text)
            if hit is not None and (not record or "records" in hit):
                self._outputs.move_to_end(text)
                return hit, image, True
            tok = self.tokenizer([text]) if not record and self.fast_path is not None and visual is not None else None
        t0 = time.perf_counter()
        records = None
        fast = tok is not None and self.fast_path.accepts(visual, tok.input_ids, tok.attention_mask)
        if fast and self.flip_tta:
            fast = visual_m is not None and self.fast_path.accepts(visual_m, tok.input_ids, tok.attention_mask)
        if fast:
            # the whole expression pass in ONNX Runtime, the text encoder included (mabp/fast_path.py:
            # PyTorch work between ORT runs shares the cores with ORT's waiting threads)
            out = self.fast_path(visual, tok.input_ids, tok.attention_mask)
            if self.flip_tta:
                ids_m = mirror_token_ids(tok.input_ids, self._mirror_pairs)
                out = merge_flipped(out, self.fast_path(visual_m, ids_m, tok.attention_mask))
        elif fast_only:
            raise FastPathRefused("the fast path cannot answer this expression (introspection, no fast path, "
                                  "or inputs of another shape)")
        else:
            with self._cache_lock:
                tok, lang, mask = self.encode_text(text)
            feats = self.model.fuse(lang, mask, images=None if visual is not None else tensor, visual=visual)
            if record:
                with DecoderRecorder(self.model) as rec:
                    out = self.model.forward_features(feats, lang, mask)
                records = rec.records
            else:
                out = self.model.forward_features(feats, lang, mask)
            if self.flip_tta:
                # The mirrored pass (no hooks: introspection shows the first pass, its masks averaged).
                ids = tok.input_ids.to(self.device)
                ids_m = mirror_token_ids(ids, self._mirror_pairs)
                lang_m = lang if torch.equal(ids_m, ids) else self.model.encode_text(ids_m, mask)
                feats_m = self.model.fuse(lang_m, mask, images=None if visual_m is not None else tensor.flip(-1),
                                          visual=visual_m)
                out = merge_flipped(out, self.model.forward_features(feats_m, lang_m, mask))
        entry = {"outputs": out, "tok": tok, "model_ms": (time.perf_counter() - t0) * 1000,
                 "path": "onnxruntime" if fast else "pytorch"}
        if records is not None:
            entry["records"] = records
        with self._cache_lock:
            if self._tensor is tensor:  # the image did not change meanwhile
                self._outputs[text] = entry
                while len(self._outputs) > self._cache_texts:
                    self._outputs.popitem(last=False)
        return entry, image, False

    @torch.inference_mode()
    def encode_text(self, text: str) -> tuple:
        """(tokenizer output, text features (1, L, C), attention mask (1, L)) for `text`, cached per text
        (LRU of `cache_texts` entries) independently of the image: the text encoder never sees it."""
        hit = self._lang.get(text)
        if hit is not None:
            self._lang.move_to_end(text)
            return hit
        tok = self.tokenizer([text])
        mask = tok.attention_mask.to(self.device)
        lang = self.model.encode_text(tok.input_ids.to(self.device), mask)
        self._lang[text] = (tok, lang, mask)
        while len(self._lang) > self._cache_texts:
            self._lang.popitem(last=False)
        return tok, lang, mask

    def predict(self, text: str, threshold: Optional[float] = None, nt_rule: Optional[str] = None,
                min_pixels: Optional[int] = None, introspect: bool = False, fast_only: bool = False,
                nt_threshold: Optional[float] = None) -> GRESResult:
        """Segment what `text` refers to in the current image.

        threshold / nt_rule / min_pixels / nt_threshold default to the model config's inference settings
        (nt_threshold: the NT probability above which a head votes "no target"; 0.5 = argmax). Changing
        only these for a text already asked re-uses the cached model outputs (no model time).
        introspect=True also returns `result.extras["introspection"]` (mabp.introspect.Introspection):
        region grids, per-layer cross-attention over image and words, query-generator word weights and
        the final per-region prototypes, collected by forward hooks that are removed after the call.
        fast_only=True raises FastPathRefused where the fast path cannot answer (see `run_model`).
        """
        with self._cache_lock:  # the tokenizer is not safe for concurrent use
            text = self.check_text(text, self.tokenizer)
        inf = self.cfg.inference
        threshold = inf.threshold if threshold is None else float(threshold)
        nt_rule = inf.nt_rule if nt_rule is None else nt_rule
        min_pixels = inf.min_pixels if min_pixels is None else int(min_pixels)
        nt_threshold = inf.nt_threshold if nt_threshold is None else float(nt_threshold)
        if not 0.0 < threshold < 1.0:
            raise InputError(f"The mask threshold must be between 0 and 1, got {threshold}.")
        if not 0.0 < nt_threshold < 1.0:
            raise InputError(f"The no-target threshold must be between 0 and 1, got {nt_threshold}.")
        entry, image, cached = self._answer(text, introspect, fast_only)
        t0 = time.perf_counter()
        out, tok = entry["outputs"], entry["tok"]
        h, w = image.shape[:2]
        guidance = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None] if self.refine else None
        post = postprocess(out["pred_masks"], out["nt_logits"], (h, w), threshold, nt_rule, min_pixels,
                           model_size=(self.image_size, self.image_size), nt_threshold=nt_threshold,
                           refine=self.refine, guidance=guidance)
        has_nt = any(n is not None for n in out["nt_logits"])
        nt_probs = nt_probabilities(out["nt_logits"])[:, 0].tolist() if has_nt else []
        head_masks = [(m[0].float().sigmoid() > threshold).cpu().numpy() for m in out["pred_masks"]]
        extras = {"engine": entry["path"], "flip_tta": self.flip_tta,  # engine: onnxruntime | pytorch
                  "refine": refine_label(self.refine)}
        if introspect:
            extras["introspection"] = build_introspection(
                entry["records"], out, tok.tokens[0], tok.attention_mask[0].tolist(), (h, w),
                head_query_counts(self.cfg), threshold, self.cfg.decoder.layers_per_scale)
        post_ms = (time.perf_counter() - t0) * 1000
        return GRESResult(
            text=text,
            mask=post.masks[0].cpu().numpy(),
            no_target=bool(post.no_target[0]),
            nt_prob=float(post.nt_prob[0]),
            nt_probs=nt_probs,
            head_masks=head_masks,
            raw_mask=post.raw_masks[0].cpu().numpy(),
            latency_ms=(0.0 if cached else entry["model_ms"]) + post_ms,
            tokens=tok.tokens[0],
            num_tokens=tok.num_tokens[0],
            truncated=bool(tok.truncated[0]),
            threshold=threshold,
            nt_rule=nt_rule,
            image_size=(h, w),
            extras=extras,
            nt_threshold=nt_threshold,
        )

    def outputs_for(self, text: str) -> dict:
        """Raw model outputs (lists of tensors) for an expression on the current image."""
        return self.run_model(self.check_text(text, self.tokenizer))["outputs"]

    def predict_video(self, frames: Iterable, text: Union[str, Sequence[str]], threshold: Optional[float] = None,
                      nt_rule: Optional[str] = None, min_pixels: Optional[int] = None,
                      nt_threshold: Optional[float] = None) -> Iterator[VideoFrameResult]:
        """Segment one or several expressions on every frame of a clip, frame by frame (paper §IV-D:
        each frame is an independent image).

        Args:
            frames: an iterable of (H, W, 3) uint8 RGB frames, or of (index, frame) pairs (what
                `mabp.video_io.iter_frames` yields); consumed lazily, one frame at a time.
            text: one expression or a list of them; each is tokenised and run through the text encoder
                once per clip on eager PyTorch (`encode_text` caches it; the ONNX fast path runs the text
                encoder inside its expression graph, every frame); the image is encoded once per frame.
            threshold, nt_rule, min_pixels, nt_threshold: as `predict`.
        Yields: a VideoFrameResult per frame, in order, so memory stays bounded on long clips.
        Raises: InputError for a missing / empty expression (before any frame is read) or a bad frame.
        """
        texts = [text] if isinstance(text, str) or text is None else list(text)
        if not texts:
            raise InputError("No expression was given: type what to segment, e.g. 'the red circle'.")
        texts = [self.check_text(t, self.tokenizer) for t in texts]
        for k, item in enumerate(frames):
            index, frame = item if isinstance(item, tuple) and len(item) == 2 else (k, item)
            self.set_image(frame)
            results = [self.predict(t, threshold=threshold, nt_rule=nt_rule, min_pixels=min_pixels,
                                    nt_threshold=nt_threshold) for t in texts]
            yield VideoFrameResult(index=int(index), results=results, set_image_ms=self.set_image_ms,
                                   image=self._image)
