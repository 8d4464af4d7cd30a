"""Mask2Former `MSDeformAttnPixelDecoder` as used by MABP (identical to ReLA's).

A deformable-transformer encoder refines res5/res4/res3 jointly; one FPN step then adds res2, and a
1x1 conv produces the per-pixel mask features at 1/4 resolution. Parameter names match the official
checkpoint with the prefix "sem_seg_head.pixel_decoder." removed.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PixelDecoderConfig
from .deform_encoder import MSDeformAttnTransformerEncoderOnly
from .position_encoding import PositionEmbeddingSine

# Transformer levels, coarsest first: this order defines input_proj.{0,1,2} and level_embed rows.
_TRANSFORMER_FEATURES = ("res5", "res4", "res3")


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2 "XavierFill" as in fvcore: kaiming_uniform_(a=1) weight, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Conv2dNorm(nn.Conv2d):
    """Conv2d followed by an optional norm and activation (detectron2 `layers.Conv2d` semantics).

    Subclassing Conv2d keeps the conv parameters at the top level (`name.weight`) and the norm under
    `name.norm.*`, which is how the official checkpoint names them.
    Input (B, C_in, H, W) -> (B, C_out, H', W').
    """

    def __init__(
        self,
        *args,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale deformable-attention pixel decoder.

    Args:
        cfg: PixelDecoderConfig (conv_dim, mask_dim, num_layers, num_heads, num_points, ffn_dim,
            dropout, num_groups).
        in_channels: {"res2": c2, "res3": c3, "res4": c4, "res5": c5}.

    forward(features) with features[resK] of shape (B, c_K, H/2^K, W/2^K) returns
        mask_features: (B, mask_dim, H/4, W/4)
        multi_scale_features: [(B, conv_dim, H/32, W/32), (B, conv_dim, H/16, W/16),
                               (B, conv_dim, H/8, W/8)]
    """

    def __init__(self, cfg: PixelDecoderConfig, in_channels: Dict[str, int]):
        super().__init__()
        conv_dim, groups = cfg.conv_dim, cfg.num_groups
        self.conv_dim = conv_dim
        self.mask_dim = cfg.mask_dim

        # Registration order mirrors the official module so state_dict keys come out in its order.
        self.input_proj = nn.ModuleList()
        for name in _TRANSFORMER_FEATURES:
            proj = nn.Sequential(nn.Conv2d(in_channels[name], conv_dim, kernel_size=1), nn.GroupNorm(groups, conv_dim))
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=cfg.num_heads,
            num_encoder_layers=cfg.num_layers,
            dim_feedforward=cfg.ffn_dim,
            dropout=cfg.dropout,
            num_feature_levels=len(_TRANSFORMER_FEATURES),
            enc_n_points=cfg.num_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_features = nn.Conv2d(conv_dim, cfg.mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)

        # Transformer's finest stride is 8, the common stride 4: exactly one extra FPN level (res2).
        # Norm layers carry the bias, so the convs have none (official: bias = norm == "").
        self.adapter_1 = Conv2dNorm(
            in_channels["res2"], conv_dim, kernel_size=1, bias=False, norm=nn.GroupNorm(groups, conv_dim)
        )
        self.layer_1 = Conv2dNorm(
            conv_dim,
            conv_dim,
            kernel_size=3,
            padding=1,
            bias=False,
            norm=nn.GroupNorm(groups, conv_dim),
            activation=F.relu,
        )
        c2_xavier_fill(self.adapter_1)
        c2_xavier_fill(self.layer_1)

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """See class docstring for shapes. Always computes in float32."""
        device_type = features["res5"].device.type
        # The official decoder forces fp32 (deformable sampling is not half-precision safe).
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for idx, name in enumerate(_TRANSFORMER_FEATURES):
                x = features[name].float()
                srcs.append(self.input_proj[idx](x))
                # The sine encoding only depends on the map size; computed from the raw feature map.
                pos.append(self.pe_layer(x))

            memory, spatial_shapes, _ = self.transformer(srcs, pos)
            b = memory.shape[0]
            shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
            chunks = memory.split([h * w for h, w in shapes], dim=1)
            # Back to maps (B, conv_dim, H_l, W_l), coarsest first: res5, res4, res3 levels.
            out = [z.transpose(1, 2).reshape(b, -1, h, w) for z, (h, w) in zip(chunks, shapes)]

            x2 = features["res2"].float()
            lateral = self.adapter_1(x2)
            y = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            y = self.layer_1(y)

            mask_features = self.mask_features(y)
            multi_scale_features = out[:3]
        return mask_features, multi_scale_features
