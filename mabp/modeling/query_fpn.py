"""Top-down FPN over the query grids of the three scales (official MABP decoder's mask assembly)."""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.nn import functional as F


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill as detectron2 does it: kaiming_uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


class QueryFPN(nn.Module):
    """Fuses the saved query grids Q0 (n0 x n0), Q1 (2n0), Q2 (4n0) top-down into the final queries.

    y0 = ReLU(conv3(lat0(Q0) + Q0)); y_k = ReLU(conv3(lat_k(Q_k) + up(y_{k-1}))), bilinear up.
    Convs have no bias and no norm. Input: list of (B, C, n_k, n_k). Output: (B, C, n_last, n_last).
    """

    def __init__(self, hidden_dim: int, num_levels: int = 3):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(hidden_dim, hidden_dim, 1, bias=False) for _ in range(num_levels))
        self.output_convs = nn.ModuleList(
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False) for _ in range(num_levels))
        for conv in list(self.lateral_convs) + list(self.output_convs):
            c2_xavier_fill(conv)

    def forward(self, grids: List[torch.Tensor]) -> torch.Tensor:
        y = None
        for k, grid in enumerate(grids):
            lateral = self.lateral_convs[k](grid)
            # The coarsest level adds its own input (there is nothing above it to upsample).
            top = grid if y is None else F.interpolate(y, size=grid.shape[-2:], mode="bilinear", align_corners=False)
            y = F.relu(self.output_convs[k](lateral + top))
        return y
