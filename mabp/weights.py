"""Weight files and key maps: reading released weights safely and mapping their entries onto ours.

One module for everything that touches a foreign weight file -- `load_weights_file` (torch zip /
legacy / safetensors, always `weights_only`), `unwrap_state` (detectron2 / DDP wrappers), the official
MABP and ImageNet-Swin key maps with their shape checks (`map_official_state`, `map_swin_imagenet_state`)
and the `ConversionReport` they fill. It imports no model code (only `mabp.config` and the pure
name maps of `mabp.official`), so the model may use it -- `SwinBackbone.load_swin_weights` does --
without an import circle; `mabp.convert` (the conversion CLI's logic) builds on it.
Sources: buptLwz/MABP (configs/gres-MABP.yaml, the released MABP_best.pth layout), microsoft/Swin-Transformer.
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

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


# ----------------------------------------------------------------------------------------- Swin geometry
def relative_position_index(window_size: int) -> Tensor:
    """Index into the relative-position bias table for every (query, key) pair of a window.

    Returns a long tensor (ws*ws, ws*ws); entry [i, j] = (dh + ws - 1) * (2ws - 1) + (dw + ws - 1) with
    (dh, dw) = coords(i) - coords(j), i.e. the standard Swin indexing.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    flat = coords.flatten(1)  # (2, N)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    rel = rel + (window_size - 1)  # shift both offsets to start at 0
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def _resize_bias_table(table: Tensor, target_len: int) -> Tensor:
    """Bicubically resize a ((2w-1)^2, heads) relative position bias table to (target_len, heads)."""
    src = int(round(math.sqrt(table.shape[0])))
    dst = int(round(math.sqrt(target_len)))
    grid = table.T.reshape(1, table.shape[1], src, src).float()
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], dst * dst).T.contiguous().to(table.dtype)


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
