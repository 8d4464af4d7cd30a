"""The MABP criterion (paper Eq. 2-4; official gres_model/modeling/criterion.py).

total = 5 * BCE_final + 5 * Dice_final + 0.5 * mean_s BCE_s + 0.5 * mean_s Dice_s + 2.5 * mean_heads CE_nt

- BCE: binary cross-entropy with logits, pos_weight 1.1, each pixel weighted by a detached
  entropy weight w(p) = 2 * max(H2(p), 0.5) - 0.5 in [0.5, 1.5] (confident pixels 0.5, uncertain up to 1.5).
- Dice: 1 - (2 * sum(p t) + 1) / (sum(p) + sum(t) + 1) per sample (smooth 1), applied to no-target
  samples too (pushes their masks to zero).
- The final head is compared at full GT size (logits bilinearly upsampled); intermediate heads with
  the GT bilinearly DOWN-sampled (soft targets; the paper says nearest, the code uses bilinear).
- No-target CE over (B, 2) logits, class weights (0.9 target, 1.1 no-target), reduction none + mean.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from .config import LossConfig, MABPConfig
from .variants import supervised_heads


def entropy_weight(logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Detached per-pixel weight 2 * max(H2(sigmoid(x)), 0.5) - 0.5, H2 in bits."""
    p = logits.detach().sigmoid()
    ent = -(p * torch.log2(p + eps) + (1 - p) * torch.log2(1 - p + eps))
    return 2 * ent.clamp(min=0.5) - 0.5


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.1,
                 entropy_weighting: bool = True) -> torch.Tensor:
    """Mean over all pixels and the batch. logits, target: (B, H, W); target in [0, 1]."""
    pw = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    if entropy_weighting:
        loss = loss * entropy_weight(logits)
    return loss.mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-sample Dice with smoothing, averaged over the batch. (B, H, W) each."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    num = 2 * (p * t).sum(-1) + smooth
    den = p.sum(-1) + t.sum(-1) + smooth
    return (1 - num / den).mean()


def resize_logits(logits: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(logits.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def soft_downsample(gt: torch.Tensor, size) -> torch.Tensor:
    """Bilinear (align_corners=False) down-sampling of a binary GT: soft targets in [0, 1]."""
    return F.interpolate(gt.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


class MABPCriterion(nn.Module):
    """Deep-supervision loss over the decoder outputs.

    Args:
      cfg: weights and constants.
      main_heads: indices of the intermediate heads supervised on masks (default all but the last;
        the final head is always supervised). Table VI's "last head only" is `main_heads=[]`.
      nt_heads: indices of heads whose NT logits are supervised (default all that produce them).

    forward(outputs, gt_masks (B, S, S) float/bool, no_target (B,) bool) -> dict with every term,
    weighted terms and "loss".
    """

    def __init__(self, cfg: LossConfig, main_heads: Optional[Sequence[int]] = None,
                 nt_heads: Optional[Sequence[int]] = None):
        super().__init__()
        self.cfg = cfg
        self.main_heads = None if main_heads is None else list(main_heads)
        self.nt_heads = None if nt_heads is None else list(nt_heads)
        self.weight_dict = {
            "loss_ce_final": cfg.ce_final,
            "loss_dice_final": cfg.dice_final,
            "loss_ce_inter": cfg.ce_intermediate,
            "loss_dice_inter": cfg.dice_intermediate,
            "loss_nt": cfg.ce_nt,
        }
        self.register_buffer("nt_class_weights", torch.tensor(cfg.nt_class_weights, dtype=torch.float32),
                             persistent=False)

    def forward(self, outputs: Dict[str, List[torch.Tensor]], gt_masks: torch.Tensor,
                no_target: torch.Tensor) -> Dict[str, torch.Tensor]:
        pred_masks = outputs["pred_masks"]
        nt_logits = outputs["nt_logits"]
        gt = gt_masks.float()
        c = self.cfg
        final = resize_logits(pred_masks[-1], gt.shape[-2:])
        losses = {
            "loss_ce_final": weighted_bce(final, gt, c.pos_weight, c.entropy_weighting),
            "loss_dice_final": dice_loss(final, gt),
        }
        inter = self.main_heads if self.main_heads is not None else list(range(len(pred_masks) - 1))
        ce_terms, dice_terms = [], []
        for s in inter:
            target = soft_downsample(gt, pred_masks[s].shape[-2:])
            ce_terms.append(weighted_bce(pred_masks[s], target, c.pos_weight, c.entropy_weighting))
            dice_terms.append(dice_loss(pred_masks[s], target))
        zero = final.new_zeros(())
        losses["loss_ce_inter"] = torch.stack(ce_terms).mean() if ce_terms else zero
        losses["loss_dice_inter"] = torch.stack(dice_terms).mean() if dice_terms else zero

        heads = self.nt_heads if self.nt_heads is not None else [i for i, n in enumerate(nt_logits) if n is not None]
        labels = no_target.long().to(final.device)
        nt_terms = []
        for i in heads:
            ce = F.cross_entropy(nt_logits[i].float(), labels, weight=self.nt_class_weights, reduction="none")
            nt_terms.append(ce.mean())
        losses["loss_nt"] = torch.stack(nt_terms).mean() if nt_terms else zero
        losses["loss"] = sum(self.weight_dict[k] * losses[k] for k in self.weight_dict)
        return losses


def build_criterion(cfg: Union[MABPConfig, dict]) -> nn.Module:
    """The criterion that trains a model built from `cfg` (pass `model.cfg`).

    arch "mabp": MABPCriterion with the supervised heads derived from the ablation switches
    (decoder.main_supervision -> main_heads, decoder.nt_supervision -> nt_heads; defaults = all heads,
    the official loss). arch "rela": ReLACriterion (mabp/rela_criterion.py).
    Both take forward(outputs, gt_masks (B, S, S), no_target (B,)) and return a dict with "loss".
    """
    if isinstance(cfg, dict):
        cfg = MABPConfig.from_dict(cfg)
    if cfg.arch == "rela":
        from .rela_criterion import ReLACriterion  # imported here: rela_criterion is a sibling module

        return ReLACriterion(cfg.loss)
    main_heads, nt_heads = supervised_heads(cfg.decoder)
    return MABPCriterion(cfg.loss, main_heads=main_heads, nt_heads=nt_heads)
