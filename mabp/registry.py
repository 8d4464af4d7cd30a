"""Preset registry, the one builder, and checkpoint I/O.

    model = build_mabp("lite")                         # a preset
    model = build_mabp("paper", text__path="/bert")    # a preset with overrides (section__key)
    model = build_mabp(checkpoint="run/best.pt")       # the config stored in the checkpoint rebuilds it

Checkpoints are plain dicts {"format": "mabp", "config": {...}, "model": state_dict, ...} loaded with
`torch.load(..., weights_only=True)`: a checkpoint is data from strangers.

Integrity: `torch.load` does not check the zip CRCs, so one flipped byte in a tensor loads silently.
`save_checkpoint` stores a sha256 of the whole content (every tensor's bytes, dtype and shape, every
other value) under "checksum" and `load_checkpoint` verifies it. Writes go to `<name>.tmp`, are fsynced,
then renamed over the old file (and the folder fsynced): a crash or a full disk never leaves a half
file under the real name, and a failed write removes its partial tmp file. Every problem with a
checkpoint file is a `CheckpointError` (load) or `CheckpointWriteError` (save) with a one-line message
that names the file: the CLIs print it and exit 2 instead of a traceback.
"""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch

from .config import (DecoderConfig, MABPConfig, PixelDecoderConfig, TextConfig, VisualConfig)

PRESETS: Dict[str, Callable[[], MABPConfig]] = {}
CHECKPOINT_FORMAT = "mabp"
TINY_VOCAB = Path(__file__).resolve().parent / "assets" / "tiny_vocab.txt"
# The checkpoint the app and the CLIs use by default (the lite preset trained on SynthGRES).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "mabp-lite-synthgres.pt"


def register_preset(name: str):
    def wrap(fn: Callable[[], MABPConfig]):
        PRESETS[name] = fn
        return fn
    return wrap


@register_preset("paper")
def paper_config() -> MABPConfig:
    """Swin-B (window 12) + BERT-base, 480x480, 20 tokens: the official model, weight for weight.

    BERT-base weights come from a local folder (text.path) or from a converted official checkpoint; the
    tokenizer is bert-base-uncased's WordPiece vocabulary (the same file MiniLM ships).
    """
    return MABPConfig(preset="paper")


@register_preset("lite")
def lite_config() -> MABPConfig:
    """EfficientNet-Lite0 (ImageNet weights) + MiniLM-L6 (sentence-transformers weights), 256x256.

    The CPU default, sized by the training-step profile (docs/performance.md): decoder and
    pixel-decoder width 128 (the paper's 256 cost ~340 ms per expression on 2 CPU cores), decoder FFN
    1024, and a lean deformable encoder of 2 layers x 2 sampling points (it was 4 x 4 at 320x320 up to
    the first shipped checkpoint, whose config keeps that: the encoder was ~58 % of a training step).
    Late fusion: the official zero-initialised PWAM gates receive exactly zero gradient and never
    open, so the official model's visual stages are language-free in practice; "late" makes that
    explicit, drops the dead gate weights, and lets the predictor cache the image pass.
    """
    return MABPConfig(
        preset="lite",
        image_size=256,
        pixel_mean=(127.0, 127.0, 127.0),
        pixel_std=(128.0, 128.0, 128.0),
        visual=VisualConfig(kind="efficientnet_lite0", pretrained=True, fusion="late"),
        text=TextConfig(path="minilm", vocab="minilm", hidden_size=384, num_layers=6, num_heads=12,
                        intermediate_size=1536),
        pixel_decoder=PixelDecoderConfig(conv_dim=128, mask_dim=128, num_layers=2, num_points=2, ffn_dim=512),
        decoder=DecoderConfig(hidden_dim=128, num_heads=8, ffn_dim=1024),
    )


@register_preset("tiny")
def tiny_config() -> MABPConfig:
    """A tiny random model for tests: 96x96 (= 480 / 5, so every window rule mirrors 480)."""
    return MABPConfig(
        preset="tiny",
        image_size=96,
        visual=VisualConfig(kind="swin", embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                            window_size=3, drop_path_rate=0.0),
        text=TextConfig(path=None, vocab="tiny", hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_position_embeddings=64),
        pixel_decoder=PixelDecoderConfig(conv_dim=32, mask_dim=32, num_layers=1, num_heads=4, num_points=2,
                                         ffn_dim=64, num_groups=8),
        decoder=DecoderConfig(hidden_dim=32, num_heads=4, ffn_dim=64),
    )


def get_config(preset: str, **overrides: Any) -> MABPConfig:
    """A preset's config with `section__key=value` (or {"section.key": value}) overrides applied."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
    cfg = PRESETS[preset]()
    if overrides:
        cfg = cfg.override(**{k.replace("__", "."): v for k, v in overrides.items()})
    return cfg


def resolve_config(cfg: MABPConfig) -> MABPConfig:
    """Fill values that depend on files: a random text encoder's vocabulary size follows its vocab."""
    if cfg.text.path is None:
        from .tokenizer import TextTokenizer

        vocab_size = TextTokenizer(cfg.text).vocab_size
        if vocab_size != cfg.text.vocab_size:
            cfg = cfg.override(**{"text.vocab_size": vocab_size})
    if cfg.image_size % 32:
        raise ValueError(f"image_size must be divisible by 32, got {cfg.image_size}")
    return cfg


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable (truncated, corrupted, code inside), failing its
    checksum, or not one of ours. The message is one line and names the file."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only folder...). The partial file was removed and
    the previous checkpoint under the same name is untouched. One-line message naming the file."""


def one_line(text: Any, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters (torch.load's errors span many lines)."""
    msg = " ".join(str(text).split())
    return msg if len(msg) <= limit else msg[:limit] + " ..."


def _digest_into(h: "hashlib._Hash", obj: Any) -> None:
    """Feed a canonical encoding of `obj` (what weights_only checkpoints hold) into `h`."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _digest_into(h, k)
            _digest_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):  # weights_only may give back a tuple as either
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _digest_into(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(ckpt: dict) -> str:
    """sha256 over every entry of a checkpoint dict except "checksum" (tensor bytes included)."""
    h = hashlib.sha256()
    _digest_into(h, {k: v for k, v in ckpt.items() if k != "checksum"})
    return h.hexdigest()


def load_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """Read one of our checkpoints safely (weights_only), verify its checksum and format.

    Raises FileNotFoundError (no such file) or CheckpointError (one line naming the file) for a
    truncated or corrupted file, a checksum mismatch, or a file that is not an MABP checkpoint.
    Checkpoints written before checksums existed (no "checksum" entry) are read without the check.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupted zip, pickle with code, ...
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupted?): "
                              f"{one_line(exc, 200)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "config" not in ckpt:
        raise CheckpointError(f"{path} is not an MABP checkpoint of this project (no 'format': 'mabp' and "
                              "'config'); convert the authors' release with `python -m train.convert --from "
                              "official-mabp`")
    stored = ckpt.get("checksum")
    if stored is not None:
        digest = stored.get("sha256") if isinstance(stored, dict) else None
        if not isinstance(digest, str) or content_digest(ckpt) != digest:
            raise CheckpointError(f"checkpoint {path} is corrupted: its content does not match the checksum "
                                  "stored when it was written (a damaged disk or copy); use another copy")
    return ckpt


class _RecordingFile:
    """A binary file for torch.save that remembers the OSError of a failed write (torch.save reports only
    "unexpected pos ..." from its zip writer; the cause -- e.g. ENOSPC -- is what the user needs)."""

    def __init__(self, f) -> None:
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def write_checkpoint_file(obj: dict, path: Union[str, os.PathLike]) -> Path:
    """torch.save `obj` to `path` atomically and durably: `<path>.tmp`, flush + fsync, rename, fsync the
    folder. On any failure the tmp file is removed, `path` keeps its previous content, and
    CheckpointWriteError says what happened in one line ("no space left on device" for ENOSPC)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    rec: Optional[_RecordingFile] = None
    try:
        with open(tmp, "wb") as raw:
            rec = _RecordingFile(raw)
            torch.save(obj, rec)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        cause = (rec.error if rec is not None and rec.error is not None else
                 exc if isinstance(exc, OSError) else exc.__context__ if isinstance(exc.__context__, OSError) else None)
        if cause is not None and cause.errno == errno.ENOSPC:
            reason = "no space left on device"
        elif cause is not None:
            reason = one_line(cause.strerror or cause, 200)
        else:
            reason = one_line(exc, 200)
        prev = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        err = CheckpointWriteError(f"could not write checkpoint {path}: {reason}; {prev} and the partial "
                                   f"{tmp.name} was removed")
        err.errno = cause.errno if cause is not None else None
        raise err from None
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems / platforms cannot fsync a directory
        pass
    return path


def build_mabp(preset_or_config: Union[str, MABPConfig, dict, None] = None,
               checkpoint: Union[str, os.PathLike, dict, None] = None, strict: bool = True,
               **overrides: Any):
    """Build an MABP model from a preset name, a config (dataclass or dict) or a checkpoint alone.

    With a checkpoint and no preset/config, the checkpoint's stored config is used. Weights missing
    from the checkpoint are allowed only if the checkpoint lists them under "external" (weights that
    come from an installed package, e.g. frozen MiniLM embeddings, and were not duplicated).
    A checkpoint file that cannot be read or does not make a model raises CheckpointError (one line
    naming the file).
    """
    ckpt = None
    if checkpoint is not None:
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    try:
        return _build(preset_or_config, ckpt, strict, overrides)
    except (ValueError, KeyError, TypeError) as exc:
        if ckpt is None or isinstance(checkpoint, dict) or isinstance(exc, CheckpointError):
            raise
        # A readable file whose config or weights do not make a model: still the file's fault, one line.
        raise CheckpointError(f"checkpoint {checkpoint} cannot be used: {one_line(exc, 300)}") from None


def _build(preset_or_config, ckpt: Optional[dict], strict: bool, overrides: Dict[str, Any]):
    from .modeling.mabp import MABP

    if preset_or_config is None:
        if ckpt is None:
            raise ValueError("build_mabp needs a preset name, a config or a checkpoint")
        cfg = MABPConfig.from_dict(ckpt["config"])
        if overrides:
            cfg = cfg.override(**{k.replace("__", "."): v for k, v in overrides.items()})
    elif isinstance(preset_or_config, str):
        cfg = get_config(preset_or_config, **overrides)
    elif isinstance(preset_or_config, dict):
        cfg = MABPConfig.from_dict(preset_or_config)
    else:
        cfg = preset_or_config
    cfg = resolve_config(cfg)
    model = MABP(cfg)
    if ckpt is not None:
        load_state(model, ckpt, strict=strict)
    return model


def load_state(model, ckpt: dict, strict: bool = True) -> None:
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in ckpt["model"].items()}
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(f"checkpoint does not fit the model: {len(mismatched)} shape mismatch(es), e.g. "
                         + "; ".join(mismatched[:3]) + ". Build it from its own config: build_mabp(checkpoint=...)")
    external = list(ckpt.get("external", []))
    if external:
        # Weights left out because they equal an installed package's pretrained ones: the model was just
        # built from those packages; make sure they are still the very same tensors.
        missing_ext = [k for k in external if k not in own]
        if missing_ext:
            raise ValueError(f"checkpoint refers to package weights the model lacks, e.g. {missing_ext[:3]}")
        digest = tensors_digest({k: own[k] for k in external})
        if ckpt.get("external_sha256") and digest != ckpt["external_sha256"]:
            raise ValueError("the pretrained weights installed now differ from the ones this checkpoint was "
                             "trained with (MiniLM / EfficientNet package versions?): reinstall the versions in "
                             "requirements.txt, or use a checkpoint saved without skip_external")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in set(external)]
    if strict and (missing or result.unexpected_keys):
        raise ValueError(f"checkpoint does not fit the model: {len(missing)} missing (e.g. {missing[:5]}), "
                         f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:5]})")


def tensors_digest(tensors: Dict[str, torch.Tensor]) -> str:
    """sha256 over names and fp32 bytes, in name order (device- and storage-independent)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def external_weight_names(model) -> list:
    """Names of the state entries that are bit-identical to the pretrained weights the model's own config
    loads from installed packages (MiniLM via text.path, EfficientNet-Lite0 via visual.pretrained).

    Found by building a fresh model from the same config (which loads the packages) and comparing; only
    the text encoder and the visual stages are candidates. Trained (changed) weights are never listed.
    """
    from .modeling.mabp import MABP

    cfg = model.cfg
    prefixes = []
    if cfg.text.path:
        prefixes.append("text_encoder.")
    if cfg.visual.kind == "efficientnet_lite0" and cfg.visual.pretrained:
        prefixes.append("backbone.backbone.")
    if not prefixes:
        return []
    fresh = MABP(cfg).state_dict()
    own = model.state_dict()
    return [k for k, v in own.items() if k.startswith(tuple(prefixes)) and k in fresh
            and fresh[k].shape == v.shape and torch.equal(fresh[k].to(v.device, v.dtype), v)]


def save_checkpoint(model, path: Union[str, os.PathLike], extra: Optional[dict] = None,
                    half: bool = False, skip_external: bool = False) -> Path:
    """Write {"format", "config", "model", **extra, "checksum"} atomically (see write_checkpoint_file).

    half=True stores floating tensors as fp16 (for the shipped checkpoint's size limit; they are
    restored to fp32 on load). skip_external=True leaves out weights that are bit-identical to the
    installed packages' pretrained ones (frozen MiniLM embeddings/layers, frozen EfficientNet stages);
    they are re-read from the packages at build time and checked against a stored sha256.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    external: list = []
    ckpt: dict = {"format": CHECKPOINT_FORMAT, "config": model.cfg.to_dict()}
    if skip_external:
        external = external_weight_names(model)
        ckpt["external_sha256"] = tensors_digest({k: state[k] for k in external})
        state = {k: v for k, v in state.items() if k not in set(external)}
    if half:
        state = {k: v.half() if torch.is_floating_point(v) else v for k, v in state.items()}
    ckpt.update(model=state, external=external)
    if extra:
        ckpt.update(extra)
    ckpt["checksum"] = {"sha256": content_digest(ckpt)}
    return write_checkpoint_file(ckpt, path)
