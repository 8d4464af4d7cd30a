"""The "naive mask head" of paper Table V: whole-image per-query masks aggregated into one map."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .regional_head import RegionalSupervisionHead

AGGREGATIONS = ("max", "mean", "softmax")


class NaiveAggregationHead(RegionalSupervisionHead):
    """RSH without regions: every query predicts a mask over the WHOLE map, and the queries' masks
    are aggregated into the prediction. Everything else (LayerNorm, 3-layer mask MLP, NT branch and
    its parameter names and sizes) is the RSH's, so Table V's "Naive -> +RSH" step changes only the
    region binding.

    Aggregation of the per-query logits M_q(p) = E_q . F(p):
      - "max" (default): Y(p) = max_q M_q(p), i.e. sigmoid(Y) = max_q sigmoid(M_q): the UNION of the
        query masks. Chosen because it is the only parameter-free aggregation that keeps the queries
        distinct prototypes (each can own a different referent, which is what GRES's multi-target
        masks need); every pixel's gradient goes to the query that claims it. A linear aggregation
        collapses to a single prototype: sum/mean/softmax-weighted sums of E_q . F equal
        (sum_q w_q E_q) . F, i.e. Fig. 2(a)'s single-prototype baseline.
      - "mean": Y = mean_q M_q (the single-prototype collapse, for comparison).
      - "softmax": Y = sum_q softmax_q(Linear_{C->1}(LN(X)))_q M_q, ReLA's minimap weighting
        without the minimap supervision (one extra Linear per head, `agg_weight`).
    NT branch: the RSH's, with the window centroid replaced by the GLOBAL average feature (there are
    no windows), shared by all queries.

    Shapes: x (Q, B, C); feat (B, C, H, W); lang (L, B, C). forward -> logits (B, H, W), NT (B, 2) or None.
    """

    def __init__(self, hidden_dim: int, num_queries: int, num_tokens: int, with_nt: bool = True,
                 aggregation: str = "max"):
        super().__init__(hidden_dim, num_queries, num_tokens, with_nt=with_nt)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown naive aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
        self.aggregation = aggregation
        if aggregation == "softmax":
            # No bias: a bias shared by all queries cancels in the softmax (it would never get a gradient).
            self.agg_weight = nn.Linear(hidden_dim, 1, bias=False)

    def query_logits(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """Per-query whole-image logits (B, Q, H, W)."""
        return torch.einsum("bqc,bchw->bqhw", self.embed(x), feat)

    def aggregate(self, x: torch.Tensor, per_query: torch.Tensor) -> torch.Tensor:
        """(B, Q, H, W) per-query logits -> (B, H, W)."""
        if self.aggregation == "max":
            return per_query.max(dim=1).values
        if self.aggregation == "mean":
            return per_query.mean(dim=1)
        weights = self.agg_weight(self.norm(x.transpose(0, 1))).softmax(dim=1)  # (B, Q, 1)
        return torch.einsum("bq,bqhw->bhw", weights.squeeze(-1), per_query)

    def mask_logits(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return self.aggregate(x, self.query_logits(x, feat))

    def forward(self, x: torch.Tensor, feat: torch.Tensor, lang: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor | None]:
        embed = self.embed(x)  # (B, Q, C)
        logits = self.aggregate(x, torch.einsum("bqc,bchw->bqhw", embed, feat))
        if not self.with_nt:
            return logits, None
        centroid = self.pooler_src_proj(feat.mean(dim=(2, 3)))  # (B, C): the whole image, no windows
        nt_emb = self.nt_emb_proj(embed)  # (B, Q, C)
        sim_vis = (nt_emb * centroid.unsqueeze(1)).sum(-1)  # (B, Q)
        sentence = self.nt_lang_emb_proj(lang.permute(1, 2, 0)).squeeze(-1)  # (B, C)
        sim_lang = (nt_emb * sentence.unsqueeze(1)).sum(-1)  # (B, Q)
        return logits, self.nt_embed(torch.cat([sim_lang, sim_vis], dim=-1))
