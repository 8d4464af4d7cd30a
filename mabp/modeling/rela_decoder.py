"""The ReLA decoder (Liu et al., CVPR 2023; henghuiding/ReLA main branch) on MABP's encoders and pixel
decoder: the paper's main baseline, built in the same framework (henghuiding/ReLA gres_model/modeling)."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from ..config import DecoderConfig
from .mabp_decoder import flatten_scales, global_attention_mask, mask_dtype
from .position_encoding import PositionEmbeddingSine
from .region_language_attention import RegionLanguageAttention
from .rela_head import ReLAHead
from .ria_rla_layer import RIARLALayer


class ReLADecoder(nn.Module):
    """100 fixed region queries (10 x 10), 9 layers round-robin over the 3 scales (level = i mod 3).

    Layer i: RIA (masked cross-attention to the visual tokens of level i mod 3) -> at layer 0 only,
    RLA (gated language cross-attention over a zero-initialised projection of the text-encoder words)
    -> region-region self-attention -> FFN. The RIA mask of every layer (layer 0 included) comes from
    the shared head evaluated on the current queries: each region's whole-image mask on the 1/4 mask
    features, bilinearly resized to that layer's scale, blocked where sigmoid < 0.5 (fully blocked
    rows opened). No query upsampling, no language tokens in the decoder, no key-padding mask
    (ReLA passes none; `lang_mask` is accepted for interface parity and unused).

    Inputs: feats [f0 (1/32), f1 (1/16), f2 (1/8)] each (B, C, h_s, w_s); mask_features (B, C, H/4, W/4);
    lang (B, L, Ct) words; lang_mask (B, L).
    Returns {"pred_masks": [(B, H/4, W/4) = target_masks[:, 1] - target_masks[:, 0]] (sigmoid > 0.5 is
    exactly argmax == 1), "nt_logits": [(B, 2)], "target_masks": (B, 2, H/4, W/4),
    "minimap": (B, Q, 2), "all_masks": (B, Q, H/4, W/4)}.
    """

    def __init__(self, cfg: DecoderConfig, text_dim: int, num_tokens: int):
        super().__init__()
        n = int(round(cfg.rela_num_queries ** 0.5))
        if n * n != cfg.rela_num_queries:
            raise ValueError(f"rela_num_queries must be a square, got {cfg.rela_num_queries}")
        c = cfg.hidden_dim
        self.cfg = cfg
        self.num_heads = cfg.num_heads
        self.num_levels = cfg.num_scales
        self.pe_layer = PositionEmbeddingSine(c // 2, normalize=True)
        self.level_embed = nn.Embedding(cfg.num_scales, c)
        self.query_feat = nn.Embedding(cfg.rela_num_queries, c)
        self.query_embed = nn.Embedding(cfg.rela_num_queries, c)
        self.layers = nn.ModuleList(
            RIARLALayer(c, cfg.num_heads, cfg.ffn_dim, None, cfg.dropout,
                        rla=RegionLanguageAttention(c, cfg.num_heads, cfg.rla_weight, text_dim, cfg.dropout)
                        if i == 0 else None)
            for i in range(cfg.num_layers))
        self.head = ReLAHead(c, c)

    @torch.no_grad()
    def attention_mask(self, x: torch.Tensor, mask_features: torch.Tensor, size) -> torch.Tensor:
        """RIA mask for a layer at map size `size` -> (B, 1, Q, h*w) additive (-inf = blocked), shared by the heads."""
        masks = F.interpolate(self.head.all_masks(x, mask_features), size=tuple(size), mode="bilinear",
                              align_corners=False)
        return global_attention_mask(masks, 0, mask_dtype(x))

    def forward(self, feats: List[torch.Tensor], mask_features: torch.Tensor, lang: torch.Tensor,
                lang_mask: torch.Tensor) -> Dict[str, object]:
        b = lang.shape[0]
        srcs, poss = flatten_scales(feats, self.level_embed, self.pe_layer)
        sizes = [f.shape[-2:] for f in feats]
        x = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)  # (Q, B, C)
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        attn_mask = self.attention_mask(x, mask_features, sizes[0])  # heads before layer 0
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            x, _ = layer(x, query_pos, None, None, srcs[level], poss[level], attn_mask, words=lang)
            if i + 1 < len(self.layers):
                attn_mask = self.attention_mask(x, mask_features, sizes[(i + 1) % self.num_levels])
        out = self.head(x, mask_features)
        final = out["target_masks"][:, 1] - out["target_masks"][:, 0]
        return {"pred_masks": [final], "nt_logits": [out["nt"]], "target_masks": out["target_masks"],
                "minimap": out["minimap"], "all_masks": out["all_masks"]}
