"""Encoder-only multi-scale deformable transformer (Mask2Former pixel-decoder flavour).

Three small modules live here because their attribute nesting must reproduce the official
parameter names (`transformer.level_embed`, `transformer.encoder.layers.{k}.…`):

- `MSDeformAttnEncoderLayer`: deformable self-attention + FFN, post-norm.
- `MSDeformAttnEncoder`: the stack of layers (`.layers`) plus the reference-point grid.
- `MSDeformAttnTransformerEncoderOnly`: flattens the levels, adds level embeddings, runs the stack.

No padding masks are used (inputs are never padded here), so every valid ratio is 1.
"""
from __future__ import annotations

import copy
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .ms_deform_attn import MSDeformAttn


class MSDeformAttnEncoderLayer(nn.Module):
    """One post-norm encoder layer: x = LN(x + MSDA(x + pos)); x = LN(x + FFN(x))."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            src: (B, L, d) flattened tokens of all levels; pos: (B, L, d) position + level embedding.
            reference_points: (B, L, n_levels, 2); spatial_shapes: (n_levels, 2) (H, W);
            level_start_index: (n_levels,).

        Returns:
            (B, L, d)
        """
        # Position only enters the query (offsets / weights); values are sampled from plain src.
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attn))
        # In place at inference only: the (tokens x d_ffn) hidden map is the largest activation here.
        # Under autograd an in-place ReLU on Linear's (viewed) 3-D output records CopySlices +
        # AsStrided nodes whose backward cost ~110 ms per layer for lite at batch 8 (profiled).
        hidden = self.linear1(src)
        ffn = self.linear2(self.dropout2(F.relu(hidden, inplace=not hidden.requires_grad)))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """Stack of identical encoder layers (deep-copied, then re-initialised by the transformer)."""

    def __init__(self, layer: MSDeformAttnEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(
        spatial_shapes: Sequence[Tuple[int, int]], batch: int, device: torch.device
    ) -> torch.Tensor:
        """Normalised pixel centres of every level, shared by all levels.

        Returns:
            (B, sum_l H_l*W_l, n_levels, 2) in (x, y) order. Each token's reference is its own
            centre ((i + 0.5) / H, (j + 0.5) / W); with valid ratios all 1 the official
            `ref[:, :, None] * valid_ratios[:, None]` is a plain broadcast over levels.
        """
        refs = []
        for h, w in spatial_shapes:
            ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device) / h
            xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device) / w
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(refs, 0)
        n_levels = len(spatial_shapes)
        return ref[None, :, None, :].expand(batch, -1, n_levels, -1)

    def forward(
        self,
        src: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        """src, pos: (B, L, d); spatial_shapes (n_levels, 2) long. Returns (B, L, d)."""
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        reference_points = self.get_reference_points(shapes, src.shape[0], src.device)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index)
        return out


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable-DETR encoder over several feature levels (no decoder)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        layer = MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
        self.encoder = MSDeformAttnEncoder(layer, num_encoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # Same order as the official: blanket xavier, then MSDeformAttn's own special init
        # (zero offsets weight / direction-grid bias would be destroyed by xavier), then levels.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            srcs: per level (B, d, H_l, W_l), coarsest first (the order the level embeddings mean).
            pos_embeds: per level (B, d, H_l, W_l).

        Returns:
            memory (B, sum_l H_l*W_l, d), spatial_shapes (n_levels, 2) long (H, W),
            level_start_index (n_levels,) long.
        """
        src_flat, pos_flat, shapes = [], [], []
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flat.append(src.flatten(2).transpose(1, 2))
            # The level embedding tells the attention which scale a token came from.
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_cat = torch.cat(src_flat, 1)
        pos_cat = torch.cat(pos_flat, 1)
        spatial_shapes = torch.as_tensor([tuple(s) for s in shapes], dtype=torch.long, device=src_cat.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        memory = self.encoder(src_cat, spatial_shapes, level_start_index, pos_cat)
        return memory, spatial_shapes, level_start_index
