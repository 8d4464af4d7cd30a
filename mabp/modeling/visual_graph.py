"""The language-free visual pass of a late-fusion MABP as one traceable module (the ONNX fast path's
image graph)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .expression_graph import visual_tensors


class VisualGraph(nn.Module):
    """forward(images): (1, 3, S, S) float32 RGB in 0..255 (the predictor's preprocessed image) -> the 4
    maps of `MABP.encode_visual` as a tuple (see ExpressionGraph for their shapes).
    Source: `MABP.encode_visual` (pixel normalisation + the backbone's `forward_visual`), unchanged."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(visual_tensors(self.model.encode_visual(images)))
