"""The MABP decoder ("predictor" in the official code): query generator, 9 mixed-modal layers over
three scales (coarse -> fine, 3 layers each), query upsampling 16 -> 64 -> 256, regional supervision
heads at every scale end, and the query FPN + final head at 1/4 (official MABP decoder; paper §III-B-§III-D).

The paper's ablations (Tables V and VI) are switches of the same decoder (DecoderConfig.query_init,
layer_type, head_type, attn_mask, nt_supervision; see mabp/variants.py); their defaults build the
official model parameter for parameter.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..config import DecoderConfig
from ..variants import attention_mask_kind, nt_branches, validate_decoder
from .mixed_modal_layer import MixedModalLayer
from .naive_head import NaiveAggregationHead
from .position_encoding import PositionEmbeddingSine
from .query_fpn import QueryFPN
from .query_generator import QueryGenerator
from .random_queries import RandomQueries
from .region_language_attention import RegionLanguageAttention
from .regional_head import RegionalSupervisionHead, window_geometry
from .ria_rla_layer import RIARLALayer


def upsample_queries(x: torch.Tensor) -> torch.Tensor:
    """(Q, B, C) row-major n x n grid -> nearest 2x -> (4Q, B, C) row-major 2n x 2n grid.

    Each parent query becomes its 2x2 children, which then diverge through their own windows.
    """
    q, b, c = x.shape
    n = math.isqrt(int(q))  # int(): a plain int also while tracing (ONNX export)
    grid = x.permute(1, 2, 0).reshape(b, c, n, n)
    grid = F.interpolate(grid, scale_factor=2, mode="nearest")
    return grid.flatten(2).permute(2, 0, 1)


def queries_to_grid(x: torch.Tensor) -> torch.Tensor:
    """(Q, B, C) -> (B, C, n, n), row-major."""
    q, b, c = x.shape
    n = math.isqrt(int(q))  # int(): a plain int also while tracing (ONNX export)
    return x.permute(1, 2, 0).reshape(b, c, n, n)


def shared_head_mask(blocked: torch.Tensor, additive: Optional[torch.dtype] = None) -> torch.Tensor:
    """(B, Q, K) bool, True = blocked -> the (B, 1, Q, K) mask every head shares.

    MaskedMultiheadAttention broadcasts it over the heads inside scaled_dot_product_attention, so no
    B*heads*Q*K copy is ever made (nn.MultiheadAttention's own (B*heads, Q, K) form needs one per layer
    for B > 1: 106 MB for lite at batch 8 at 1/8). `as_per_head` gives that form where it is wanted.
    additive=None keeps it bool; additive=dtype returns the float mask (0 visible, -inf blocked).
    """
    blocked = blocked.detach()
    if additive is not None:
        blocked = torch.zeros(blocked.shape, dtype=additive, device=blocked.device).masked_fill_(blocked, float("-inf"))
    return blocked.unsqueeze(1)


def as_per_head(mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, 1, Q, K) shared mask -> nn.MultiheadAttention's (B*heads, Q, K) form (a copy when B > 1)."""
    b, _, q, k = mask.shape
    return mask.expand(b, num_heads, q, k).reshape(b * num_heads, q, k)


def mask_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype the attention will compute in (autocast's when active): an additive mask must match it."""
    device_type = like.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return like.dtype


def region_attention_mask(logits: torch.Tensor, num_queries: int, num_tokens: int,
                          additive: Optional[torch.dtype] = None) -> torch.Tensor:
    """The MMD attention mask (official MABP decoder; paper Eq. 1): a query may attend to the pixels of its own window
    plus every pixel predicted foreground anywhere, plus all language tokens.

    logits (B, H, W) of the scale's main RSH branch. Returns bool (B, 1, Q, H*W + L) shared by the heads,
    True = blocked (or its additive float form, see `shared_head_mask`).
    """
    b, h, w = logits.shape
    geo = window_geometry(h, w, num_queries)
    fg = (logits.sigmoid() >= 0.5).flatten(1)  # (B, HW): one map shared by all queries
    owner = geo.region_index(logits.device).flatten()  # (HW,)
    inwin = owner[None, :] == torch.arange(num_queries, device=logits.device)[:, None]  # (Q, HW)
    blocked = ~fg[:, None, :] & ~inwin[None]  # (B, Q, HW)
    # Mask2Former's guard, applied (as the official code does) to the VISUAL part before the language
    # columns are appended: a query that owns only padding and sees no foreground gets its visual row
    # opened. Never happens at 480; at other sizes windows made only of padding exist (e.g. 60 of the
    # 256 queries at 1/8 and 1/4 for 320x320 inputs).
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    lang_cols = torch.zeros(b, num_queries, num_tokens, dtype=torch.bool, device=logits.device)
    blocked = torch.cat([blocked, lang_cols], dim=2)
    return shared_head_mask(blocked, additive)


def global_attention_mask(query_logits: torch.Tensor, num_tokens: int = 0,
                          additive: Optional[torch.dtype] = None) -> torch.Tensor:
    """RIA / Mask2Former attention mask: each query attends to the pixels of its OWN whole-image mask
    (sigmoid >= 0.5), with no window restriction; a query whose mask is empty gets its visual row
    opened (Mask2Former's guard; without it a vision-only softmax would be all -inf -> NaN).
    `num_tokens` language columns (MMD memory) are appended, never blocked.

    query_logits (B, Q, H, W). Returns bool (B, 1, Q, H*W + num_tokens) shared by the heads, True =
    blocked (or its additive float form, see `shared_head_mask`).
    """
    b, q = query_logits.shape[:2]
    blocked = (query_logits.sigmoid() < 0.5).flatten(2)  # (B, Q, HW)
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    lang_cols = torch.zeros(b, q, num_tokens, dtype=torch.bool, device=query_logits.device)
    blocked = torch.cat([blocked, lang_cols], dim=2)
    return shared_head_mask(blocked, additive)


def flatten_scales(feats: List[torch.Tensor], level_embed: nn.Embedding, pe_layer: nn.Module):
    """Per scale: the flattened source + its level embedding and the sine positions, (HW, B, C) each."""
    srcs, poss = [], []
    for s, f in enumerate(feats):
        srcs.append((f.flatten(2) + level_embed.weight[s][None, :, None]).permute(2, 0, 1))
        poss.append(pe_layer(f).flatten(2).permute(2, 0, 1))
    return srcs, poss


class MABPDecoder(nn.Module):
    """Inputs: multi-scale features [f0 (1/32), f1 (1/16), f2 (1/8)] each (B, C, h_s, w_s);
    mask_features (B, C, H/4, W/4); word features lang (B, L, Ct); lang_mask (B, L).

    Returns {"pred_masks": [(B,h0,w0), (B,h1,w1), (B,h2,w2), (B,H/4,W/4)] logits,
             "nt_logits": [4 x (B, 2)] (class 1 = no target)} (NT entries None for heads without NT).

    Switches (DecoderConfig; defaults = the official model):
      query_init "random": RandomQueries instead of the query generator (same attribute name, so the
        shared weights keep their keys); layer_type "ria_rla": RIARLALayer (vision-only RIA, RLA at
        layer 0, query self-attention) instead of MixedModalLayer; head_type "naive":
        NaiveAggregationHead instead of RegionalSupervisionHead; attn_mask: "region" (official) or
        "global" (RIA) cross-attention masks; nt_supervision: which heads have an NT branch.
    Layer 0 is unmasked in every variant (the official decoder and the authors' -rla file compute the
    first mask after layer 0).
    """

    def __init__(self, cfg: DecoderConfig, text_dim: int, num_tokens: int, nt_heads: Optional[List[bool]] = None):
        super().__init__()
        validate_decoder(cfg)
        self.cfg = cfg
        c = cfg.hidden_dim
        self.num_heads = cfg.num_heads
        self.num_tokens = num_tokens
        self.num_scales = cfg.num_scales
        self.layers_per_scale = cfg.layers_per_scale
        self.layer_type = cfg.layer_type
        self.mask_kind = attention_mask_kind(cfg)
        if cfg.num_layers != cfg.num_scales * cfg.layers_per_scale:
            raise ValueError("num_layers must equal num_scales * layers_per_scale (blockwise coarse->fine)")
        self.pe_layer = PositionEmbeddingSine(c // 2, normalize=True)
        if cfg.query_init == "generator":
            self.query_generator = QueryGenerator(cfg.num_queries, c, text_dim)
        else:
            self.query_generator = RandomQueries(cfg.num_queries, c, text_dim)
        self.query_embed = nn.Embedding(cfg.num_queries, c)  # query positional embedding
        # Language-token positional embedding: only the MMD attends to the language tokens with
        # positions (RIA/RLA use none; the authors' -rla file drops it too).
        self.lang_query_embed = nn.Embedding(num_tokens, c) if cfg.layer_type == "mmd" else None
        self.level_embed = nn.Embedding(cfg.num_scales, c)
        if cfg.layer_type == "mmd":
            self.layers = nn.ModuleList(
                MixedModalLayer(c, cfg.num_heads, cfg.ffn_dim, num_tokens, cfg.dropout) for _ in range(cfg.num_layers))
        else:
            rla_text_dim = text_dim if cfg.rla_input == "words" else None
            self.layers = nn.ModuleList(
                RIARLALayer(c, cfg.num_heads, cfg.ffn_dim, num_tokens, cfg.dropout,
                            rla=RegionLanguageAttention(c, cfg.num_heads, cfg.rla_weight, rla_text_dim, cfg.dropout)
                            if i == 0 else None)  # ReLA's main branch: language attention at layer 0 only
                for i in range(cfg.num_layers))
        nt_heads = nt_heads if nt_heads is not None else nt_branches(cfg)
        if len(nt_heads) != cfg.num_scales + 1:
            raise ValueError(f"nt_heads needs {cfg.num_scales + 1} entries, got {len(nt_heads)}")
        queries = [cfg.num_queries * 4 ** s for s in range(cfg.num_scales)]
        queries.append(queries[-1])  # the final head uses the finest query grid
        if cfg.head_type == "rsh":
            heads = [RegionalSupervisionHead(c, q, num_tokens, with_nt=nt) for q, nt in zip(queries, nt_heads)]
        else:
            heads = [NaiveAggregationHead(c, q, num_tokens, with_nt=nt, aggregation=cfg.naive_aggregation)
                     for q, nt in zip(queries, nt_heads)]
        self.heads = nn.ModuleList(heads)
        self.query_fpn = QueryFPN(c, cfg.num_scales)

    def scale_inputs(self, feats: List[torch.Tensor]):
        """Flattened sources (+ level embedding) and sine positions per scale, (HW, B, C) each."""
        return flatten_scales(feats, self.level_embed, self.pe_layer)

    @torch.no_grad()
    def attention_mask(self, x: torch.Tensor, head: nn.Module, feat: torch.Tensor) -> torch.Tensor:
        """The cross-attention mask for the next layer from queries x (Q, B, C), that layer's scale
        head and features (B, C, H, W). (B, 1, Q, HW [+ L for the MMD's language columns]), detached,
        additive (0 visible, -inf blocked) in the attention's dtype."""
        tokens = self.num_tokens if self.layer_type == "mmd" else 0  # RIA's memory is vision only
        additive = mask_dtype(x)
        if self.mask_kind == "region":
            return region_attention_mask(head.mask_logits(x, feat), x.shape[0], tokens, additive)
        query_logits = torch.einsum("bqc,bchw->bqhw", head.embed(x), feat)  # whole-image per-query masks
        return global_attention_mask(query_logits, tokens, additive)

    def forward(self, feats: List[torch.Tensor], mask_features: torch.Tensor, lang: torch.Tensor,
                lang_mask: torch.Tensor) -> Dict[str, list]:
        b = lang.shape[0]
        srcs, poss = self.scale_inputs(feats)
        shapes = [f.shape[-2:] for f in feats]
        # Head features: the scale's decoder source (with level embedding) as a map.
        head_feats = [src.permute(1, 2, 0).reshape(b, -1, *shape) for src, shape in zip(srcs, shapes)]

        x, lang_tokens = self.query_generator(lang, lang_mask)  # (Q, B, C), (L, B, C)
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        lang_pos = None if self.lang_query_embed is None else self.lang_query_embed.weight.unsqueeze(1).repeat(1, b, 1)

        pred_masks, nt_logits, grids = [], [], []
        attn_mask = None  # layer 0 is unmasked
        extra = {"words": lang} if self.layer_type == "ria_rla" else {}  # an RLA over raw words needs them
        for i, layer in enumerate(self.layers):
            s = i // self.layers_per_scale
            x, lang_tokens = layer(x, query_pos, lang_tokens, lang_pos, srcs[s], poss[s], attn_mask, **extra)
            if (i + 1) % self.layers_per_scale == 0:  # end of scale s: supervised head, then upsample
                logits, nt = self.heads[s](x, head_feats[s], lang_tokens)
                pred_masks.append(logits)
                nt_logits.append(nt)
                grids.append(queries_to_grid(x))
                if s + 1 < self.num_scales:
                    x = upsample_queries(x)
                    query_pos = upsample_queries(query_pos)
            if i + 1 < len(self.layers):  # the mask for the next layer, at the scale it will use
                s_next = (i + 1) // self.layers_per_scale
                attn_mask = self.attention_mask(x, self.heads[s_next], head_feats[s_next])

        final_queries = self.query_fpn(grids).flatten(2).permute(2, 0, 1)  # (Q_last, B, C)
        logits, nt = self.heads[-1](final_queries, mask_features, lang_tokens)
        pred_masks.append(logits)
        nt_logits.append(nt)
        return {"pred_masks": pred_masks, "nt_logits": nt_logits}
