"""Sample dicts -> batch tensors for MABP.

Every dataset yields the shared sample dict (train.data): image (H, W, 3) uint8 RGB, mask (H, W) bool,
sentence, no_target, target_ids, tags, image_id, ref_id, sent_id, split. The collator squashes each
image/mask to the model's S x S with `train.data.transforms.resize_sample` (bilinear image, nearest mask:
the paper's preprocessing; no augmentation, as in the official mapper) and tokenises the sentences to
the fixed 20 tokens.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import numpy as np
import torch

from mabp.tokenizer import TextTokenizer
from train.data.transforms import resize_sample, to_tensor_image

REQUIRED_KEYS = ("image", "mask", "sentence", "no_target")


def _check_sample(s: Mapping[str, Any], i: int) -> None:
    """Clear errors for malformed samples (they would otherwise fail deep inside cv2 or the model)."""
    if not isinstance(s, Mapping):
        raise TypeError(f"sample {i}: expected a dict, got {type(s).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in s]
    if missing:
        raise KeyError(f"sample {i} lacks {missing} (sample keys: {sorted(s)})")
    img, mask = s["image"], s["mask"]
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        desc = f"{type(img).__name__} {getattr(img, 'shape', '')} {getattr(img, 'dtype', '')}"
        raise ValueError(f"sample {i}: image must be an (H, W, 3) uint8 RGB array, got {desc}")
    if not isinstance(mask, np.ndarray) or mask.shape != img.shape[:2]:
        raise ValueError(f"sample {i}: mask must be an (H, W) array matching the image {img.shape[:2]}, "
                         f"got {getattr(mask, 'shape', type(mask).__name__)}")
    if not isinstance(s["sentence"], str):
        raise TypeError(f"sample {i}: sentence must be a str, got {type(s['sentence']).__name__}")
    if bool(s["no_target"]) and np.any(mask):
        raise ValueError(f"sample {i} (ref {s.get('ref_id')}): no_target=True but its mask has "
                         f"{int(np.count_nonzero(mask))} positive pixels")


def sample_id(s: Mapping[str, Any]) -> str:
    """A readable identifier of one (ref, sentence) pair, kept in the metric meters."""
    return f"{s.get('split', '?')}:{s.get('ref_id', '?')}:{s.get('sent_id', '?')}"


class Collator:
    """Callable: list of sample dicts -> batch dict.

    Batch keys:
      images (B, 3, S, S) float32 in 0..255, input_ids (B, L) long, attention_mask (B, L) long,
      gt_masks (B, S, S) float32 in {0, 1}, no_target (B,) bool,
      sentences, tags, image_ids, image_keys, ref_ids, sent_ids, sample_ids (lists), truncated (list of bool).
    """

    def __init__(self, tokenizer: TextTokenizer, image_size: int, resize_mode: str = "squash"):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.resize_mode = resize_mode

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty batch")
        size = self.image_size
        images, masks = [], []
        for i, s in enumerate(samples):
            _check_sample(s, i)
            img, mask = s["image"], np.asarray(s["mask"]).astype(bool)
            if img.shape[:2] != (size, size):
                img, mask, _ = resize_sample(img, mask, size, self.resize_mode)
            images.append(to_tensor_image(img))
            masks.append(torch.from_numpy(np.ascontiguousarray(mask)))
        tok = self.tokenizer([s["sentence"] for s in samples])
        return {
            "images": torch.stack(images),
            "input_ids": tok.input_ids,
            "attention_mask": tok.attention_mask,
            "gt_masks": torch.stack(masks).float(),
            "no_target": torch.tensor([bool(s["no_target"]) for s in samples], dtype=torch.bool),
            "sentences": [s["sentence"] for s in samples],
            "tags": [dict(s.get("tags") or {}) for s in samples],
            "image_ids": [s.get("image_id") for s in samples],
            # (split, image id): what train.visual_cache keys an image's visual maps by (None: no id)
            "image_keys": [None if s.get("image_id") is None else (s.get("split"), s.get("image_id"))
                           for s in samples],
            "ref_ids": [s.get("ref_id") for s in samples],
            "sent_ids": [s.get("sent_id") for s in samples],
            "sample_ids": [sample_id(s) for s in samples],
            "truncated": list(tok.truncated),
        }


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Move the tensor entries of a batch to `device` (lists stay on the host)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


__all__ = ["Collator", "to_device", "sample_id"]
