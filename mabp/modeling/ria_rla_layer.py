"""One ReLA-style decoder layer: RIA (vision-only masked cross-attention), optional RLA, region
self-attention, FFN (henghuiding/ReLA; the "RIA/RLA" rows of paper Table V)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .masked_attention import MaskedMultiheadAttention

from .region_language_attention import RegionLanguageAttention


class RIARLALayer(nn.Module):
    """[language-token mixing] -> RIA -> [RLA] -> query-only self-attention -> FFN. Post-norm.

    - Token mixing (`num_tokens` given): the MABP framework's per-layer Linear(L -> L) over the
      language tokens (the authors' -rla ablation keeps `layer_embed`); the tokens are not attended
      to by RIA and not updated otherwise, but they feed the RLA and the heads' NT branches.
    - RIA: masked cross-attention of the queries to the VISUAL tokens of this layer's scale only.
    - RLA (`rla` given, layer 0 only in ReLA's main branch): gated language cross-attention.
    - Self-attention among the queries only ("region-region" attention), then the FFN.

    Shapes (sequence-first): x (Q, B, C), query_pos (Q, B, C), lang (L, B, C) or None, lang_pos unused
    (kept so both layer types share one call signature), memory/memory_pos (HW, B, C),
    attn_mask (B, 1, Q, HW) shared by the heads or (B*heads, Q, HW), bool True = blocked (or additive float, -inf = blocked), words (B, L, Ct) raw text features (needed only
    by an RLA that projects words). Returns the updated (x, lang).
    """

    def __init__(self, hidden_dim: int, num_heads: int, ffn_dim: int, num_tokens: Optional[int] = None,
                 dropout: float = 0.0, rla: Optional[RegionLanguageAttention] = None):
        super().__init__()
        self.token_mix = nn.Linear(num_tokens, num_tokens) if num_tokens else None
        self.cross_attn = MaskedMultiheadAttention(hidden_dim, num_heads, dropout=dropout)
        self.cross_norm = nn.LayerNorm(hidden_dim)
        self.rla = rla
        self.self_attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout)
        self.self_norm = nn.LayerNorm(hidden_dim)
        self.linear1 = nn.Linear(hidden_dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, hidden_dim)
        self.ffn_norm = nn.LayerNorm(hidden_dim)
        # Xavier on every attention/FFN matrix as in ReLA/Mask2Former; token_mix and the RLA keep
        # their own initialisation (the RLA's zero-initialised projection must stay zero).
        for mod in (self.cross_attn, self.self_attn, self.linear1, self.linear2):
            for p in mod.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, lang: Optional[torch.Tensor],
                lang_pos: Optional[torch.Tensor], memory: torch.Tensor, memory_pos: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None,
                words: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.token_mix is not None and lang is not None:
            lang = self.token_mix(lang.permute(1, 2, 0)).permute(2, 0, 1)  # mix along the token axis
        attn = self.cross_attn(x + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        x = self.cross_norm(x + attn)
        if self.rla is not None:
            if self.rla.lang_proj is not None:
                if words is None:
                    raise ValueError("this RLA projects raw words: pass words (B, L, Ct)")
                mem = words.transpose(0, 1)
            else:
                if lang is None:
                    raise ValueError("this RLA attends to the language tokens: pass lang (L, B, C)")
                mem = lang
            x = self.rla(x, mem)
        qk = x + query_pos
        x = self.self_norm(x + self.self_attn(qk, qk, x, need_weights=False)[0])
        x = self.ffn_norm(x + self.linear2(F.relu(self.linear1(x))))
        return x, lang
