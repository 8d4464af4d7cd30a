"""ReLA's output heads (henghuiding/ReLA gres_model/modeling): region masks, minimap, target mask, no-target."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .mlp import MLP


class ReLAHead(nn.Module):
    """One set of heads shared by every evaluation (ReLA evaluates them before layer 0 and after every
    layer for the attention masks; the outputs are taken after the last layer).

    With F = LN(X) (B, Q, C) and mask features M (B, C, H, W):
      region_embed = MLP3(F)                       (B, Q, C)
      all_masks    = region_embed . M              (B, Q, H, W)  per-region global mask logits
      minimap      = Linear_{C->2}(F)              (B, Q, 2)     per region: (background, target) weight
      target_masks = sum_q minimap[q, a] all_masks[q]  (B, 2, H, W), computed as
                     (sum_q minimap[q, a] region_embed_q) . M (ReLA's order: one 2-channel product)
      nt           = mean_q MLP(C -> C -> 2)(F)    (B, 2), class 1 = no target
    Parameter names follow ReLA: decoder_norm -> norm, mask_embed, minimap_embed, nt_embed.
    """

    def __init__(self, hidden_dim: int, mask_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.minimap_embed = nn.Linear(hidden_dim, 2)
        self.nt_embed = MLP(hidden_dim, hidden_dim, 2, 2)

    def all_masks(self, x: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """Queries (Q, B, C), mask features (B, C, H, W) -> per-region logits (B, Q, H, W)."""
        embed = self.mask_embed(self.norm(x.transpose(0, 1)))
        return torch.einsum("bqc,bchw->bqhw", embed, mask_features)

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.norm(x.transpose(0, 1))  # (B, Q, C)
        region_embed = self.mask_embed(feats)
        all_masks = torch.einsum("bqc,bchw->bqhw", region_embed, mask_features)
        minimap = self.minimap_embed(feats)  # (B, Q, 2)
        target_embed = torch.einsum("bqa,bqc->bac", minimap, region_embed)  # (B, 2, C)
        target_masks = torch.einsum("bac,bchw->bahw", target_embed, mask_features)
        nt = self.nt_embed(feats).mean(dim=1)  # global average over the regions
        return {"all_masks": all_masks, "minimap": minimap, "target_masks": target_masks, "nt": nt}
