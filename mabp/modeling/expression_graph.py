"""The per-expression part of a late-fusion MABP as one traceable module (the ONNX fast path's graph)."""
from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn


def visual_tensors(visual: Any) -> List[torch.Tensor]:
    """The 4 tensors of `MABP.encode_visual`'s output: a list (EfficientNet-Lite) or a Swin
    `VisualFeatures` (its .feats; its .sizes are constants of the input size)."""
    return list(visual.feats) if hasattr(visual, "feats") else list(visual)


def rebuild_visual(tensors: List[torch.Tensor], like: Any) -> Any:
    """The inverse of `visual_tensors` for an output shaped like `like` (None: a plain list)."""
    return like._replace(feats=list(tensors)) if like is not None else list(tensors)


class ExpressionGraph(nn.Module):
    """Text encoder + PWAM fusion + pixel decoder + MABP decoder on cached visual maps.

    forward(v0, v1, v2, v3, input_ids, attention_mask):
        v0..v3: the 4 language-free visual maps of `MABP.encode_visual`, float32: (1, C_i, S/s_i, S/s_i)
            for EfficientNet-Lite, (1, H_i*W_i, C_i) for Swin (its `VisualFeatures.feats`);
        input_ids, attention_mask: (1, L) int64 from `mabp.tokenizer.TextTokenizer` (padded to L).
    Returns a flat tuple: the mask logits of every head (`pred_masks`, in head order), then the (1, 2)
    no-target logits of the heads that have an NT branch (`nt_logits`, in head order).
    Source: `MABP.encode_text` + `MABP.fuse` + `MABP.forward_features` (mabp/modeling/mabp.py), unchanged.
    """

    def __init__(self, model: nn.Module, visual_like: Any = None):
        super().__init__()
        self.model = model
        self.visual_like = visual_like  # a Swin VisualFeatures whose constant sizes are reused, or None

    def forward(self, v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor,
                input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        lang = self.model.encode_text(input_ids, attention_mask)
        feats = self.model.fuse(lang, attention_mask, visual=rebuild_visual([v0, v1, v2, v3], self.visual_like))
        out = self.model.forward_features(feats, lang, attention_mask)
        return tuple(out["pred_masks"]) + tuple(n for n in out["nt_logits"] if n is not None)
