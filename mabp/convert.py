"""Convert released weights into checkpoints of this project (the logic of `python -m train.convert`).

Two sources are supported:

``official-mabp``
    The authors' released model (``MABP_best.pth``, buptLwz/MABP): a detectron2 checkpoint
    ``{"model": state_dict, ...}`` or a bare state dict (DDP ``module.`` prefixes and the
    ``text_encoder.embeddings.position_ids`` buffer of older transformers are accepted). Every entry is
    mapped onto the ``paper`` preset through `mabp.official`, every shape is checked, the Swin
    ``relative_position_index`` buffers are compared with the recomputed index, and a checkpoint in the
    format of `mabp.registry.save_checkpoint` is written with a ``"converted_from"`` provenance record.
    Missing or mis-shaped entries are errors and nothing is written: a half-loaded model is never produced.

``swin-imagenet``
    Microsoft's Swin release (``swin_base_patch4_window12_384_22k.pth``, weights under ``"model"``). Its
    Swin weights fill the backbone of a ``paper`` model (relative-position bias tables are resized
    bicubically when the window differs); PWAM, residual gates, output norms, pixel decoder and decoder stay
    freshly initialised; BERT is loaded from a local folder (``bert=DIR``) or stays random. The result is
    the starting point of a training run (``model.checkpoint=...``), like the paper's ImageNet init.

Every file is read with ``torch.load(..., weights_only=True)``: weights are data from strangers and are
never allowed to run code. Typical use::

    from mabp.convert import convert_official_mabp
    report = convert_official_mabp("MABP_best.pth", "mabp-paper.pt")
    print(report.format())
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .config import MABPConfig
from .official import ignorable_reason, official_to_ours, strip_wrappers

PathLike = Union[str, Path]
Shapes = Mapping[str, Tuple[int, ...]]

SOURCE_KINDS = ("official-mabp", "swin-imagenet")

# torch.save's zip format; the legacy format starts by pickling a magic number with protocol 2.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"

# Where users get the files (repeated in error messages so that a wrong file names the right one).
SWIN_RELEASE = ("swin_base_patch4_window12_384_22k.pth (https://github.com/SwinTransformer/storage/releases/"
                "download/v1.0.0/swin_base_patch4_window12_384_22k.pth, linked from microsoft/Swin-Transformer)")
MABP_RELEASE = "MABP_best.pth from the links in the buptLwz/MABP README"

# Official names of the residual gates of the PWAM stages (identical in our tree).
_GATE_RE = re.compile(r"^backbone\.layers\.(\d+)\.res_gate\.(\d+)\.weight$")

GATE_EXPLANATION = (
    "the official gates are zero-initialised and tanh(W2 @ relu(W1 @ x)) has exactly zero gradient for both "
    "matrices at W1 = W2 = 0 (dW2 sees relu(0) = 0, dW1 sees W2 = 0), and AdamW leaves a zero weight with a "
    "zero gradient at zero; so a model trained the official way keeps them closed")


class WeightsFileError(ValueError):
    """A weights file that cannot be read safely (missing, empty, corrupted, a plain pickle, code inside)."""


class ConversionError(ValueError):
    """The weights do not fit the target model (missing, mis-shaped or unexpected entries)."""

    def __init__(self, message: str, report: Optional["ConversionReport"] = None):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------------------- reading files
def sha256_file(path: PathLike, progress: bool = True) -> str:
    """Hex sha256 of a file (read in 8 MiB chunks; a tqdm bar for files over 64 MiB)."""
    from tqdm.auto import tqdm

    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
                                     disable=not progress or size < 64 * 2 ** 20, leave=False) as bar:
        for chunk in iter(lambda: f.read(8 * 2 ** 20), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _plain_pickle_message(path: Path) -> str:
    return (f"{path} is a plain Python pickle (like the .pkl files detectron2/ReLA's convert-pretrained-swin "
            "script writes, holding numpy arrays), not a PyTorch checkpoint. Unpickling it could run arbitrary "
            "code and its numpy arrays cannot be read with torch.load(weights_only=True), so it is refused. "
            f"Pass the original .pth instead: {SWIN_RELEASE} for --from swin-imagenet, or {MABP_RELEASE} "
            "for --from official-mabp.")


def load_weights_file(path: PathLike) -> Any:
    """Read a PyTorch checkpoint (zip or legacy format) or a .safetensors file, never running code.

    Returns whatever the file holds (usually a dict). Raises `WeightsFileError` with the cause and what to
    do for: a missing or empty file, a plain pickle (detectron2 .pkl), a pickle that needs Python objects
    beyond tensors and containers, a truncated or corrupted file, an unknown format.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise WeightsFileError(f"{path} is empty (0 bytes): the download did not complete; download it again")
    if len(head) >= 9 and head[8:9] == b"{" and not head.startswith((_ZIP_MAGIC, b"\x80")):
        # safetensors: 8-byte little-endian header length, then a JSON header. Tensors only, by design.
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means a broken file
            raise WeightsFileError(f"{path} looks like a .safetensors file but cannot be read ({exc}); "
                                   "it is probably truncated or corrupted: download it again") from exc
    if not head.startswith((_ZIP_MAGIC, _LEGACY_TORCH_MAGIC)):
        if head[:1] == b"\x80" or path.suffix.lower() in (".pkl", ".pickle"):
            raise WeightsFileError(_plain_pickle_message(path))
        raise WeightsFileError(f"{path} is not a PyTorch checkpoint (unrecognised header {head[:8]!r}); the "
                               "file is corrupted, truncated, or in another format (e.g. an HTML error page "
                               "saved instead of the download). Check its size/sha256 and download it again.")
    try:
        with warnings.catch_warnings():
            # Protocol-4 pickles inside torch zips are common and harmless; the warning would only be noise.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - translated into one clear error below
        msg = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if found:
            raise WeightsFileError(
                f"{path} contains a pickled Python object ({found.group(1)}) besides tensors; loading it would "
                "allow the file to run code, so it is refused (weights_only=True). If this is a full training "
                "checkpoint from a source you trust, extract its weights once on a machine you trust, e.g. "
                f"python -c \"import torch; torch.save(torch.load('{path.name}', weights_only=False)['model'], "
                "'weights.pth')\", and convert weights.pth.") from exc
        if head.startswith(_ZIP_MAGIC) and ("zip archive" in msg or "PytorchStreamReader" in msg
                                            or "central directory" in msg):
            raise WeightsFileError(f"{path} is a truncated or corrupted PyTorch checkpoint ({msg.splitlines()[0]}). "
                                   "Compare its size/sha256 with the published file and download it again.") from exc
        first = next((line.strip() for line in msg.splitlines() if line.strip()), type(exc).__name__)
        raise WeightsFileError(f"could not read {path} safely with torch.load(weights_only=True): {first}. "
                               "The file is corrupted or not a plain weights checkpoint.") from exc


def unwrap_state(obj: Any, path: PathLike = "checkpoint") -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """The state dict inside a loaded checkpoint, plus small metadata (e.g. detectron2's "iteration").

    Accepts {"model": sd, ...}, {"state_dict": sd, ...} or a bare sd; strips DDP "module." prefixes.
    Raises ConversionError for anything that is not a flat mapping of names to tensors.
    """
    meta: Dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in ("iteration", "epoch"):
            if isinstance(obj.get(key), int):
                meta[key] = int(obj[key])
    try:
        state = strip_wrappers(obj)
    except ValueError as exc:
        raise ConversionError(f"{path}: {exc}") from exc
    raw = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else obj
    if isinstance(raw, dict) and len(state) != len(raw):
        # "module.x" and "x" both present: one would silently replace the other.
        names = sorted(k for k in raw if k.startswith("module.") and k[len("module."):] in raw)
        raise ConversionError(f"{path}: entries present both with and without the 'module.' prefix, e.g. "
                              f"{names[:3]}; the checkpoint is ambiguous")
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise ConversionError(f"{path}: {len(bad)} state-dict entries are not tensors, e.g. {bad[:3]}; "
                              "expected a mapping of parameter names to tensors")
    if not state:
        raise ConversionError(f"{path}: the state dict is empty")
    return dict(state), meta


# ----------------------------------------------------------------------------------------- naming helpers
_P = "sem_seg_head.predictor."
# Inverse of mabp.official.KEY_RULES (ours -> official), used only to name entries in messages; the tests
# check that it inverts the official map on all 1,005 manifest entries.
_REVERSE_RULES: List[Tuple[re.Pattern, str]] = [(re.compile(a), b) for a, b in [
    (r"^backbone\.(.*)$", r"backbone.\1"),
    (r"^text_encoder\.bert\.(.*)$", r"text_encoder.\1"),
    (r"^pixel_decoder\.(.*)$", r"sem_seg_head.pixel_decoder.\1"),
    (r"^decoder\.layers\.(\d+)\.self_attn\.(.*)$", _P + r"MMD_self_attention.\1.self_attn.\2"),
    (r"^decoder\.layers\.(\d+)\.self_norm\.(.*)$", _P + r"MMD_self_attention.\1.norm.\2"),
    (r"^decoder\.layers\.(\d+)\.cross_attn\.(.*)$", _P + r"MMD_cross_attention.\1.multihead_attn.\2"),
    (r"^decoder\.layers\.(\d+)\.cross_norm\.(.*)$", _P + r"MMD_cross_attention.\1.norm.\2"),
    (r"^decoder\.layers\.(\d+)\.(linear1|linear2)\.(.*)$", _P + r"transformer_ffn_layers.\1.\2.\3"),
    (r"^decoder\.layers\.(\d+)\.ffn_norm\.(.*)$", _P + r"transformer_ffn_layers.\1.norm.\2"),
    (r"^decoder\.layers\.(\d+)\.token_mix\.(.*)$", _P + r"layer_embed.\1.\2"),
    (r"^decoder\.heads\.(\d+)\.norm\.(.*)$", _P + r"decoder_norm.\1.\2"),
    (r"^decoder\.heads\.(\d+)\.(mask_embed|pooler_src_proj|nt_emb_proj|nt_lang_emb_proj|nt_embed)\.(.*)$",
     _P + r"\2.\1.\3"),
    (r"^decoder\.query_fpn\.(.*)$", _P + r"\1"),
    (r"^decoder\.query_generator\.(.*)$", _P + r"\1"),
    (r"^decoder\.(query_embed|lang_query_embed|level_embed)\.(.*)$", _P + r"\1.\2"),
]]


def ours_to_official(key: str) -> Optional[str]:
    """The official (detectron2) name of one of our `paper` parameter names, or None."""
    for pattern, template in _REVERSE_RULES:
        if pattern.match(key):
            return pattern.sub(template, key)
    return None


def _named(key: str) -> str:
    """'ours (official: theirs)' when the names differ, for messages about the official checkpoint."""
    theirs = ours_to_official(key)
    return key if theirs in (None, key) else f"{key} (official: {theirs})"


def component_of(key: str) -> str:
    """Human-readable part of the model a parameter of ours belongs to (for grouped reports)."""
    if key.startswith("backbone."):
        if ".fusion." in key:
            return "backbone PWAM fusion"
        if ".res_gate." in key:
            return "backbone residual gates"
        if re.match(r"^backbone\.norm\d+\.", key):
            return "backbone output norms (norm0-3)"
        return "backbone Swin"
    if key.startswith("text_encoder."):
        return "text encoder (BERT)"
    if key.startswith("pixel_decoder."):
        return "pixel decoder"
    if key.startswith("decoder."):
        return "decoder (query generator, MMD layers, heads, query FPN)"
    return key.split(".", 1)[0]


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _window_of_table(rows: int) -> Optional[int]:
    """Window size w of a ((2w-1)^2, heads) relative-position bias table, or None if not such a table."""
    side = int(round(math.sqrt(rows)))
    if side * side != rows or side % 2 == 0:
        return None
    return (side + 1) // 2


# ----------------------------------------------------------------------------------------- the report
@dataclass
class ConversionReport:
    """What a conversion did, entry by entry. `format()` renders it; `provenance()` is stored in the output.

    loaded: (source name, our name) pairs copied into the model.
    ignored: (source name, reason) for entries deliberately not used (non-persistent buffers, the
        classifier head, attn_mask buffers, ...).
    missing: our names that the model needs and the source lacks (an error for official-mabp).
    mismatched: human-readable "name: source shape vs model shape" lines (always an error).
    unexpected: source names no rule claims (an error unless allowed).
    fresh: our names deliberately left at their initialisation (swin-imagenet).
    """

    kind: str
    source: str = ""
    source_sha256: str = ""
    source_bytes: int = 0
    source_meta: Dict[str, Any] = field(default_factory=dict)
    preset: str = "paper"
    model_entries: int = 0
    model_parameters: int = 0
    loaded: List[Tuple[str, str]] = field(default_factory=list)
    ignored: List[Tuple[str, str]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    allow_unexpected: bool = False
    fresh: List[str] = field(default_factory=list)
    fresh_parameters: Dict[str, int] = field(default_factory=dict)
    interpolated: List[str] = field(default_factory=list)
    window: Optional[int] = None
    source_window: Optional[int] = None
    index_checked: int = 0
    index_mismatched: List[str] = field(default_factory=list)
    gate_max_abs: Dict[str, float] = field(default_factory=dict)
    text_encoder: str = ""
    notes: List[str] = field(default_factory=list)
    output: str = ""
    output_bytes: int = 0
    half: bool = False
    seconds: float = 0.0

    # ------------------------------------------------------------------ verdicts
    @property
    def gates_all_zero(self) -> Optional[bool]:
        """True if every res_gate matrix is exactly zero; None if the source has no gates."""
        if not self.gate_max_abs:
            return None
        return all(v == 0.0 for v in self.gate_max_abs.values())

    @property
    def gates_closed(self) -> Optional[bool]:
        """True if every stage's gate outputs exactly 0 (W1 = 0 or W2 = 0 suffices), so no language reaches
        the next visual stage and the image pass can be cached. None if the source has no gates."""
        if not self.gate_max_abs:
            return None
        stages: Dict[str, List[float]] = {}
        for key, value in self.gate_max_abs.items():
            stages.setdefault(key.split(".res_gate.")[0], []).append(value)
        return all(min(values) == 0.0 for values in stages.values())

    def problems(self) -> List[str]:
        """Human-readable reasons why the conversion must not be written (empty = fine)."""
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} entr{'y' if len(self.missing) == 1 else 'ies'} missing from the "
                       f"source: " + "; ".join(_named(k) for k in self.missing[:8])
                       + (" ..." if len(self.missing) > 8 else ""))
        if self.mismatched:
            out.append(f"{len(self.mismatched)} shape mismatch(es): " + "; ".join(self.mismatched[:8])
                       + (" ..." if len(self.mismatched) > 8 else ""))
        if self.unexpected and not self.allow_unexpected:
            out.append(f"{len(self.unexpected)} unexpected entr{'y' if len(self.unexpected) == 1 else 'ies'} "
                       f"(no rule maps them onto the {self.preset} model): " + "; ".join(self.unexpected[:8])
                       + (" ..." if len(self.unexpected) > 8 else "")
                       + " (pass --allow-unexpected / allow_unexpected=True to ignore them)")
        if self.index_mismatched:
            out.append(f"{len(self.index_mismatched)} relative_position_index buffer(s) differ from the Swin index "
                       f"recomputed for window {self.window}: " + "; ".join(self.index_mismatched[:4])
                       + " (the source was built with another window size or layout)")
        return out

    def raise_if_invalid(self) -> None:
        problems = self.problems()
        if problems:
            hints = "".join(f"\n  hint: {note}" for note in self.notes)
            raise ConversionError(f"cannot convert {self.source or 'the checkpoint'} ({self.kind}) to the "
                                  f"{self.preset} model; nothing was written:\n  - " + "\n  - ".join(problems)
                                  + hints, report=self)

    # ------------------------------------------------------------------ serialisation
    def counts(self) -> Dict[str, int]:
        return {"loaded": len(self.loaded), "ignored": len(self.ignored), "missing": len(self.missing),
                "mismatched": len(self.mismatched), "unexpected": len(self.unexpected),
                "fresh": len(self.fresh), "interpolated": len(self.interpolated),
                "index_checked": self.index_checked, "model_entries": self.model_entries}

    def provenance(self) -> Dict[str, Any]:
        """The "converted_from" record stored in the written checkpoint (plain types only: weights_only)."""
        rec: Dict[str, Any] = {
            "kind": self.kind, "file": Path(self.source).name, "sha256": self.source_sha256,
            "bytes": int(self.source_bytes), "preset": self.preset, "counts": self.counts(),
            "ignored": [[k, r] for k, r in self.ignored],
            "gates_all_zero": self.gates_all_zero, "gates_closed": self.gates_closed,
            "converter": "mabp.convert", "torch": str(torch.__version__),  # TorchVersion is not weights_only-safe
        }
        if self.source_meta:
            rec["source_meta"] = dict(self.source_meta)
        if self.window is not None:
            rec["window"] = int(self.window)
        if self.source_window is not None:
            rec["source_window"] = int(self.source_window)
        if self.text_encoder:
            rec["text_encoder"] = self.text_encoder
        if self.fresh_parameters:
            rec["fresh_parameters"] = {k: int(v) for k, v in self.fresh_parameters.items()}
        if self.unexpected:
            rec["unexpected_ignored"] = list(self.unexpected)
        return rec

    def format(self, verbose: bool = False) -> str:
        """The printed report. verbose=True lists every entry instead of a few examples per group."""
        lim = None if verbose else 5
        lines = [f"MABP converter: {self.kind} -> {self.preset} model"]
        src = f"  source      {self.source}"
        if self.source_sha256:
            src += f"\n              sha256 {self.source_sha256}, {_fmt_bytes(self.source_bytes)}"
        if self.source_meta:
            src += "  (" + ", ".join(f"{k} {v}" for k, v in self.source_meta.items()) + ")"
        lines.append(src)
        if self.output:
            lines.append(f"  output      {self.output} ({_fmt_bytes(self.output_bytes)}, "
                         f"{'fp16' if self.half else 'fp32'}) in {self.seconds:.1f} s")
        lines.append(f"  mapped      {len(self.loaded)} entries loaded into the {self.preset} model "
                     f"({self.model_entries} entries, {self.model_parameters:,} parameters)")
        if self.interpolated:
            lines.append(f"  resized     {len(self.interpolated)} relative-position bias tables bicubically "
                         f"(window {self.source_window} -> {self.window})")
        lines.append(f"  ignored     {len(self.ignored)}" + (":" if self.ignored else ""))
        by_reason: "OrderedDict[str, List[str]]" = OrderedDict()
        for key, reason in self.ignored:
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            shown = keys if lim is None else keys[:lim]
            more = "" if lim is None or len(keys) <= lim else f" ... (+{len(keys) - lim})"
            lines.append(f"                {len(keys)} x {reason}: {', '.join(shown)}{more}")
        lines.append(f"  missing     {len(self.missing)}" + (": " + ", ".join(
            _named(k) for k in (self.missing if lim is None else self.missing[:lim])) if self.missing else ""))
        if self.mismatched:
            lines.append(f"  mismatched  {len(self.mismatched)}: " + "; ".join(
                self.mismatched if lim is None else self.mismatched[:lim]))
        lines.append(f"  unexpected  {len(self.unexpected)}" + (
            (" (ignored: --allow-unexpected): " if self.allow_unexpected else ": ")
            + ", ".join(self.unexpected if lim is None else self.unexpected[:lim]) if self.unexpected else ""))
        if self.fresh:
            lines.append(f"  fresh       {len(self.fresh)} entries keep their initialisation:")
            groups: "OrderedDict[str, List[str]]" = OrderedDict()
            for key in self.fresh:
                groups.setdefault(component_of(key), []).append(key)
            for name, keys in groups.items():
                lines.append(f"                {name}: {len(keys)} tensors, "
                             f"{self.fresh_parameters.get(name, 0):,} parameters")
        if self.text_encoder:
            lines.append(f"  text        {self.text_encoder}")
        if self.index_checked or self.index_mismatched:
            verdict = ("equal the recomputed Swin index" if not self.index_mismatched
                       else f"{len(self.index_mismatched)} DIFFER from the recomputed Swin index")
            lines.append(f"  rel. index  {self.index_checked} relative_position_index buffers {verdict} "
                         f"(window {self.window})")
        lines.extend(self._gate_lines())
        for note in self.notes:
            lines.append(f"  note        {note}")
        return "\n".join(lines)

    def _gate_lines(self) -> List[str]:
        if self.gates_all_zero is None:
            if self.kind == "swin-imagenet":
                return ["  gates       backbone.layers.{0,1,2}.res_gate: fresh and zero-initialised (closed), as in the",
                        "              official training. Note: with W1 = W2 = 0 both gate matrices receive exactly zero",
                        "              gradient, so training the official way never opens them."]
            return []
        n = len(self.gate_max_abs)
        if self.gates_all_zero:
            return [f"  gates       backbone.layers.{{0,1,2}}.res_gate: all {n} matrices are exactly zero -> closed:",
                    "              no language is fed back into the visual stages (the image pass can be cached;",
                    "              identical to visual.fusion='late'). Expected: " + GATE_EXPLANATION + "."]
        values = ", ".join(f"{k.replace('backbone.layers.', 'L')}: {v:.3g}" for k, v in self.gate_max_abs.items())
        closed = self.gates_closed
        return [f"  gates       backbone.layers.{{0,1,2}}.res_gate: NOT all zero (max |w|: {values})",
                "              -> " + ("every stage still has one zero matrix, so the gates output 0 (closed)"
                                       if closed else "language IS gated back into the visual stages: the image "
                                       "pass cannot be cached and fusion='late' would change the outputs"),
                "              (unexpected for the official training: " + GATE_EXPLANATION + ")"]


# ----------------------------------------------------------------------------------------- mapping (pure)
def map_official_state(state: Mapping[str, Tensor], expected: Shapes, window_size: int = 12,
                       allow_unexpected: bool = False, source: str = "") -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Map an official MABP state dict (already unwrapped) onto our parameter names.

    state: official name -> tensor. expected: our name -> shape (the target model's state dict).
    Returns (our name -> tensor for every loaded entry, report). Never raises for content problems:
    call `report.raise_if_invalid()` (the converters do) so that all problems are listed at once.
    """
    from .modeling.swin import relative_position_index

    report = ConversionReport(kind="official-mabp", source=source, window=window_size,
                              allow_unexpected=allow_unexpected)
    report.model_entries = len(expected)
    mapped: Dict[str, Tensor] = {}
    origin: Dict[str, str] = {}  # our name -> the official entry that provided it
    invalid = set()  # our names whose source entry is present but wrong (reported once, not as missing)
    rpi = relative_position_index(window_size)
    for key, value in state.items():
        ours = official_to_ours(key)
        reason = ignorable_reason(key)
        if ours is None or (reason is not None and ours not in expected):
            if reason is not None:
                report.ignored.append((key, reason))
            else:
                report.unexpected.append(key)
            continue
        if ours not in expected:
            report.unexpected.append(f"{key} (-> {ours}, not in the model)")
            continue
        if ours in origin:
            report.unexpected.append(f"{key} (-> {ours}, already provided by {origin[ours]})")
            continue
        want = tuple(expected[ours])
        if tuple(value.shape) != want:
            report.mismatched.append(f"{_named(ours)}: checkpoint {_fmt_shape(value.shape)} vs model {_fmt_shape(want)}")
            invalid.add(ours)
            continue
        if ours.endswith("relative_position_index"):
            report.index_checked += 1
            if value.dtype.is_floating_point or not torch.equal(value.to(torch.long), rpi):
                report.index_mismatched.append(key)
                invalid.add(ours)
                continue
        gate = _GATE_RE.match(key)
        if gate:
            report.gate_max_abs[key] = float(value.detach().abs().max()) if value.numel() else 0.0
        mapped[ours] = value
        origin[ours] = key
        report.loaded.append((key, ours))
    report.missing = [k for k in expected if k not in mapped and k not in invalid]
    if "patch_embed.proj.weight" in state and report.missing:
        report.notes.append("this looks like an ImageNet Swin checkpoint (un-prefixed patch_embed/layers keys): "
                            "use --from swin-imagenet")
    report.model_parameters = sum(_numel(s) for k, s in expected.items() if not k.endswith("relative_position_index"))
    return mapped, report


_SWIN_SKIP = [
    (re.compile(r"^head\."), "ImageNet classification head (not used by MABP)"),
    (re.compile(r"^norm\.(weight|bias)$"), "final norm of the classifier (MABP has its own norm0-3)"),
    (re.compile(r"(^|\.)attn_mask$"), "shifted-window mask buffer (recomputed per input size)"),
]


def _is_swin_core(key: str) -> bool:
    """Our backbone entries that an ImageNet Swin checkpoint provides (not PWAM/gates/output norms/index)."""
    return (key.startswith("backbone.") and ".fusion." not in key and ".res_gate." not in key
            and not re.match(r"^backbone\.norm\d+\.", key) and not key.endswith("relative_position_index"))


def map_swin_imagenet_state(state: Mapping[str, Tensor], expected: Shapes, window_size: int,
                            allow_unexpected: bool = False, source: str = "") -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Map a Microsoft-layout Swin state dict onto our backbone (`backbone.` + its name).

    Skipped: head.*, the final norm, attn_mask buffers; relative_position_index buffers are checked against
    the recomputed index (same window) or dropped (other window; they are recomputed). Bias tables of
    another window are resized bicubically. Every Swin entry of our backbone must be provided.
    Returns (our name -> tensor, report); call `report.raise_if_invalid()`.
    """
    from .modeling.swin import _resize_bias_table, relative_position_index

    report = ConversionReport(kind="swin-imagenet", source=source, window=window_size,
                              allow_unexpected=allow_unexpected)
    report.model_entries = len(expected)
    report.model_parameters = sum(_numel(s) for k, s in expected.items() if not k.endswith("relative_position_index"))
    multimodal = [k for k in state if k.startswith(("sem_seg_head.", "text_encoder.")) or ".fusion." in k]
    if multimodal:
        report.notes.append("this file holds a multimodal model (e.g. " + multimodal[0] + "), not an ImageNet "
                            "Swin: use --from official-mabp for the authors' MABP checkpoint")
    core = [k for k in expected if _is_swin_core(k)]
    rpi = relative_position_index(window_size)
    tables = [v for k, v in state.items() if k.endswith("relative_position_bias_table") and v.ndim == 2]
    if tables:
        report.source_window = _window_of_table(tables[0].shape[0])
    mapped: Dict[str, Tensor] = {}
    invalid = set()  # our names whose source entry is present but has the wrong shape
    for raw_key, value in state.items():
        key = raw_key[len("backbone."):] if raw_key.startswith("backbone.") else raw_key
        reason = next((r for p, r in _SWIN_SKIP if p.search(key)), None)
        if reason:
            report.ignored.append((raw_key, reason))
            continue
        ours = "backbone." + key
        if key.endswith("relative_position_index"):
            if ours not in expected:
                report.unexpected.append(raw_key)
                continue
            n = value.shape[0] if value.ndim == 2 else -1
            src_w = int(round(math.sqrt(n))) if n > 0 else None
            if src_w != window_size:
                report.ignored.append((raw_key, f"index for window {src_w} (recomputed for window {window_size})"))
                continue
            report.index_checked += 1
            if value.dtype.is_floating_point or not torch.equal(value.to(torch.long), rpi):
                report.index_mismatched.append(raw_key)
            else:
                report.ignored.append((raw_key, "relative_position_index buffer (equal to the recomputed one)"))
            continue
        if ours not in expected or not _is_swin_core(ours):
            report.unexpected.append(raw_key)
            continue
        want = tuple(expected[ours])
        if tuple(value.shape) != want:
            if (key.endswith("relative_position_bias_table") and value.ndim == 2 and value.shape[1] == want[1]
                    and _window_of_table(value.shape[0]) and _window_of_table(want[0])):
                value = _resize_bias_table(value, want[0])
                report.interpolated.append(ours)
            else:
                report.mismatched.append(f"{raw_key}: checkpoint {_fmt_shape(value.shape)} vs model {_fmt_shape(want)}")
                invalid.add(ours)
                continue
        mapped[ours] = value
        report.loaded.append((raw_key, ours))
    report.missing = [k for k in core if k not in mapped and k not in invalid]
    hint = _swin_variant_hint(state, expected)
    if hint and (report.mismatched or report.missing):
        report.notes.append(hint)
    report.fresh = [k for k in expected if k not in mapped and k not in report.missing
                    and k not in invalid and not k.endswith("relative_position_index")]
    return mapped, report


def _swin_variant_hint(state: Mapping[str, Tensor], expected: Shapes) -> Optional[str]:
    """Explain a wrong Swin variant (e.g. Swin-T weights for the Swin-B paper model)."""
    proj = state.get("patch_embed.proj.weight", state.get("backbone.patch_embed.proj.weight"))
    want = expected.get("backbone.patch_embed.proj.weight")
    depths: Dict[int, int] = {}
    for k in state:
        m = re.match(r"^(?:backbone\.)?layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            depths[int(m.group(1))] = max(depths.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    if proj is None or want is None:
        return None
    src = f"embed_dim {proj.shape[0]}, depths {[depths[i] for i in sorted(depths)]}"
    names = {96: "Swin-T/S", 128: "Swin-B", 192: "Swin-L"}
    return (f"the file holds a Swin with {src} ({names.get(int(proj.shape[0]), 'unknown variant')}); the target "
            f"needs embed_dim {want[0]} (the paper preset is Swin-B: {SWIN_RELEASE})")


def _group_parameters(keys: Iterable[str], expected: Shapes) -> Dict[str, int]:
    out: "OrderedDict[str, int]" = OrderedDict()
    for k in keys:
        out[component_of(k)] = out.get(component_of(k), 0) + _numel(expected[k])
    return dict(out)


# ----------------------------------------------------------------------------------------- BERT folders
def check_bert_folder(folder: PathLike, cfg: MABPConfig) -> Tuple[MABPConfig, List[str]]:
    """Validate a local BERT folder (transformers layout) against cfg.text and return cfg with text.path set.

    Also points text.vocab at the folder when its vocab.txt differs from the configured vocabulary (the
    paper preset's default is bert-base-uncased's WordPiece vocab). Returns (config, notes).
    """
    from .modeling.text_encoder import WEIGHT_FILES
    from .tokenizer import resolve_vocab_file

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConversionError(f"--bert {folder}: not a folder. Pass a BERT-base-uncased folder in the transformers "
                              "layout (config.json, model.safetensors or pytorch_model.bin, vocab.txt), e.g. from "
                              "`huggingface-cli download bert-base-uncased --local-dir DIR` on a machine online")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ConversionError(f"--bert {folder}: no config.json (expected the transformers layout)")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConversionError(f"--bert {folder}: no weights file (looked for {', '.join(WEIGHT_FILES)})")
    try:
        bert_cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"--bert {folder}: config.json is not readable JSON ({exc})") from exc
    want = {"hidden_size": cfg.text.hidden_size, "num_hidden_layers": cfg.text.num_layers,
            "num_attention_heads": cfg.text.num_heads, "intermediate_size": cfg.text.intermediate_size,
            "vocab_size": cfg.text.vocab_size}
    wrong = {k: (bert_cfg.get(k), v) for k, v in want.items() if bert_cfg.get(k) != v}
    if wrong or bert_cfg.get("model_type", "bert") != "bert":
        details = ", ".join(f"{k} {got} (needs {need})" for k, (got, need) in wrong.items())
        raise ConversionError(f"--bert {folder}: not a BERT-base model for the {cfg.preset} preset: "
                              f"model_type {bert_cfg.get('model_type')!r}{', ' if details else ''}{details}. "
                              "Use bert-base-uncased (what MABP was trained with)")
    notes = []
    overrides: Dict[str, Any] = {"text.path": str(folder)}
    vocab = folder / "vocab.txt"
    if vocab.is_file():
        try:
            default = resolve_vocab_file(cfg.text.vocab)
            same = default.read_bytes() == vocab.read_bytes()
        except (FileNotFoundError, ImportError):
            same = False
        if not same:
            overrides["text.vocab"] = str(folder)
            notes.append(f"{vocab} differs from the {cfg.text.vocab!r} vocabulary: text.vocab now points at the folder")
    else:
        notes.append(f"{folder} has no vocab.txt: the tokenizer keeps text.vocab={cfg.text.vocab!r}")
    return cfg.override(**overrides), notes


# ----------------------------------------------------------------------------------------- model layout
@contextmanager
def parameters_on_meta():
    """Create every nn.Parameter on the meta device (buffers and plain tensors stay on the CPU).

    The official conversion only needs the target's names, shapes and dtypes: materialising and randomly
    initialising 229 M parameters costs 6-20 s and ~1 GB for nothing. Buffers stay real, so code that computes
    with tensors at construction time (e.g. the Swin drop-path schedule) still works.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def model_layout(cfg: MABPConfig) -> "OrderedDict[str, Tuple[Tuple[int, ...], torch.dtype]]":
    """Our state-dict names in model order -> (shape, dtype), without materialising the parameters."""
    from .modeling.mabp import MABP
    from .registry import resolve_config

    with parameters_on_meta():
        model = MABP(resolve_config(cfg))
    return OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in model.state_dict().items())


class _ConvertedState:
    """Stands in for a model in `save_checkpoint` (which only calls `.state_dict()` and reads `.cfg`), so the
    converted tensors are written in exactly its format without building a randomly initialised model."""

    def __init__(self, cfg: MABPConfig, state: Dict[str, Tensor]):
        self.cfg = cfg
        self._state = state

    def state_dict(self) -> Dict[str, Tensor]:
        return self._state


# ----------------------------------------------------------------------------------------- conversions
def _prepare_paths(src: PathLike, dst: PathLike) -> Tuple[Path, Path]:
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise WeightsFileError(f"source file not found: {src}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ConversionError(f"--to {dst} is the source file itself; choose another output path")
    if dst.exists() and dst.is_dir():
        raise ConversionError(f"--to {dst} is a folder; give a file name such as {dst / 'mabp-paper.pt'}")
    return src, dst


def _read_source(src: Path, report_kwargs: Dict[str, Any], progress: bool,
                 log: Callable[[str], None]) -> Dict[str, Tensor]:
    """Hash and safely load the source; fills report_kwargs with its provenance (path, size, sha256, meta)."""
    size = src.stat().st_size
    report_kwargs.update(source=str(src), source_bytes=size,
                         source_sha256=sha256_file(src, progress=progress))
    log(f"reading {src.name} ({_fmt_bytes(size)}) with weights_only=True ...")
    obj = load_weights_file(src)
    state, meta = unwrap_state(obj, src.name)
    report_kwargs["source_meta"] = meta
    return state


def convert_official_mabp(src: PathLike, dst: PathLike, *, bert: Optional[PathLike] = None, half: bool = False,
                          allow_unexpected: bool = False, progress: bool = True, preset: str = "paper",
                          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> ConversionReport:
    """Convert the authors' MABP checkpoint into a `paper` checkpoint at dst (see the module docstring).

    bert: optional BERT-base folder recorded as text.path in the stored config (the weights come from the
    checkpoint either way; building from the result then needs that folder). half: store fp16 tensors.
    preset: the target architecture; "paper" is the released model. Other Swin presets only fit checkpoints
    of the official code trained with that architecture (the tests use "tiny").
    Raises WeightsFileError / ConversionError with the cause; nothing is written on error.
    """
    from .registry import get_config

    t0 = time.perf_counter()
    src, dst = _prepare_paths(src, dst)
    info: Dict[str, Any] = {}
    state = _read_source(src, info, progress, log)
    cfg = get_config(preset)
    if cfg.visual.kind != "swin" or cfg.visual.fusion != "pwam" or getattr(cfg, "arch", "mabp") != "mabp":
        raise ConversionError(f"preset {preset!r} is not laid out like the official model (MABP decoder, "
                              "Swin + PWAM gates)")
    stored_cfg, notes = (check_bert_folder(bert, cfg) if bert else (cfg, []))
    layout = model_layout(cfg)
    expected = {k: shape for k, (shape, _) in layout.items()}
    mapped, report = map_official_state(state, expected, window_size=cfg.visual.window_size,
                                        allow_unexpected=allow_unexpected, source=str(src))
    for key, value in info.items():
        setattr(report, key, value)
    report.preset = preset
    report.notes.extend(notes)
    if bert:
        report.notes.append(f"stored config has text.path={stored_cfg.text.path}: building from this checkpoint "
                            "needs that folder (its weights are then replaced by the checkpoint's)")
    report.raise_if_invalid()
    # Model order, model dtype (a fp16/bf16 export is widened to fp32 here; --half narrows it on write).
    out = OrderedDict()
    for key, (_, dtype) in layout.items():
        value = mapped[key]
        out[key] = value.to(dtype) if value.dtype != dtype else value
    del state, mapped
    report.text_encoder = "BERT-base weights from the checkpoint"
    return _write(_ConvertedState(stored_cfg, out), dst, report, half, t0, log)


def convert_swin_imagenet(src: PathLike, dst: PathLike, *, preset: str = "paper", window: Optional[int] = None,
                          bert: Optional[PathLike] = None, half: bool = False, allow_unexpected: bool = False,
                          progress: bool = True, overrides: Optional[Dict[str, Any]] = None,
                          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> ConversionReport:
    """Build a `preset` model whose backbone Swin comes from an ImageNet Swin release and write it to dst.

    window: build a variant with another Swin window (bias tables are resized). bert: load BERT-base from a
    local folder into the text encoder (strict: every embedding/encoder weight must load; the pooler is
    ignored) and record it as text.path; without it BERT stays random (a warning note says so).
    overrides: extra {"section.key": value} config overrides. Nothing is written on error.
    """
    from .registry import build_mabp, get_config

    t0 = time.perf_counter()
    src, dst = _prepare_paths(src, dst)
    info: Dict[str, Any] = {}
    state = _read_source(src, info, progress, log)
    dotted = dict(overrides or {})
    if window is not None:
        if int(window) < 2:
            raise ConversionError(f"--window must be at least 2, got {window}")
        dotted["visual.window_size"] = int(window)
    cfg = get_config(preset).override(**dotted) if dotted else get_config(preset)
    if cfg.visual.kind != "swin":
        raise ConversionError(f"preset {preset!r} has a {cfg.visual.kind} visual encoder; Swin weights need a "
                              "Swin preset (paper)")
    notes: List[str] = []
    if bert:
        cfg, notes = check_bert_folder(bert, cfg)
    log(f"building the {preset} model{' and loading BERT from ' + str(cfg.text.path) if bert else ''} ...")
    model = build_mabp(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped, report = map_swin_imagenet_state(state, expected, window_size=cfg.visual.window_size,
                                             allow_unexpected=allow_unexpected, source=str(src))
    for key, value in info.items():
        setattr(report, key, value)
    report.preset = preset
    report.notes.extend(notes)
    report.raise_if_invalid()
    result = model.load_state_dict(mapped, strict=False)
    left = set(result.missing_keys) - set(report.fresh) - {k for k in expected if k.endswith("relative_position_index")}
    if left or result.unexpected_keys:  # pragma: no cover - guarded by the mapping above
        raise ConversionError(f"internal: load left {sorted(left)[:3]} missing, "
                              f"{result.unexpected_keys[:3]} unexpected", report)
    if bert:
        text_keys = [k for k in expected if k.startswith("text_encoder.")]
        report.fresh = [k for k in report.fresh if not k.startswith("text_encoder.")]
        report.text_encoder = f"BERT loaded from {cfg.text.path} ({len(text_keys)} tensors; pooler ignored)"
    else:
        report.text_encoder = "RANDOM BERT (no --bert DIR given): train only after loading BERT-base weights"
        report.notes.append("without --bert the text encoder is random; the paper starts from bert-base-uncased")
    report.fresh_parameters = _group_parameters(report.fresh, expected)
    del state, mapped
    return _write(model, dst, report, half, t0, log)


def _write(model, dst: Path, report: ConversionReport, half: bool, t0: float,
           log: Callable[[str], None]) -> ConversionReport:
    """save_checkpoint(model) + the provenance record; fills the output fields of the report."""
    from .registry import save_checkpoint

    report.half = bool(half)
    log(f"writing {dst} ({'fp16' if half else 'fp32'}) ...")
    save_checkpoint(model, dst, extra={"converted_from": report.provenance()}, half=half)
    report.output = str(dst)
    report.output_bytes = dst.stat().st_size
    report.seconds = time.perf_counter() - t0
    return report


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.convert",
        description="Convert released weights into an MABP checkpoint of this project (read with "
                    "weights_only=True). See docs/convert.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m train.convert --from official-mabp MABP_best.pth --to mabp-paper.pt\n"
               "  python -m train.convert --from swin-imagenet swin_base_patch4_window12_384_22k.pth \\\n"
               "      --bert weights/bert-base-uncased --to paper-init.pt")
    p.add_argument("--from", dest="source", nargs=2, metavar=("KIND", "SRC"), required=True,
                   help=f"source kind ({' | '.join(SOURCE_KINDS)}) and file")
    p.add_argument("--to", dest="dst", required=True, metavar="DST", help="output checkpoint (.pt)")
    p.add_argument("--half", action="store_true", help="store fp16 tensors (half the size; restored to fp32 on load)")
    p.add_argument("--bert", metavar="DIR", help="BERT-base-uncased folder (transformers layout): recorded as "
                   "text.path; for swin-imagenet its weights are loaded into the text encoder")
    p.add_argument("--allow-unexpected", action="store_true",
                   help="ignore source entries that map to nothing (listed in the report) instead of failing")
    p.add_argument("--window", type=int, help="swin-imagenet only: build the model with this Swin window "
                   "(bias tables are resized bicubically), e.g. 7 for a window-7 release")
    p.add_argument("--preset", default="paper", help="target preset (default paper, the released model; other "
                   "Swin presets only fit checkpoints trained with that architecture)")
    p.add_argument("--verbose", action="store_true", help="list every entry in the report")
    p.add_argument("--quiet", action="store_true", help="no progress messages (the report is still printed)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input or weights that do not fit)."""
    args = build_parser().parse_args(argv)
    kind, src = args.source
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        if kind == "official-mabp":
            if args.window is not None:
                raise ConversionError("--window applies to --from swin-imagenet only: the official checkpoint "
                                      "is the paper model (window 12) and converts 1:1")
            report = convert_official_mabp(src, args.dst, bert=args.bert, half=args.half, preset=args.preset,
                                           allow_unexpected=args.allow_unexpected, progress=not args.quiet, log=log)
        elif kind == "swin-imagenet":
            report = convert_swin_imagenet(src, args.dst, preset=args.preset, window=args.window, bert=args.bert,
                                           half=args.half, allow_unexpected=args.allow_unexpected,
                                           progress=not args.quiet, log=log)
        else:
            raise ConversionError(f"unknown source kind {kind!r}; expected one of: {', '.join(SOURCE_KINDS)}")
    except ConversionError as exc:
        if exc.report is not None:
            print(exc.report.format(verbose=args.verbose))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (WeightsFileError, KeyError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format(verbose=args.verbose))
    print(f"done: build it with build_mabp(checkpoint={str(report.output)!r}) or pass --checkpoint "
          f"{report.output} to the apps/CLIs")
    return 0
