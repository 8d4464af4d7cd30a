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
import json
import re
import sys
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .config import MABPConfig
from .weights import (  # noqa: F401 - re-exported: file reading and the key maps lived here
    _fmt_bytes, _group_parameters, component_of, ConversionError, ConversionReport,
    GATE_EXPLANATION, load_weights_file, MABP_RELEASE, map_official_state, map_swin_imagenet_state,
    ours_to_official, PathLike, sha256_file, Shapes, SOURCE_KINDS,
    SWIN_RELEASE, unwrap_state, WeightsFileError)


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
