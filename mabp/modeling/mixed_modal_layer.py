"""One mixed-modal decoder (MMD) layer (paper Eq. 1; official MABP decoder layer)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .masked_attention import MaskedMultiheadAttention


class MixedModalLayer(nn.Module):
    """Language-token mixing -> masked cross-attention over [vision ; language] -> joint
    self-attention over [queries ; language] -> FFN. Post-norm, dropout 0 (the official setting).

    Shapes (sequence-first, as nn.MultiheadAttention's default):
      x (Q, B, C) queries, query_pos (Q, B, C), lang (L, B, C) language tokens, lang_pos (L, B, C),
      memory (HW, B, C) visual tokens of this layer's scale, memory_pos (HW, B, C),
      attn_mask (B, 1, Q, HW + L) shared by the heads, or (B*heads, Q, HW + L): bool, True = may NOT
      attend, or additive float (-inf = may not);
      language columns are never blocked.
    Returns the updated (x, lang).
    """

    def __init__(self, hidden_dim: int, num_heads: int, ffn_dim: int, num_tokens: int, dropout: float = 0.0):
        super().__init__()
        # A separate Linear(L -> L) per layer mixes the language tokens along the token axis; after it
        # the padded slots are no longer zero (and no key-padding mask is used anywhere in the MMD).
        self.token_mix = nn.Linear(num_tokens, num_tokens)
        self.cross_attn = MaskedMultiheadAttention(hidden_dim, num_heads, dropout=dropout)
        self.cross_norm = nn.LayerNorm(hidden_dim)
        self.self_attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout)
        self.self_norm = nn.LayerNorm(hidden_dim)
        self.linear1 = nn.Linear(hidden_dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, hidden_dim)
        self.ffn_norm = nn.LayerNorm(hidden_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # The official attention/FFN layers xavier-initialise every matrix; token_mix keeps the default.
        for name, p in self.named_parameters():
            if not name.startswith("token_mix") and p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, lang: torch.Tensor, lang_pos: torch.Tensor,
                memory: torch.Tensor, memory_pos: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        lang = self.token_mix(lang.permute(1, 2, 0)).permute(2, 0, 1)  # mix along the token axis
        mem = torch.cat([memory, lang], dim=0)
        mem_pos = torch.cat([memory_pos, lang_pos], dim=0)
        attn = self.cross_attn(x + query_pos, mem + mem_pos, mem, attn_mask=attn_mask, need_weights=False)[0]
        x = self.cross_norm(x + attn)

        z = torch.cat([x, lang], dim=0)
        z_pos = torch.cat([query_pos, lang_pos], dim=0)
        qk = z + z_pos
        z = self.self_norm(z + self.self_attn(qk, qk, z, need_weights=False)[0])
        z = self.ffn_norm(z + self.linear2(F.relu(self.linear1(z))))
        q = x.shape[0]
        return z[:q], z[q:]
