"""Random (learnable, text-independent) initial queries: the Table V ablation of the query generator."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class RandomQueries(nn.Module):
    """Mask2Former-style initial queries: one learnable `query_feat` (Q, C) repeated over the batch.

    Nothing conditions the queries on the text. The decoder still needs language tokens (the MMD
    attends to them, the NT branch pools them), so T = langv_proj(words) * mask exactly as the query
    generator produces it: the ablation removes only the text conditioning of the queries.
    Parameter names match QueryGenerator's (query_feat, langv_proj) so the two share checkpoint keys.

    Inputs: lang (B, L, Ct) word features, lang_mask (B, L) 1 = real token.
    Returns: queries X0 (Q, B, C) and language tokens T (L, B, C).
    """

    def __init__(self, num_queries: int, hidden_dim: int, text_dim: int):
        super().__init__()
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.langv_proj = nn.Linear(text_dim, hidden_dim)

    def forward(self, lang: torch.Tensor, lang_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b = lang.shape[0]
        m = lang_mask.to(lang.dtype).unsqueeze(-1)  # (B, L, 1): padded words give zero tokens
        tokens = self.langv_proj(lang) * m  # (B, L, C)
        queries = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)  # (Q, B, C)
        return queries, tokens.transpose(0, 1)
