"""Horizontal-flip test-time augmentation (TTA) for a referring segmenter.

A GRES model is asked twice: once on the image with the expression, once on the mirrored image with the
expression's left/right words swapped ("the cup to the left of the dog" becomes "the cup to the right of
the dog"), which refers to the mirrored targets. The second answer is mirrored back and the two are
averaged in probability space: each mask pixel's sigmoid probability and each head's no-target softmax.

This is an inference option of this project, not part of MABP (the paper and the official code evaluate one
pass). It is off by default (`InferenceConfig.flip_tta`), so the `paper` preset's outputs are unchanged.
SynthGRES's photo world mirrors every stamp and background at random (train/data/synthgres/photo_scene.py),
so there the mirrored question is as likely as the original one; the shapes world's eight shapes are
mirror-symmetric. Measured on the shipped checkpoint it is not a uniform gain (its REPORT.md).

Cost: two passes of everything after the tokenizer (two visual encodings per image when features are cached).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

# Whole words that change meaning under a horizontal mirror. A word the vocabulary splits into pieces
# ("leftmost" -> "left" "##most" in BERT's) is mirrored through its first piece.
MIRROR_WORDS: Tuple[Tuple[str, str], ...] = (("left", "right"), ("leftmost", "rightmost"),
                                              ("lefthand", "righthand"))


def mirror_id_pairs(vocab: Dict[str, int], words: Sequence[Tuple[str, str]] = MIRROR_WORDS) -> List[Tuple[int, int]]:
    """The (id, id) pairs of `words` that are both single tokens of `vocab` (token -> id).

    Raises ValueError when "left" or "right" is not a single token of the vocabulary: flipping without
    swapping them would ask the mirrored image the wrong question.
    """
    if "left" not in vocab or "right" not in vocab:
        raise ValueError("flip TTA needs 'left' and 'right' as single tokens of the text vocabulary; "
                         "this tokenizer does not have them, so turn flip_tta off")
    return [(vocab[a], vocab[b]) for a, b in words if a in vocab and b in vocab]


def mirror_token_ids(input_ids: torch.Tensor, pairs: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """(B, L) int64 token ids -> a copy with every id of each pair replaced by its partner."""
    out = input_ids.clone()
    for a, b in pairs:
        out[input_ids == a] = b
        out[input_ids == b] = a
    return out


def merge_flipped(out: Dict[str, list], out_mirrored: Dict[str, list], eps: float = 1e-6) -> Dict[str, list]:
    """Average a model output with the output on the mirrored input, mirrored back.

    Args:
        out, out_mirrored: {"pred_masks": per head (B, h, w) logits, "nt_logits": per head (B, 2) logits
            (class 1 = no target) or None}, as returned by `MABP.forward` / `forward_features`.
        eps: probabilities are clamped to [eps, 1 - eps] before the logit, so the result stays finite.
    Returns:
        The same structure and dtypes: mask logits = logit(mean of the two sigmoids); NT logits = log of
        the mean of the two softmaxes (their softmax is that mean exactly). Other keys come from `out`.
    Raises:
        ValueError if the two outputs have different numbers of heads or NT branches.
    """
    masks, masks_m = out["pred_masks"], out_mirrored["pred_masks"]
    nts, nts_m = out["nt_logits"], out_mirrored["nt_logits"]
    if len(masks) != len(masks_m) or len(nts) != len(nts_m) or \
            any((a is None) != (b is None) for a, b in zip(nts, nts_m)):
        raise ValueError("the two outputs come from different models (heads or NT branches differ)")
    merged_masks = []
    for a, b in zip(masks, masks_m):
        p = (a.float().sigmoid() + b.float().flip(-1).sigmoid()) / 2
        merged_masks.append(torch.logit(p, eps=eps).to(a.dtype))
    merged_nt: List[Optional[torch.Tensor]] = []
    for a, b in zip(nts, nts_m):
        if a is None:
            merged_nt.append(None)
            continue
        p = (a.float().softmax(-1) + b.float().softmax(-1)) / 2
        merged_nt.append(p.log().to(a.dtype))
    merged = dict(out)
    merged["pred_masks"], merged["nt_logits"] = merged_masks, merged_nt
    return merged


class FlipTTA(torch.nn.Module):
    """Wraps a model `(images (B, 3, S, S) float 0..255, input_ids (B, L), attention_mask (B, L)) -> outputs`
    so that its forward is the flip-averaged answer (`merge_flipped`). Exposes the wrapped model's `cfg`,
    so evaluation code that reads `model.cfg` works unchanged.

    Args:
        model: an `MABP` (or any module with that forward and a `cfg`).
        pairs: token-id pairs to swap (`mirror_id_pairs(tokenizer vocab)`).
    """

    def __init__(self, model: torch.nn.Module, pairs: Sequence[Tuple[int, int]]):
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.pairs = [(int(a), int(b)) for a, b in pairs]

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "FlipTTA":
        """The wrapper with the pairs of `model`'s own vocabulary (`model.cfg.text`)."""
        from .tokenizer import TextTokenizer

        return cls(model, mirror_id_pairs(TextTokenizer(model.cfg.text).tokenizer.get_vocab()))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> Dict[str, list]:
        out = self.model(images, input_ids, attention_mask)
        out_m = self.model(images.flip(-1), mirror_token_ids(input_ids, self.pairs), attention_mask)
        return merge_flipped(out, out_m)
