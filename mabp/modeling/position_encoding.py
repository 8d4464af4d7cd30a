"""Sine positional encoding for 2-D feature maps (DETR / Mask2Former style)."""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding.

    For a map (B, C, H, W) returns (B, 2 * num_pos_feats, H, W): the y features first, then the x
    features, each interleaving sin/cos of the same frequency. With `normalize=True` the cumulative
    coordinates 1..H are divided by H (no -0.5 shift: the Mask2Former variant, which the official
    pixel decoder and transformer decoder both use) and scaled to [0, 2*pi].
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi
        # The encoding depends only on (H, W): computed once per size and shared by the batch (a
        # predictor answering expressions would otherwise rebuild it ~3 ms per call). Inference-mode
        # tensors cannot enter autograd, so the mode is part of the key. Not a buffer: no state_dict entry.
        self._cache: dict = {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2 * num_pos_feats, H, W), a read-only view shared by the batch."""
        b, _, h, w = x.shape
        key = (h, w, x.device, x.dtype, torch.is_inference_mode_enabled())
        pos = self._cache.get(key)
        if pos is None:
            if len(self._cache) >= 16:
                self._cache.clear()
            pos = self._cache[key] = self._encode(h, w, x.device).to(x.dtype)
        return pos.expand(b, -1, -1, -1)

    def _encode(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(1, 2 * num_pos_feats, H, W) float32."""
        ones = torch.ones((1, h, w), device=device, dtype=torch.float32)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).contiguous()
