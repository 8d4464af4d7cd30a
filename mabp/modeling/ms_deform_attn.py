"""Multi-scale deformable attention (Deformable-DETR `MSDeformAttn`) in pure PyTorch.

The official MABP/ReLA/Mask2Former code calls a compiled CUDA kernel and falls back to a
`grid_sample` based "pytorch core" on CPU. Both sample bilinearly with zero padding using the
align_corners=False convention (pixel i covers [i, i+1) in un-normalised coordinates, its centre
is at normalised (i + 0.5) / size). This file implements only the `grid_sample` path, so no
compiled op is needed and the results match the official checkpoint's behaviour.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = Union[torch.Tensor, Sequence[Tuple[int, int]]]


def _shapes_as_list(spatial_shapes: SpatialShapes) -> List[Tuple[int, int]]:
    """Turn (n_levels, 2) (H, W) shapes into python ints (needed for split/view sizes)."""
    if isinstance(spatial_shapes, torch.Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample every level bilinearly at the given locations and take the attention-weighted sum.

    Args:
        value: (B, sum_l H_l*W_l, n_heads, d_head), levels concatenated in `spatial_shapes` order.
        spatial_shapes: (n_levels, 2) as (H, W) per level.
        sampling_locations: (B, Lq, n_heads, n_levels, n_points, 2), normalised (x, y) in [0, 1]
            (0 = left/top image border, 1 = right/bottom border; outside reads zeros).
        attention_weights: (B, Lq, n_heads, n_levels, n_points), already softmax-normalised.

    Returns:
        (B, Lq, n_heads * d_head)
    """
    shapes = _shapes_as_list(spatial_shapes)
    b, _, n_heads, d_head = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1]; with align_corners=False -1/+1 are the outer
    # borders of the edge pixels, exactly the convention of the CUDA kernel (loc * size - 0.5).
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (B, HW, heads, d) -> (B*heads, d, H, W): each head samples its own slice of channels.
        v = value_per_level[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, d_head, h, w)
        # (B, Lq, heads, P, 2) -> (B*heads, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # -> (B*heads, d, Lq, P)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B, Lq, heads, L, P) -> (B*heads, 1, Lq, L*P) to broadcast over the channel dim.
    weights = attention_weights.transpose(1, 2).reshape(b * n_heads, 1, lq, n_levels * n_points)
    # stack -> (B*heads, d, Lq, L, P) -> flatten -> (B*heads, d, Lq, L*P); sum over samples.
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(b, n_heads * d_head, lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    Each query attends to `n_points` learned sampling points around its reference point on each of
    `n_levels` feature levels, per head; the attention weights are predicted from the query (no
    key dot-products). Parameter names/shapes follow the official module so checkpoints load as is.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a fixed ring of directions (one per head)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        # Scale so the larger of |cos|,|sin| is 1: the first point sits one pixel away.
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        # Point k is placed k+1 pixels away, so points fan out along the head's direction.
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: Optional[torch.Tensor] = None,
        input_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Lq, d_model).
            reference_points: (B, Lq, n_levels, 2) normalised (x, y) in [0, 1], or
                (B, Lq, n_levels, 4) boxes (cx, cy, w, h) as in Deformable DETR's decoder.
            input_flatten: (B, Lin, d_model) with Lin = sum_l H_l*W_l.
            spatial_shapes: (n_levels, 2) long tensor of (H, W).
            level_start_index: (n_levels,) start offset of each level in Lin (unused by the
                pure-PyTorch core, kept for signature compatibility).
            input_padding_mask: optional (B, Lin) bool, True where padded (value zeroed there).

        Returns:
            (B, Lq, d_model)
        """
        b, lq, _ = query.shape
        _, lin, _ = input_flatten.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(b, lin, self.n_heads, self.d_model // self.n_heads)

        offsets = self.sampling_offsets(query).view(b, lq, self.n_heads, self.n_levels, self.n_points, 2)
        # Softmax jointly over all levels and points of one head.
        weights = self.attention_weights(query).view(b, lq, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(b, lq, self.n_heads, self.n_levels, self.n_points)

        if reference_points.shape[-1] == 2:
            # Offsets are predicted in pixels of each level; divide by (W, H) to normalise.
            shapes = torch.as_tensor(spatial_shapes, device=query.device)
            normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # Box references: offsets are relative to half the box size.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")

        out = ms_deform_attn_core(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
