"""PWAM: pixel-word attention module (LAVT), the language fusion used after every visual stage.

Parameter names follow the official implementation (`fusion.vis_project.0`, `fusion.image_lang_att.f_key.0`,
...) so that the authors' checkpoint maps one to one.
"""
from __future__ import annotations

import torch
from torch import nn


class SpatialImageLanguageAttention(nn.Module):
    """Each pixel attends over the words (softmax over words, padded words excluded).

    x: (B, HW, C) visual; lang: (B, Ct, L) word features; lang_mask: (B, L, 1) 1 = real token.
    Returns (B, HW, C).
    """

    def __init__(self, v_in_channels: int, l_in_channels: int, key_channels: int, value_channels: int,
                 out_channels: int | None = None, num_heads: int = 1):
        super().__init__()
        out_channels = out_channels or value_channels
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.num_heads = num_heads
        self.f_key = nn.Sequential(nn.Conv1d(l_in_channels, key_channels, 1))
        # InstanceNorm1d (no affine) normalises every channel over the spatial positions.
        self.f_query = nn.Sequential(nn.Conv1d(v_in_channels, key_channels, 1), nn.InstanceNorm1d(key_channels))
        self.f_value = nn.Sequential(nn.Conv1d(l_in_channels, value_channels, 1))
        self.W = nn.Sequential(nn.Conv1d(value_channels, out_channels, 1), nn.InstanceNorm1d(out_channels))

    def forward(self, x: torch.Tensor, lang: torch.Tensor, lang_mask: torch.Tensor) -> torch.Tensor:
        b, hw, _ = x.shape
        mask = lang_mask.permute(0, 2, 1)  # (B, 1, L)
        query = self.f_query(x.permute(0, 2, 1)).permute(0, 2, 1)  # (B, HW, K)
        key = self.f_key(lang) * mask  # (B, K, L)
        value = self.f_value(lang) * mask  # (B, V, L)
        n_l = value.shape[-1]
        h = self.num_heads
        query = query.reshape(b, hw, h, self.key_channels // h).permute(0, 2, 1, 3)
        key = key.reshape(b, h, self.key_channels // h, n_l)
        value = value.reshape(b, h, self.value_channels // h, n_l)
        # LAVT scales by the full key width (not per head); identical for the single head used here.
        sim = torch.matmul(query, key) * self.key_channels ** -0.5  # (B, h, HW, L)
        sim = sim + (1e4 * mask.unsqueeze(1) - 1e4)
        sim = sim.softmax(dim=-1)
        out = torch.matmul(sim, value.permute(0, 1, 3, 2))  # (B, h, HW, V/h)
        out = out.permute(0, 2, 1, 3).reshape(b, hw, self.value_channels)
        out = self.W(out.permute(0, 2, 1)).permute(0, 2, 1)  # (B, HW, C)
        return out


class PWAM(nn.Module):
    """Pixel-word attention fusion: GELU(proj(x)) * attn(x, words), then GELU(proj).

    x: (B, HW, C); lang: (B, Ct, L); lang_mask: (B, L, 1). Returns the multimodal feature (B, HW, C).
    Dropout is 0 in the official model and omitted (the official Sequential keeps an index for it,
    which does not change parameter names).
    """

    def __init__(self, dim: int, v_in_channels: int, l_in_channels: int, key_channels: int,
                 value_channels: int, num_heads: int = 1):
        super().__init__()
        self.vis_project = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU())
        self.image_lang_att = SpatialImageLanguageAttention(
            v_in_channels, l_in_channels, key_channels, value_channels, out_channels=value_channels,
            num_heads=num_heads)
        self.project_mm = nn.Sequential(nn.Conv1d(value_channels, value_channels, 1), nn.GELU())

    def forward(self, x: torch.Tensor, lang: torch.Tensor, lang_mask: torch.Tensor) -> torch.Tensor:
        vis = self.vis_project(x.permute(0, 2, 1))  # (B, C, HW)
        lang_feat = self.image_lang_att(x, lang, lang_mask).permute(0, 2, 1)  # (B, C, HW)
        mm = self.project_mm(vis * lang_feat)
        return mm.permute(0, 2, 1)


class ResidualGate(nn.Sequential):
    """tanh(W2 ReLU(W1 x)), zero-initialised so the fused residual starts closed (LAVT)."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh())
        nn.init.zeros_(self[0].weight)
        nn.init.zeros_(self[2].weight)
