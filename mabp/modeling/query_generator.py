"""Query generator: text-conditioned initial region queries (paper Fig. 4; official MABP query generator)."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn


class QueryGenerator(nn.Module):
    """Turns Q learnable region embeddings into text-conditioned queries.

    The official code applies **no softmax** over the words: the projected word values are summed
    with raw scaled dot-product weights. Padded words have zero keys and values, so the additive
    -1e4 mask term (kept for faithfulness) contributes exactly nothing.

    Inputs: lang (B, L, Ct) word features, lang_mask (B, L) 1 = real token.
    Returns: queries X0 (Q, B, C) and language tokens T = masked projected values (L, B, C).
    """

    def __init__(self, num_queries: int, hidden_dim: int, text_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.langq_proj = nn.Linear(hidden_dim, hidden_dim)
        self.langq_norm = nn.LayerNorm(hidden_dim)
        self.langk_proj = nn.Linear(text_dim, hidden_dim)
        self.langv_proj = nn.Linear(text_dim, hidden_dim)
        self.lango_proj = nn.Linear(hidden_dim, hidden_dim)

    def word_weights(self, lang: torch.Tensor, lang_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Raw (un-normalised) word weights w (B, L, Q) and masked values v (B, L, C)."""
        m = lang_mask.to(lang.dtype).unsqueeze(-1)  # (B, L, 1)
        q = self.langq_norm(self.langq_proj(self.query_feat.weight))  # (Q, C)
        k = self.langk_proj(lang) * m  # (B, L, C)
        v = self.langv_proj(lang) * m
        w = torch.matmul(k, q.t()) / math.sqrt(self.hidden_dim) + (1e4 * m - 1e4)  # (B, L, Q)
        return w, v

    def forward(self, lang: torch.Tensor, lang_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w, v = self.word_weights(lang, lang_mask)
        queries = self.lango_proj(torch.matmul(w.transpose(1, 2), v))  # (B, Q, C)
        return queries.transpose(0, 1), v.transpose(0, 1)
