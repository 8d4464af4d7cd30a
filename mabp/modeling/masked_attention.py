"""nn.MultiheadAttention that also takes one attention mask shared by all heads, without copying it.

The decoders' cross-attention masks are the same for every head. nn.MultiheadAttention only accepts
(B*heads, Q, K) masks, which for B > 1 forces a copy of B*heads*Q*K values per layer: for lite at
batch 8 that is 106 MB and ~60 ms per fine-scale layer on 2 CPU cores, in every training step (the
profile in docs/performance.md). This subclass keeps the parameters, names and state-dict keys of
nn.MultiheadAttention (so every checkpoint, the converter and the introspection hooks are unchanged)
and adds one input form: a 4-D mask (B, 1, Q, K), broadcast over the heads inside
`F.scaled_dot_product_attention`, the same kernel nn.MultiheadAttention calls itself.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F


class MaskedMultiheadAttention(nn.MultiheadAttention):
    """Sequence-first multi-head attention (query (Q, B, E), key/value (K, B, E)) -> ((Q, B, E), None).

    attn_mask:
      - None, (Q, K) or (B*heads, Q, K): handled by nn.MultiheadAttention itself (bool True = blocked,
        or additive float).
      - (B, 1, Q, K): one mask for all heads, bool True = blocked or additive float (0 visible, -inf
        blocked); the attention is computed here with the module's own weights, same maths.
    need_weights must be False with a 4-D mask (the decoders never ask for weights; the introspection
    recomputes them from the hooked inputs). Raises ValueError on a 4-D mask of the wrong shape.
    """

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask: Optional[torch.Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if attn_mask is None or attn_mask.dim() != 4:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if need_weights or key_padding_mask is not None or self.batch_first or not self._qkv_same_embed_dim:
            raise ValueError("a shared (B, 1, Q, K) mask supports need_weights=False, no key_padding_mask, "
                             "sequence-first inputs and equal q/k/v dims")
        q_len, b, e = query.shape
        k_len = key.shape[0]
        if attn_mask.shape != (b, 1, q_len, k_len):
            raise ValueError(f"shared attention mask must be (B, 1, Q, K) = {(b, 1, q_len, k_len)}, "
                             f"got {tuple(attn_mask.shape)}")
        h = self.num_heads
        d = e // h
        w_q, w_k, w_v = self.in_proj_weight.split(e)
        b_q, b_k, b_v = self.in_proj_bias.split(e) if self.in_proj_bias is not None else (None, None, None)
        # (L, B, E) -> (B, heads, L, d)
        q = F.linear(query, w_q, b_q).view(q_len, b, h, d).permute(1, 2, 0, 3)
        k = F.linear(key, w_k, b_k).view(k_len, b, h, d).permute(1, 2, 0, 3)
        v = F.linear(value, w_v, b_v).view(k_len, b, h, d).permute(1, 2, 0, 3)
        mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)  # SDPA: True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(2, 0, 1, 3).reshape(q_len, b, e)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias), None
