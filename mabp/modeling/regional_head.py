"""Regional supervision head (RSH) with its no-target branch (paper §III-D; official MABP regional head).

The feature map is zero-padded and tiled into n x n non-overlapping windows (n = sqrt(Q)); query q
predicts the mask of window (q // n, q % n) only, by a dot product with that window's features.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import MLP


@dataclass(frozen=True)
class WindowGeometry:
    """How an (H, W) map is tiled by n x n windows.

    The official rule: window = floor(size / n) + 1 and the map is zero-padded to n * window. At
    480x480 its hard-coded paddings are (top/left, bottom/right) = (0, 1) at 1/32 with 16 queries,
    (1, 1) at 1/16, (2, 2) at 1/8 and (4, 4) for the 1/4 final head. `before = total // 2` reproduces
    all four and is our generalisation to other sizes (the official code only runs at 480).
    """

    n: int
    height: int
    width: int
    win_h: int
    win_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int

    @property
    def padded_h(self) -> int:
        return self.n * self.win_h

    @property
    def padded_w(self) -> int:
        return self.n * self.win_w

    def region_boxes(self) -> torch.Tensor:
        """(Q, 4) boxes (x0, y0, x1, y1) of each query's window in (unpadded) map pixels, clipped."""
        boxes = []
        for q in range(self.n * self.n):
            r, c = divmod(q, self.n)
            y0 = r * self.win_h - self.pad_top
            x0 = c * self.win_w - self.pad_left
            # clip to the map; a window made only of padding becomes an empty box at the border
            bx0, by0 = min(max(x0, 0), self.width), min(max(y0, 0), self.height)
            boxes.append([bx0, by0, max(bx0, min(x0 + self.win_w, self.width)),
                          max(by0, min(y0 + self.win_h, self.height))])
        return torch.tensor(boxes, dtype=torch.long)

    def window_rows_cols(self, device: torch.device | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(H,) window row of each pixel row and (W,) window column of each pixel column (long)."""
        ys = (torch.arange(self.height, device=device) + self.pad_top) // self.win_h
        xs = (torch.arange(self.width, device=device) + self.pad_left) // self.win_w
        return ys, xs

    def region_index(self, device: torch.device | None = None) -> torch.Tensor:
        """(H, W) long map: the query whose window owns each pixel."""
        ys, xs = self.window_rows_cols(device)
        return ys[:, None] * self.n + xs[None, :]


@functools.lru_cache(maxsize=256)
def window_geometry(height: int, width: int, num_queries: int) -> WindowGeometry:
    n = int(round(math.sqrt(num_queries)))
    if n * n != num_queries:
        raise ValueError(f"the number of region queries must be a square, got {num_queries}")
    win_h, win_w = height // n + 1, width // n + 1
    ph, pw = n * win_h - height, n * win_w - width
    return WindowGeometry(n, height, width, win_h, win_w, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)


def pad_to_windows(feat: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(B, C, H, W) -> zero-padded (B, C, n*win_h, n*win_w)."""
    return F.pad(feat, (geo.pad_left, geo.pad_right, geo.pad_top, geo.pad_bottom))


def windowed_logits(embed: torch.Tensor, feat: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """Per-window dot products re-tiled into one map.

    embed (B, Q, C) query embeddings; feat (B, C, H, W). Returns logits (B, H, W): every pixel gets
    the logit of the query owning its window (no bias, no scale).
    """
    b, c, h, w = feat.shape
    owner = geo.region_index(feat.device).flatten()  # (HW,)
    # Each pixel takes its owner's embedding and one dot product: the same sums as padding the map,
    # cutting it into windows and re-tiling (what the official code does), without those two copies
    # of the map; padded pixels were cropped away anyway.
    if torch.onnx.is_in_onnx_export():
        # ONNX Runtime (mabp/fast_path.py): the bmm form's (B, C, HW) -> (B*HW, C, 1) transpose of the map
        # costs ~9 ms at 120x120x256 (paper, 480x480); gathering the embeddings straight into the map's
        # (B, C, HW) layout and reducing over C costs ~3 ms. In eager PyTorch the bmm form is faster.
        e = embed.transpose(1, 2).index_select(2, owner)  # (B, C, HW)
        return (e * feat.flatten(2)).sum(1).view(b, h, w)
    e = embed.index_select(1, owner).reshape(b * h * w, 1, c)
    f = feat.flatten(2).transpose(1, 2).reshape(b * h * w, c, 1)
    return torch.bmm(e, f).view(b, h, w)


def window_means(feat: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, n, n): each window's mean over its PADDED area (padding counts as zeros).

    Equals avg_pool2d(pad_to_windows(feat), window) (the official centroid), computed as two small
    matrix products with the 0/1 row and column assignment matrices instead of padding the map.
    """
    rows, cols = geo.window_rows_cols(feat.device)
    a_rows = F.one_hot(rows, geo.n).to(feat.dtype)  # (H, n)
    a_cols = F.one_hot(cols, geo.n).to(feat.dtype)  # (W, n)
    return (a_rows.t() @ feat @ a_cols) / (geo.win_h * geo.win_w)


class RegionalSupervisionHead(nn.Module):
    """RSH of one scale: main (mask) branch and no-target (NT) branch.

    Parameter names map to the official per-scale lists: norm = decoder_norm[s],
    mask_embed = mask_embed[s], pooler_src_proj[s], nt_emb_proj[s], nt_lang_emb_proj[s], nt_embed[s].
    """

    def __init__(self, hidden_dim: int, num_queries: int, num_tokens: int, with_nt: bool = True):
        super().__init__()
        self.num_queries = num_queries
        self.norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, hidden_dim, 3)
        self.with_nt = with_nt
        if with_nt:
            self.pooler_src_proj = nn.Linear(hidden_dim, hidden_dim)
            self.nt_emb_proj = nn.Linear(hidden_dim, hidden_dim)
            # Learned weighted pooling over the token axis: MLP 20 -> 20 -> 1.
            self.nt_lang_emb_proj = MLP(num_tokens, num_tokens, 1, 2)
            # The paper says two hidden layers; the code has one: 2Q -> 2Q -> 2.
            self.nt_embed = MLP(2 * num_queries, 2 * num_queries, 2, 2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Queries (Q, B, C) -> mask embeddings E (B, Q, C)."""
        return self.mask_embed(self.norm(x.transpose(0, 1)))

    def mask_logits(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """Main branch only: queries (Q, B, C), features (B, C, H, W) -> logits (B, H, W)."""
        geo = window_geometry(feat.shape[-2], feat.shape[-1], x.shape[0])
        return windowed_logits(self.embed(x), feat, geo)

    def forward(self, x: torch.Tensor, feat: torch.Tensor, lang: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor | None]:
        """x (Q, B, C) queries; feat (B, C, H, W); lang (L, B, C) current language tokens.

        Returns mask logits (B, H, W) and no-target logits (B, 2) (class 1 = no target), or None
        when the NT branch is disabled.
        """
        geo = window_geometry(feat.shape[-2], feat.shape[-1], x.shape[0])
        embed = self.embed(x)
        logits = windowed_logits(embed, feat, geo)
        if not self.with_nt:
            return logits, None
        # Window centroids: average pooling over each window, zero padding included (official).
        pooled = window_means(feat, geo)  # (B, C, n, n)
        centroids = self.pooler_src_proj(pooled.flatten(2).transpose(1, 2))  # (B, Q, C)
        nt_emb = self.nt_emb_proj(embed)  # (B, Q, C)
        sim_vis = (nt_emb * centroids).sum(-1)  # (B, Q)
        sentence = self.nt_lang_emb_proj(lang.permute(1, 2, 0)).squeeze(-1)  # (B, C)
        sim_lang = (nt_emb * sentence.unsqueeze(1)).sum(-1)  # (B, Q)
        nt_logits = self.nt_embed(torch.cat([sim_lang, sim_vis], dim=-1))
        return logits, nt_logits
