"""The criterion against hand-computed values, and post-processing rules."""
import math

import pytest
import torch

from mabp.config import LossConfig
from mabp.criterion import MABPCriterion, dice_loss, entropy_weight, soft_downsample, weighted_bce
from mabp.postprocess import decide_no_target, postprocess


def test_entropy_weight_range_and_values():
    # p = 0.5 -> H2 = 1 bit -> w = 1.5 ; p ~ 1 -> H2 ~ 0 -> clamped 0.5 -> w = 0.5
    w = entropy_weight(torch.tensor([0.0, 20.0, -20.0]))
    torch.testing.assert_close(w, torch.tensor([1.5, 0.5, 0.5]), atol=1e-4, rtol=0)
    # p = sigmoid(1) = 0.731 -> H2 = 0.8399 -> w = 1.1798
    p = 1 / (1 + math.exp(-1))
    h2 = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert entropy_weight(torch.tensor([1.0])).item() == pytest.approx(2 * h2 - 0.5, abs=1e-5)


def test_weighted_bce_hand_computed():
    x = torch.tensor([[[0.0, 2.0]]])  # (1, 1, 2)
    t = torch.tensor([[[1.0, 0.0]]])
    # pixel 0: target 1, pos_weight 1.1: 1.1 * log(2) ; weight 1.5 (p = .5)
    # pixel 1: target 0: log(1 + e^2) ; p = sigmoid(2) = .8808, H2 = .5284 -> w = 2*.5284-.5 = .5568
    p1 = 1 / (1 + math.exp(-2))
    h2 = -(p1 * math.log2(p1) + (1 - p1) * math.log2(1 - p1))
    expected = (1.5 * 1.1 * math.log(2) + (2 * h2 - 0.5) * math.log(1 + math.exp(2))) / 2
    assert weighted_bce(x, t).item() == pytest.approx(expected, rel=1e-5)
    # without entropy weighting: plain pos-weighted BCE
    plain = (1.1 * math.log(2) + math.log(1 + math.exp(2))) / 2
    assert weighted_bce(x, t, entropy_weighting=False).item() == pytest.approx(plain, rel=1e-5)


def test_dice_hand_computed_and_no_target_sample():
    x = torch.tensor([[[0.0, 0.0]], [[-50.0, -50.0]]])  # sample 0: p = .5,.5 ; sample 1: p ~ 0
    t = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    d0 = 1 - (2 * 0.5 + 1) / (1.0 + 1 + 1)  # = 1/3
    d1 = 1 - 1 / (0 + 0 + 1)  # ~ 0 for an empty prediction on an empty GT
    assert dice_loss(x, t).item() == pytest.approx((d0 + d1) / 2, abs=1e-6)


def test_soft_downsample_is_bilinear():
    gt = torch.zeros(1, 4, 4)
    gt[0, :, :2] = 1  # left half
    small = soft_downsample(gt, (2, 2))
    torch.testing.assert_close(small, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
    small = soft_downsample(gt, (3, 3))  # non-integer ratio -> soft values
    assert 0 < small[0, 0, 1] < 1


def test_criterion_total_is_weighted_sum_and_terms_match():
    torch.manual_seed(0)
    b, s = 2, 32
    outputs = {"pred_masks": [torch.randn(b, 1, 1), torch.randn(b, 2, 2), torch.randn(b, 4, 4), torch.randn(b, 8, 8)],
               "nt_logits": [torch.randn(b, 2) for _ in range(4)]}
    gt = torch.zeros(b, s, s)
    gt[0, 4:20, 4:20] = 1
    nt = torch.tensor([False, True])
    crit = MABPCriterion(LossConfig())
    losses = crit(outputs, gt, nt)
    final = torch.nn.functional.interpolate(outputs["pred_masks"][-1][:, None], size=(s, s), mode="bilinear",
                                            align_corners=False)[:, 0]
    assert losses["loss_ce_final"].item() == pytest.approx(weighted_bce(final, gt).item(), rel=1e-6)
    w = torch.tensor([0.9, 1.1])
    ce = [torch.nn.functional.cross_entropy(n, nt.long(), weight=w, reduction="none").mean() for n in outputs["nt_logits"]]
    assert losses["loss_nt"].item() == pytest.approx(torch.stack(ce).mean().item(), rel=1e-6)
    # the reduction is "none" + plain mean, not the weight-normalised mean of reduction="mean"
    # (they differ when the class weights of the batch do not sum to the batch size)
    logits3, labels3 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1, 0])
    plain = torch.nn.functional.cross_entropy(logits3, labels3, weight=w, reduction="none").mean()
    one_head = MABPCriterion(LossConfig(), main_heads=[], nt_heads=[0])(
        {"pred_masks": [torch.zeros(3, 2, 2)], "nt_logits": [logits3]}, torch.zeros(3, 8, 8), labels3.bool())
    assert one_head["loss_nt"].item() == pytest.approx(plain.item(), rel=1e-6)
    assert plain.item() != pytest.approx(
        torch.nn.functional.cross_entropy(logits3, labels3, weight=w).item(), rel=1e-3)
    total = (5 * losses["loss_ce_final"] + 5 * losses["loss_dice_final"] + 0.5 * losses["loss_ce_inter"]
             + 0.5 * losses["loss_dice_inter"] + 2.5 * losses["loss_nt"])
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_criterion_supervision_depth_switches():
    outputs = {"pred_masks": [torch.randn(1, 2, 2), torch.randn(1, 4, 4), torch.randn(1, 8, 8), torch.randn(1, 16, 16)],
               "nt_logits": [torch.randn(1, 2) for _ in range(4)]}
    gt, nt = torch.zeros(1, 64, 64), torch.tensor([True])
    last_only = MABPCriterion(LossConfig(), main_heads=[], nt_heads=[3])(outputs, gt, nt)
    assert last_only["loss_ce_inter"].item() == 0 and last_only["loss_dice_inter"].item() == 0
    w = torch.tensor([0.9, 1.1])
    expected = torch.nn.functional.cross_entropy(outputs["nt_logits"][3], nt.long(), weight=w, reduction="none").mean()
    assert last_only["loss_nt"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_no_target_rules():
    heads = [torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
             torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    first, _ = decide_no_target(heads, "first")
    last, _ = decide_no_target(heads, "last")
    anyr, prob = decide_no_target(heads, "any")
    assert first.tolist() == [True, False] and last.tolist() == [False, True] and anyr.tolist() == [True, True]
    assert prob[0].item() == pytest.approx(torch.tensor([0.0, 1.0]).softmax(0)[1].item())
    with pytest.raises(ValueError):
        decide_no_target(heads, "majority")


def test_postprocess_threshold_resize_and_min_pixels():
    final = torch.full((1, 4, 4), -10.0)
    final[0, 0, 0] = 10.0
    nt = [torch.tensor([[5.0, 0.0]])]
    out = postprocess([final], nt, (40, 30), threshold=0.5, nt_rule="any")
    assert out.masks.shape == (1, 40, 30) and out.masks.any() and not out.no_target.item()
    # the paper-only rule: fewer than 50 positive pixels at the model size -> empty
    small = postprocess([final], nt, (40, 30), min_pixels=50, model_size=(16, 16))
    assert small.no_target.item() and not small.masks.any() and small.raw_masks.any()
    # a no-target decision empties the demo mask but keeps the raw one (the evaluator uses the raw one)
    empty = postprocess([final], [torch.tensor([[0.0, 5.0]])], (8, 8))
    assert empty.no_target.item() and not empty.masks.any() and empty.raw_masks.any()
