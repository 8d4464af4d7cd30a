"""The MABP meta-architecture: text encoder -> language-fused visual encoder -> pixel decoder -> MABP
decoder with deep supervision. `cfg.arch = "rela"` swaps in the ReLA baseline decoder on the same
encoders and pixel decoder."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..config import MABPConfig
from ..variants import resolve_variant
from .mabp_decoder import MABPDecoder
from .pixel_decoder import MSDeformAttnPixelDecoder
from .text_encoder import TextEncoder


def build_visual_encoder(cfg: MABPConfig, text_dim: int) -> nn.Module:
    kind = cfg.visual.kind
    if kind == "swin":
        from .swin import SwinPWAMEncoder

        return SwinPWAMEncoder(cfg.visual, text_dim)
    if kind == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLitePWAMEncoder

        return EfficientNetLitePWAMEncoder(cfg.visual, text_dim)
    raise ValueError(f"unknown visual encoder kind {kind!r}; expected 'swin' or 'efficientnet_lite0'")


def build_decoder(cfg: MABPConfig, text_dim: int) -> nn.Module:
    """The decoder of `cfg.arch`: MABPDecoder (with its ablation switches) or ReLADecoder."""
    if cfg.arch == "rela":
        from .rela_decoder import ReLADecoder

        return ReLADecoder(cfg.decoder, text_dim, cfg.text.max_tokens)
    return MABPDecoder(cfg.decoder, text_dim, cfg.text.max_tokens)


class MABP(nn.Module):
    """Generalised referring segmentation with adaptive binding prototypes.

    forward(images (B, 3, S, S) float RGB in 0..255, input_ids (B, L), attention_mask (B, L)) ->
      {"pred_masks": [(B, S/32, S/32), (B, S/16, S/16), (B, S/8, S/8), (B, S/4, S/4)] logits,
       "nt_logits": [4 x (B, 2)]} (class 1 = no target; an entry is None for a head without an NT
      branch). Normalisation happens inside.
    With cfg.arch == "rela": {"pred_masks": [(B, S/4, S/4)], "nt_logits": [(B, 2)]} plus ReLA's own
      "target_masks" (B, 2, S/4, S/4), "minimap" (B, Q, 2) and "all_masks" (B, Q, S/4, S/4).
    The config is validated and completed first (mabp.variants.resolve_variant: e.g. removing the NT
    branch sets inference.min_pixels = 50); `self.cfg` is the completed one.
    """

    def __init__(self, cfg: MABPConfig):
        super().__init__()
        cfg = resolve_variant(cfg)
        self.cfg = cfg
        self.text_encoder = TextEncoder(cfg.text)
        text_dim = self.text_encoder.hidden_size
        self.backbone = build_visual_encoder(cfg, text_dim)
        if cfg.pixel_decoder.conv_dim != cfg.decoder.hidden_dim or cfg.pixel_decoder.mask_dim != cfg.decoder.hidden_dim:
            raise ValueError("pixel_decoder.conv_dim and mask_dim must equal decoder.hidden_dim "
                             "(the official decoder has no input projection)")
        self.pixel_decoder = MSDeformAttnPixelDecoder(cfg.pixel_decoder, self.backbone.out_channels)
        self.decoder = build_decoder(cfg, text_dim)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False)

    # ----------------------------------------------------------------- pieces (the predictor caches them)
    def visual_cacheable(self) -> bool:
        """True if the visual stages see no language ("late" fusion, or PWAM with closed gates, as every
        model trained the official way has: see SwinPWAMEncoder.language_free_stages)."""
        return bool(self.backbone.language_free_stages())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.pixel_mean) / self.pixel_std

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids/mask -> word features (B, L, Ct)."""
        return self.text_encoder(input_ids, attention_mask)

    def encode_visual(self, images: torch.Tensor):
        """Language-free part of the visual encoder (only when `visual_cacheable()`): cacheable per image."""
        return self.backbone.forward_visual(self.normalize(images))

    def forward_features(self, feats: Dict[str, torch.Tensor], lang: torch.Tensor,
                         attention_mask: torch.Tensor) -> Dict[str, List[torch.Tensor]]:
        mask_features, multi_scale = self.pixel_decoder(feats)
        return self.decoder(multi_scale, mask_features, lang, attention_mask)

    def fuse(self, lang: torch.Tensor, attention_mask: torch.Tensor, images: Optional[torch.Tensor] = None,
             visual: Optional[list] = None) -> Dict[str, torch.Tensor]:
        """Multimodal backbone features from the images (full pass) or from cached visual features."""
        lang_t = lang.transpose(1, 2)  # (B, Ct, L), the Conv1d layout of PWAM
        mask = attention_mask.to(lang.dtype).unsqueeze(-1)  # (B, L, 1)
        if visual is not None:
            return self.backbone.forward_fusion(visual, lang_t, mask)
        return self.backbone(self.normalize(images), lang_t, mask)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                visual: Optional[List[torch.Tensor]] = None) -> Dict[str, List[torch.Tensor]]:
        """`visual`: the 4 maps of `encode_visual(images)` computed beforehand (a cache of the
        language-free visual pass, e.g. train.visual_cache); `images` is then not used."""
        lang = self.encode_text(input_ids, attention_mask)
        feats = self.fuse(lang, attention_mask, images=None if visual is not None else images, visual=visual)
        return self.forward_features(feats, lang, attention_mask)
