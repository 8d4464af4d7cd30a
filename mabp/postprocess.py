"""Inference post-processing (official MABP ReferEvaluator / inference): threshold, no-target rule, optional min-pixel rule,
resize back to the original image size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from .mask_refine import GuidedRefine, guided_refine

NT_RULES = ("first", "last", "any")


def nt_probabilities(nt_logits: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """(heads, B) probability of class 1 (no target) per head; heads without an NT branch skipped."""
    probs = [logit.float().softmax(-1)[:, 1] for logit in nt_logits if logit is not None]
    if not probs:
        raise ValueError("the model has no no-target head; use min_pixels > 0 to decide emptiness")
    return torch.stack(probs)


def decide_no_target(nt_logits: Sequence[Optional[torch.Tensor]], rule: str = "any",
                     threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-head votes combined by rule. Returns (decision bool (B,), probability (B,)).

    A head votes "no target" on argmax == 1 (threshold 0.5, the official code's decision, exactly) or,
    for another threshold in (0, 1), when its no-target probability exceeds it.
    "first": head 0 only (what the paper's numbers used); "last": the final head; "any": OR over all
    heads (the official README's result). The probability reported is the one that decides: head 0,
    the last head, or the max over heads. Raises ValueError for an unknown rule or a threshold outside
    (0, 1).
    """
    if rule not in NT_RULES:
        raise ValueError(f"unknown no-target rule {rule!r}; expected one of {NT_RULES}")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"the no-target threshold must be between 0 and 1, got {threshold}")
    probs = nt_probabilities(nt_logits)
    logits = [logit for logit in nt_logits if logit is not None]
    if float(threshold) == 0.5:  # argmax, not probs > 0.5: softmax rounding must not move a tie
        votes = torch.stack([logit.argmax(-1) == 1 for logit in logits])  # (heads, B)
    else:
        votes = probs > float(threshold)
    if rule == "first":
        return votes[0], probs[0]
    if rule == "last":
        return votes[-1], probs[-1]
    return votes.any(0), probs.max(0).values


def binarize_masks(pred_masks: List[torch.Tensor], out_size: Tuple[int, int], threshold: float = 0.5,
                   refine: Optional[GuidedRefine] = None, guidance: Optional[torch.Tensor] = None,
                   model_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The final head's logits (B, h, w) -> bilinear (align_corners=False) to out_size -> sigmoid ->
    optionally the guided filter with `guidance` ((B, 3, H, W) in 0..255 at out_size; mabp/mask_refine.py)
    -> > threshold. Returns (B, H, W) bool, not emptied for no target. Raises ValueError when `refine` is
    set without guidance."""
    final = pred_masks[-1].float()
    probs = F.interpolate(final.unsqueeze(1), size=tuple(out_size), mode="bilinear", align_corners=False).squeeze(1)
    if refine is None:
        return probs.sigmoid() > threshold
    if guidance is None:
        raise ValueError("mask refinement needs the image (guidance) at the output size")
    return guided_refine(probs.sigmoid(), guidance.to(final.device), refine, tuple(model_size or out_size)) > threshold


@dataclass
class PostProcessed:
    masks: torch.Tensor  # (B, H, W) bool at the requested size, emptied when no_target
    raw_masks: torch.Tensor  # (B, H, W) bool, not emptied (what the official evaluator scores)
    no_target: torch.Tensor  # (B,) bool
    nt_prob: torch.Tensor  # (B,) float


def postprocess(pred_masks: List[torch.Tensor], nt_logits: Sequence[Optional[torch.Tensor]],
                out_size: Tuple[int, int], threshold: float = 0.5, nt_rule: str = "any",
                min_pixels: int = 0, model_size: Optional[Tuple[int, int]] = None,
                nt_threshold: float = 0.5, refine: Optional[GuidedRefine] = None,
                guidance: Optional[torch.Tensor] = None) -> PostProcessed:
    """Final logits (B, h, w) -> bilinear (align_corners=False) to out_size -> sigmoid > threshold.

    `refine` (None: the official path) passes the upsampled probabilities through the guided filter
    with `guidance`, the image at out_size as (B, 3, H, W) in 0..255 (mabp/mask_refine.py), before the
    threshold. Raises ValueError when refine is set without guidance.

    The no-target decision: `decide_no_target(nt_logits, nt_rule, nt_threshold)`.

    min_pixels > 0 applies the paper-only rule: a mask with fewer positive pixels (counted at the
    model's input size `model_size`, 480x480 in the paper) is called empty.
    """
    final = pred_masks[-1].float()
    raw = binarize_masks(pred_masks, out_size, threshold, refine, guidance, model_size)
    has_nt = any(logit is not None for logit in nt_logits)
    if has_nt:
        no_target, nt_prob = decide_no_target(nt_logits, nt_rule, nt_threshold)
    else:
        no_target = torch.zeros(final.shape[0], dtype=torch.bool, device=final.device)
        nt_prob = torch.zeros(final.shape[0], device=final.device)
    if min_pixels > 0:
        size = model_size or tuple(out_size)
        at_model = F.interpolate(final.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)
        small = (at_model.squeeze(1).sigmoid() > threshold).flatten(1).sum(-1) < min_pixels
        no_target = no_target | small
        if not has_nt:
            nt_prob = small.float()
    masks = raw & ~no_target[:, None, None]
    return PostProcessed(masks=masks, raw_masks=raw, no_target=no_target, nt_prob=nt_prob)
