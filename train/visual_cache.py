"""One visual pass per image during training, when the visual stages are frozen and language-free.

`lite` trains with late fusion and frozen ImageNet EfficientNet-Lite0 stages (`optim.freeze:
[backbone.backbone.]`): the stages' output for an image never changes during the run. SynthGRES gives
4-8 expressions per image and an epoch's permutation spreads them over the epoch, so most samples
reuse an image that an earlier step already encoded. This cache keeps the 4 stage maps per image
(keyed by split and image id) for the most recently used images and runs the stages only for the
others, one image at a time, so a feature is the same tensor whatever batch first met its image:
the training step stays a pure function of the sampled batch and a resumed run (empty cache)
computes exactly what the uninterrupted one did.

On the lite recipe the stages cost ~0.46 s CPU per batch of 8 at 320x320 on one core (~9 % of a step);
with 6 expressions per image about 5 of 6 samples hit the cache (benchmarks/train_throughput.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, List, Optional, Sequence

import torch
from torch import nn


def cacheable_visual_pass(model: nn.Module) -> bool:
    """True when the visual stages of `model` see no language (late fusion / closed gates), have no
    trainable parameter and no train-mode BatchNorm: then their output is a fixed function of the image."""
    backbone = getattr(model, "backbone", None)
    stages = getattr(backbone, "backbone", None)
    if stages is None or not model.visual_cacheable():
        return False
    if any(p.requires_grad for p in stages.parameters()):
        return False
    # Train-mode BatchNorm would use batch statistics (and update its running ones).
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in stages.modules())


class VisualFeatureCache:
    """LRU cache of per-image visual maps.

    Args:
        max_bytes: memory budget for the cached maps (bytes); the least recently used images are
            dropped beyond it. 0 disables caching (every call runs the stages).

    `features(model, images, keys)` -> the 4 maps (B, C_i, H_i, W_i) for a batch: images (B, 3, S, S)
    float 0..255, keys one hashable per image (None = do not cache that image).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[Hashable, List[torch.Tensor]]" = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @torch.no_grad()
    def features(self, model: nn.Module, images: torch.Tensor, keys: Sequence[Optional[Hashable]]) -> List[torch.Tensor]:
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} cache keys for {images.shape[0]} images")
        per_image: List[List[torch.Tensor]] = []
        for i, key in enumerate(keys):
            maps = self._items.get(key) if key is not None else None
            if maps is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                # One image at a time: the result must not depend on which batch met the image first.
                maps = [m[0] for m in model.encode_visual(images[i:i + 1])]
                if key is not None:
                    self._put(key, maps)
            per_image.append(maps)
        return [torch.stack(level) for level in zip(*per_image)]

    def _put(self, key: Hashable, maps: List[torch.Tensor]) -> None:
        size = sum(m.numel() * m.element_size() for m in maps)
        if size > self.max_bytes:
            return
        self._items[key] = maps
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= sum(m.numel() * m.element_size() for m in old)


__all__ = ["VisualFeatureCache", "cacheable_visual_pass"]
