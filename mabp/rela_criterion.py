"""The ReLA criterion (henghuiding/ReLA gres_model/modeling/criterion.py).

loss = 5 * [ CE(target mask upsampled to the GT, gt)
             + 0.1 * CE(minimap, GT bilinearly resized to sqrt(Q) x sqrt(Q) then truncated to long)
             + 0.1 * CE(NT, empty) ]

Every CE is the 2-class F.cross_entropy with class weights (0.9, 1.1) and PyTorch's default "mean"
reduction, i.e. the WEIGHT-NORMALISED mean sum_i w_{y_i} l_i / sum_i w_{y_i} (as ReLA calls it; the
MABP criterion instead uses reduction "none" + a plain mean for its NT term).
No Dice, no deep supervision.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

from .config import LossConfig


def minimap_target(gt: torch.Tensor, side: int) -> torch.Tensor:
    """ReLA's minimap labels: (B, S, S) binary GT -> bilinear (align_corners=False) to side x side ->
    `.long()` TRUNCATION -> (B, side*side) in {0, 1}.

    A cell is 1 only if its interpolated value is exactly 1.0, i.e. every GT pixel the bilinear
    sample reads (the 2x2 neighbourhood around the cell centre; no anti-aliasing) is foreground;
    any partial coverage truncates to 0. Kept literally: it is what the baseline trained with.
    """
    small = F.interpolate(gt.float().unsqueeze(1), size=(side, side), mode="bilinear", align_corners=False)
    return small.flatten(1).long()


class ReLACriterion(nn.Module):
    """forward(outputs of the ReLA decoder, gt_masks (B, S, S), no_target (B,) bool) -> dict with
    "loss_mask" (pixel CE), "loss_minimap", "loss_nt" (unweighted terms) and "loss" (the total).

    outputs needs "target_masks" (B, 2, h, w), "minimap" (B, Q, 2) and "nt_logits" [(B, 2)].
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.weight_dict = {"loss_mask": cfg.rela_mask, "loss_minimap": cfg.rela_mask * cfg.rela_minimap,
                            "loss_nt": cfg.rela_mask * cfg.rela_nt}
        self.register_buffer("class_weights", torch.tensor(cfg.nt_class_weights, dtype=torch.float32),
                             persistent=False)

    def forward(self, outputs: Dict[str, object], gt_masks: torch.Tensor,
                no_target: torch.Tensor) -> Dict[str, torch.Tensor]:
        missing = [k for k in ("target_masks", "minimap", "nt_logits") if k not in outputs]
        if missing:
            raise KeyError(f"ReLACriterion needs the ReLA decoder's outputs; missing {missing} "
                           "(build the criterion with mabp.criterion.build_criterion(model.cfg))")
        gt = gt_masks.float()
        w = self.class_weights.to(gt.device)
        target = outputs["target_masks"].float()
        target = F.interpolate(target, size=tuple(gt.shape[-2:]), mode="bilinear", align_corners=False)
        minimap = outputs["minimap"].float()  # (B, Q, 2)
        side = int(round(minimap.shape[1] ** 0.5))
        losses = {
            "loss_mask": F.cross_entropy(target, gt.long(), weight=w),
            "loss_minimap": F.cross_entropy(minimap.permute(0, 2, 1), minimap_target(gt, side), weight=w),
            "loss_nt": F.cross_entropy(outputs["nt_logits"][-1].float(), no_target.long().to(gt.device), weight=w),
        }
        losses["loss"] = sum(self.weight_dict[k] * losses[k] for k in self.weight_dict)
        return losses
