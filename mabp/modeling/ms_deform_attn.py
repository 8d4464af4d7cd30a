"""Multi-scale deformable attention (Deformable-DETR `MSDeformAttn`) in pure PyTorch.

The official MABP/ReLA/Mask2Former code calls a compiled CUDA kernel and falls back to a
`grid_sample` based "pytorch core" on CPU. Both sample bilinearly with zero padding using the
align_corners=False convention (pixel i covers [i, i+1) in un-normalised coordinates, its centre
is at normalised (i + 0.5) / size). No compiled op is needed here: `ms_deform_attn_core` computes
the same sums with one weighted `embedding_bag` (about twice as fast on CPU as the official
fallback), and `ms_deform_attn_core_grid_sample`, the official fallback's maths, is kept as the
reference the tests compare it with.
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

    Same maths as `ms_deform_attn_core_grid_sample` (bilinear, zero padding, align_corners=False), in
    one weighted `F.embedding_bag`: every (batch, query, head) output is a weighted sum of at most
    n_levels * n_points * 4 value rows (the 4 bilinear corners of each sampling point), so the
    corner indices and weights (bilinear weight x attention weight, 0 for corners outside the map)
    are computed first and the gather + weighted sum is a single fused kernel. On 2 CPU cores this is
    ~2x faster than grid_sample + stack + multiply + sum, and it is differentiable in the values, the
    locations (through the bilinear weights) and the attention weights.

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
    n_points = sampling_locations.shape[4]
    width, height = _level_grids(shapes, n_points, sampling_locations)
    # align_corners=False puts pixel i's centre at normalised (i + 0.5) / size.
    px = sampling_locations[..., 0] * width - 0.5
    py = sampling_locations[..., 1] * height - 0.5
    return _sample_pixels(value, shapes, (width, height), px, py, attention_weights)


def _level_grids(shapes: List[Tuple[int, int]], n_points: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Widths and heights as contiguous (n_levels, n_points) tables.

    Per-level constants are expanded over the points on purpose: broadcasting a (L, 1) constant
    into (..., L, P) tensors gives CPU elementwise kernels a 4-element inner loop, several times
    slower than a contiguous (L, P) = 12-element one.
    """
    n_levels = len(shapes)
    kw = dict(dtype=like.dtype, device=like.device)
    width = torch.tensor([w for _, w in shapes], **kw).view(n_levels, 1).expand(n_levels, n_points).contiguous()
    height = torch.tensor([h for h, _ in shapes], **kw).view(n_levels, 1).expand(n_levels, n_points).contiguous()
    return width, height


def _sample_pixels(value: torch.Tensor, shapes: List[Tuple[int, int]], grids: Tuple[torch.Tensor, torch.Tensor],
                   px: torch.Tensor, py: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """The embedding_bag core on pixel coordinates.

    Args:
        value: (B, Lin, n_heads, d_head).
        grids: the (width, height) tables of `_level_grids`.
        px, py: (B, Lq, n_heads, n_levels, n_points) un-normalised sampling positions in each level's
            pixel grid (pixel i spans [i - 0.5, i + 0.5]); any strides.
        attention_weights: (B, Lq, n_heads, n_levels, n_points), any strides.

    Returns:
        (B, Lq, n_heads * d_head)
    """
    b, lin, n_heads, d_head = value.shape
    _, lq, _, n_levels, n_points = px.shape
    dev = px.device
    rows = b * n_heads * lin  # the flattened value table
    # Index arithmetic runs in floating point and is converted once: float32 is exact below 2^24.
    idt = torch.float32 if rows < 2 ** 24 else torch.float64
    width, height = grids
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    # Each (batch, head) owns a block of lin rows in the flattened value table; a level starts at
    # its offset inside the block. (B, 1, heads, L, P), broadcast over the queries.
    block = (torch.arange(b, device=dev).view(b, 1) * n_heads + torch.arange(n_heads, device=dev).view(1, n_heads)) * lin
    first = (block.view(b, 1, n_heads, 1, 1).to(idt)
             + torch.tensor(starts, dtype=idt, device=dev).view(1, 1, 1, n_levels, 1))
    first = first.expand(b, 1, n_heads, n_levels, n_points).contiguous()

    def corners(p: torch.Tensor, size: torch.Tensor):
        """Bilinear weights and clamped indices of the corners floor(p) and floor(p) + 1 on one axis.
        A corner outside the map reads zero, so its weight is zeroed and its index is harmless."""
        # A non-finite location (diverged training) reads zeros instead of indexing out of the table.
        p = p.nan_to_num(nan=-2.0, posinf=-2.0, neginf=-2.0)
        p0 = p.floor()
        frac = p - p0
        hi = size - 1
        w0 = (1 - frac) * ((p0 >= 0) & (p0 <= hi))
        w1 = frac * ((p0 >= -1) & (p0 <= hi - 1))
        i0 = torch.minimum(p0.clamp_min(0), hi).to(idt)
        i1 = torch.minimum((p0 + 1).clamp_min(0), hi).to(idt)
        return w0, w1, i0, i1

    wx0, wx1, ix0, ix1 = corners(px, width)
    wy0, wy1, iy0, iy1 = corners(py, height)
    wy0, wy1 = wy0 * attention_weights, wy1 * attention_weights
    row0, row1 = iy0 * width.to(idt) + first, iy1 * width.to(idt) + first
    # Bags of k = 4 * L * P samples, one per (batch, query, head): layout (B, Lq, heads, 4, L, P).
    weight = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], 3)
    index = torch.stack([row0 + ix0, row0 + ix1, row1 + ix0, row1 + ix1], 3)
    index = index.int() if rows < 2 ** 31 else index.long()
    k = 4 * n_levels * n_points
    table = value.transpose(1, 2).reshape(rows, d_head)
    out = F.embedding_bag(index.view(-1, k), table, per_sample_weights=weight.view(-1, k).to(table.dtype), mode="sum")
    return out.view(b, lq, n_heads * d_head)


def ms_deform_attn_core_grid_sample(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference implementation with `F.grid_sample` (one call per level, the official CPU fallback).

    Same arguments and result as `ms_deform_attn_core`, which gives the same numbers ~2x faster; kept
    as the ground truth the tests compare it with.
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


def export_layout(sampling_locations: torch.Tensor, attention_weights: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The standard layouts turned into the ones `ms_deform_attn_core_export` reads.

    sampling_locations (B, Lq, heads, L, P, 2) in [0, 1] -> grids (B, heads, L, P, Lq, 2) in grid_sample's
    [-1, 1]; attention_weights (B, Lq, heads, L, P) -> (B, heads, L, P, Lq).
    """
    grids = (2.0 * sampling_locations - 1.0).permute(0, 2, 3, 4, 1, 5)
    return grids, attention_weights.permute(0, 2, 3, 4, 1)


def ms_deform_attn_core_export(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    grids: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The deformable sum in the form exported to ONNX (mabp/fast_path.py): one GridSample per level.

    Args:
        value: (B, sum_l H_l*W_l, heads, d).
        spatial_shapes: (L, 2) (H, W) per level.
        grids: (B, heads, L, P, Lq, 2) sampling points in grid_sample's [-1, 1] coordinates
            (align_corners=False), i.e. 2 * location - 1 (`export_layout`).
        attention_weights: (B, heads, L, P, Lq).
    Returns:
        (B, Lq, heads * d), the same sums as `ms_deform_attn_core` (float rounding apart).

    The layouts are chosen for ONNX Runtime's CPU kernels (paper at 480x480, docs/performance.md): the
    points axis sits before the queries, so each level's weighted sum over its points is a reduction over a
    middle axis with a long contiguous inner span (Lq) instead of a 4-long last axis, and the levels are
    summed one by one, so no (B*heads, d, Lq, L*P) stack is built. Both inputs come out of the query's
    linear layers as (B, Lq, heads*L*P[*2]); these layouts are one swap of Lq with heads*L*P away.
    """
    b, _, n_heads, d_head = value.shape
    _, _, n_levels, n_points, lq, _ = grids.shape
    shapes = _shapes_as_list(spatial_shapes)
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    out = None
    for lvl, (h, w) in enumerate(shapes):
        # (B, HW, heads, d) -> (B*heads, d, H, W): each head samples its own slice of channels.
        v = value_per_level[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, d_head, h, w)
        sampled = F.grid_sample(v, grids[:, :, lvl].reshape(b * n_heads, n_points, lq, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # (B*heads, d, P, Lq)
        term = (sampled * attention_weights[:, :, lvl].reshape(b * n_heads, 1, n_points, lq)).sum(2)
        out = term if out is None else out + term
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

    def _export_grids(self, query: torch.Tensor, reference_points: torch.Tensor,
                      shapes: List[Tuple[int, int]]) -> torch.Tensor:
        """Sampling points for `ms_deform_attn_core_export`: (B, heads, L, P, Lq, 2) in [-1, 1].

        query (B, Lq, d_model); reference_points (B, Lq, L, 2) in [0, 1]. The same points as
        `forward`'s 2 * (ref + offsets / (W, H)) - 1, with the per-level 2 / (W, H) folded into the
        offsets' linear layer (a constant at export) and the reference points added after the
        permutation, where they broadcast over whole (Lq, 2) planes: in ONNX Runtime the division and the
        (.., 1, L, 1, 2) broadcast add cost ~4.4 ms per encoder layer of paper at 480x480.
        """
        b, lq, _ = query.shape
        scale = torch.tensor([[2.0 / w, 2.0 / h] for h, w in shapes], dtype=query.dtype, device=query.device)
        scale = scale.view(1, self.n_levels, 1, 2).expand(self.n_heads, -1, self.n_points, -1).reshape(-1)
        layer = self.sampling_offsets
        offsets = F.linear(query, layer.weight * scale[:, None], layer.bias * scale)
        offsets = offsets.view(b, lq, -1, 2).transpose(1, 2)
        offsets = offsets.reshape(b, self.n_heads, self.n_levels, self.n_points, lq, 2)
        return offsets + (2.0 * reference_points - 1.0).permute(0, 2, 1, 3)[:, None, :, None]

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
        # Softmax jointly over all levels and points of one head. Taken over dim 0 of the transposed
        # (L*P, rows) view: a softmax over a 12-long last dim is ~6x slower on CPU; same values.
        logits = self.attention_weights(query).view(-1, self.n_levels * self.n_points)
        weights = F.softmax(logits.t(), 0).t().view(b, lq, self.n_heads, self.n_levels, self.n_points)

        training = torch.is_grad_enabled() and (value.requires_grad or offsets.requires_grad)
        if reference_points.shape[-1] == 2 and torch.onnx.is_in_onnx_export():
            grids = self._export_grids(query, reference_points, _shapes_as_list(spatial_shapes))
            weights = weights.reshape(b, lq, -1).transpose(1, 2)
            weights = weights.reshape(b, self.n_heads, self.n_levels, self.n_points, lq)
            out = ms_deform_attn_core_export(value, spatial_shapes, grids, weights)
        elif reference_points.shape[-1] == 2 and training:
            # Training: the embedding_bag core's backward sorts every corner index (~400 ms per layer
            # for lite at batch 8 on 2 cores); grid_sample's backward scatters per (batch, head)
            # plane and the whole fwd+bwd is ~2x faster (benchmarks/profile_train_step.py). Same sums.
            offset_normalizer = torch.as_tensor(_shapes_as_list(spatial_shapes), dtype=offsets.dtype,
                                                device=offsets.device).flip(-1)  # (L, 2) as (W, H)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / offset_normalizer[None, None, None, :, None, :])
            out = ms_deform_attn_core_grid_sample(value, spatial_shapes, locations, weights)
        elif reference_points.shape[-1] == 2:
            # Offsets are predicted in pixels of each level. The official code normalises them by
            # (W, H) and grid_sample multiplies back; working in pixels directly is the same sum
            # (to float rounding) without the round trip: pixel = ref * size - 0.5 + offset.
            shapes = _shapes_as_list(spatial_shapes)
            width, height = _level_grids(shapes, self.n_points, offsets)
            ref_x = (reference_points[..., 0, None] * width - 0.5).unsqueeze(2)  # (B, Lq, 1, L, P)
            ref_y = (reference_points[..., 1, None] * height - 0.5).unsqueeze(2)
            out = _sample_pixels(value, shapes, (width, height), ref_x + offsets[..., 0], ref_y + offsets[..., 1],
                                 weights)
        elif reference_points.shape[-1] == 4:
            # Box references: offsets are relative to half the box size.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
            out = ms_deform_attn_core(value, spatial_shapes, locations, weights)
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")
        return self.output_proj(out)
