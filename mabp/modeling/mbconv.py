"""MBConv block of EfficientNet-Lite (inverted residual, no squeeze-excite, ReLU6) and TF "SAME" padding.

The EfficientNet-Lite ImageNet weights we use were converted from the official TensorFlow checkpoints,
where every convolution uses padding="SAME". For a stride-2 convolution on an even-sized input, TF pads
*asymmetrically* (nothing on the top/left, the extra row/column on the bottom/right), which PyTorch's
symmetric `padding=` cannot express. Using symmetric padding would shift every stride-2 feature map by
half a pixel relative to what the weights were trained with, so we pad explicitly with `tf_same_pad`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# TF defaults used to train EfficientNet(-Lite): BN decay 0.99 (= PyTorch momentum 0.01), epsilon 1e-3.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def tf_same_pad(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) like TF padding="SAME" so a conv with `stride` gives ceil(H/stride) outputs.

    The total padding is split with the smaller half before and the larger half after (TF convention).
    """
    ih, iw = x.shape[-2:]
    pad_h = max((math.ceil(ih / stride) - 1) * stride + kernel_size - ih, 0)
    pad_w = max((math.ceil(iw / stride) - 1) * stride + kernel_size - iw, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand + BN + ReLU6] -> kxk depthwise + BN + ReLU6 -> 1x1 project + BN (+ skip).

    Parameter names (`expand_conv`, `bn0`, `depthwise_conv`, `bn1`, `project_conv`, `bn2`) mirror the
    converted checkpoint (`_blocks.N._expand_conv`, ...) minus the leading underscores.

    x: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.expand_ratio = expand_ratio
        mid = in_channels * expand_ratio
        if expand_ratio != 1:
            self.expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self.bn0 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        # padding=0: the TF "SAME" padding is applied explicitly in forward (see module docstring).
        self.depthwise_conv = nn.Conv2d(mid, mid, kernel_size, stride=stride, groups=mid, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM, eps=BN_EPS)
        # ReLU6 instead of swish: the Lite variants use it for quantisation friendliness.
        self.act = nn.ReLU6()
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand_ratio != 1:
            h = self.act(self.bn0(self.expand_conv(h)))
        h = tf_same_pad(h, self.kernel_size, self.stride)
        h = self.act(self.bn1(self.depthwise_conv(h)))
        # Linear bottleneck: no activation after the projection (MobileNetV2).
        h = self.bn2(self.project_conv(h))
        if self.use_skip:
            # Stochastic depth (drop-connect) of the ImageNet training is deliberately not used here.
            h = h + x
        return h
