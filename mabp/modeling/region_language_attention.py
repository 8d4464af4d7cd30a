"""ReLA's region-language attention (RLA), main-branch form: one gated language cross-attention."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class RegionLanguageAttention(nn.Module):
    """x <- x + weight * sigmoid(g) * LN(x + MHA(q=x, k=mem, v=mem)).

    Follows ReLA's `RLA_lang_att` literally: it is a post-norm CrossAttentionLayer (its output is
    LN(x + attention), not the bare attention), without positional embeddings and without a key
    padding mask; the gate g (ReLA's `lang_weight`) starts at 0 so sigmoid(g) = 0.5, and weight = 0.1.

    text_dim given: the memory is raw text-encoder words, first projected by a bias-free Linear
    (Ct -> C) initialised to ZERO (ReLA's `lang_proj`), so the language enters gradually from zero.
    text_dim None: the memory already lives in C (the authors' -rla ablation uses the decoder's
    layer_embed-mixed language tokens).

    Shapes: x (Q, B, C); memory (L, B, Ct or C). Returns (Q, B, C).
    """

    def __init__(self, hidden_dim: int, num_heads: int, weight: float = 0.1, text_dim: Optional[int] = None,
                 dropout: float = 0.0):
        super().__init__()
        self.weight = weight
        self.cross_attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.lang_weight = nn.Parameter(torch.zeros(()))
        self.lang_proj = nn.Linear(text_dim, hidden_dim, bias=False) if text_dim is not None else None
        # ReLA's attention layers xavier-initialise every matrix; its lang_proj is zero-initialised.
        for p in self.cross_attn.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if self.lang_proj is not None:
            nn.init.zeros_(self.lang_proj.weight)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        if self.lang_proj is not None:
            memory = self.lang_proj(memory)
        attended = self.norm(x + self.cross_attn(x, memory, memory, need_weights=False)[0])
        return x + self.weight * torch.sigmoid(self.lang_weight) * attended
