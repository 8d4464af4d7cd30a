"""The ReLA baseline (arch="rela"): shapes, gradients, the loss by hand, minimap truncation, inference."""
import math

import pytest
import torch
from torch.nn import functional as F

from mabp import build_mabp, save_checkpoint
from mabp.config import DecoderConfig, LossConfig
from mabp.criterion import build_criterion
from mabp.modeling.rela_decoder import ReLADecoder
from mabp.postprocess import decide_no_target, postprocess
from mabp.rela_criterion import ReLACriterion, minimap_target
from mabp.tokenizer import TextTokenizer


pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(model, b=2, size=96):
    t = TextTokenizer(model.cfg.text)(["the red square", "the blue circle and the cat"][:b])
    return torch.rand(b, 3, size, size) * 255, t.input_ids, t.attention_mask


def test_rela_forward_backward_shapes_and_gradients():
    torch.manual_seed(0)
    model = build_mabp("tiny", arch="rela")
    imgs, ids, mask = _inputs(model)
    out = model(imgs, ids, mask)
    assert [tuple(p.shape) for p in out["pred_masks"]] == [(2, 24, 24)]
    assert [tuple(n.shape) for n in out["nt_logits"]] == [(2, 2)]
    assert out["target_masks"].shape == (2, 2, 24, 24)
    assert out["minimap"].shape == (2, 100, 2) and out["all_masks"].shape == (2, 100, 24, 24)
    # the final logit map is t1 - t0, and the target mask is the minimap-weighted sum of region masks
    t = out["target_masks"]
    torch.testing.assert_close(out["pred_masks"][0], t[:, 1] - t[:, 0])
    torch.testing.assert_close(t, torch.einsum("bqa,bqhw->bahw", out["minimap"], out["all_masks"]),
                               rtol=1e-4, atol=1e-4)
    gt = torch.zeros(2, 96, 96)
    gt[0, 20:60, 10:50] = 1
    crit = build_criterion(model.cfg)
    assert isinstance(crit, ReLACriterion)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for step in range(2):
        opt.zero_grad()
        loss = crit(model(imgs, ids, mask), gt, torch.tensor([False, True]))["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        dead = sorted(n for n, p in model.decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0)
        if step == 0:
            # ReLA's zero-initialised word projection: at step 0 the RLA attention sees an all-zero memory,
            # so its matrices get no gradient yet (the projection itself does)
            assert dead == ["layers.0.rla.cross_attn.in_proj_weight", "layers.0.rla.cross_attn.out_proj.weight"]
            assert model.decoder.layers[0].rla.lang_proj.weight.grad.abs().sum() > 0
        else:
            assert dead == []
        opt.step()


def test_rela_structure_round_robin_and_rla_at_layer_0_only():
    dec = ReLADecoder(DecoderConfig(hidden_dim=16, num_heads=2, ffn_dim=32), text_dim=12, num_tokens=20)
    assert dec.layers[0].rla is not None and all(layer.rla is None for layer in dec.layers[1:])
    assert all(layer.token_mix is None for layer in dec.layers)
    assert dec.query_feat.weight.shape == (100, 16)
    # RIA memory is round-robin: record which scale each layer attends to
    seen = []
    for i, layer in enumerate(dec.layers):
        layer.cross_attn.register_forward_hook(lambda m, inp, out, i=i: seen.append(inp[1].shape[0]))
    feats = [torch.randn(1, 16, n, n) for n in (3, 6, 12)]
    out = dec(feats, torch.randn(1, 16, 24, 24), torch.randn(1, 20, 12), torch.ones(1, 20))
    assert seen == [9, 36, 144] * 3
    assert out["pred_masks"][0].shape == (1, 24, 24)


def test_rela_decoder_parameter_count_matches_reference():
    # analytic count: ReLA decoder 14.99 M with the paper widths (C 256, 8 heads, FFN 2048, 9 layers)
    dec = ReLADecoder(DecoderConfig(), text_dim=768, num_tokens=20)
    n = sum(p.numel() for p in dec.parameters())
    per_layer = 2 * (3 * 256 * 256 + 3 * 256 + 256 * 256 + 256 + 512) + (2 * 256 * 2048 + 2048 + 256 + 512)
    rla = 3 * 256 * 256 + 3 * 256 + 256 * 256 + 256 + 512 + 768 * 256 + 1
    heads = 512 + 3 * (256 * 256 + 256) + (256 * 2 + 2) + (256 * 256 + 256 + 256 * 2 + 2)
    assert n == 9 * per_layer + rla + heads + 2 * 100 * 256 + 3 * 256 == 14_985_733


def _ce(logits, label, w=(0.9, 1.1)):
    """-log softmax(logits)[label] and its class weight."""
    lse = math.log(sum(math.exp(v) for v in logits))
    return w[label] * (lse - logits[label]), w[label]


def test_rela_loss_by_hand():
    # GT 2x2 = target-mask size (the upsampling is the identity) and minimap 2x2 (Q = 4)
    gt = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    t0 = [[0.0, 1.0], [2.0, 0.0]]
    t1 = [[1.0, 0.0], [0.0, 0.5]]
    target = torch.tensor([[t0, t1]])  # (1, 2, 2, 2)
    minimap = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [3.0, -1.0]]])  # (1, 4, 2)
    nt = torch.tensor([[0.3, -0.2]])
    out = {"target_masks": target, "minimap": minimap, "nt_logits": [nt], "pred_masks": [target[:, 1] - target[:, 0]]}
    losses = ReLACriterion(LossConfig())(out, gt, torch.tensor([False]))
    labels = [1, 0, 0, 0]
    pix = [_ce([t0[i // 2][i % 2], t1[i // 2][i % 2]], labels[i]) for i in range(4)]
    mask_ce = sum(a for a, _ in pix) / sum(b for _, b in pix)  # weight-normalised mean (ReLA's "mean")
    mm = [_ce(minimap[0, q].tolist(), labels[q]) for q in range(4)]
    mini_ce = sum(a for a, _ in mm) / sum(b for _, b in mm)
    nt_ce = _ce([0.3, -0.2], 0)[0] / 0.9
    assert losses["loss_mask"].item() == pytest.approx(mask_ce, rel=1e-5)
    assert losses["loss_minimap"].item() == pytest.approx(mini_ce, rel=1e-5)
    assert losses["loss_nt"].item() == pytest.approx(nt_ce, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(5 * (mask_ce + 0.1 * mini_ce + 0.1 * nt_ce), rel=1e-5)


def test_rela_loss_upsamples_the_target_mask_and_normalises_by_class_weights():
    torch.manual_seed(0)
    target, gt = torch.randn(2, 2, 4, 4), (torch.rand(2, 16, 16) > 0.7).float()
    out = {"target_masks": target, "minimap": torch.randn(2, 4, 2), "nt_logits": [torch.randn(2, 2)]}
    nt = torch.tensor([True, True])
    losses = ReLACriterion(LossConfig())(out, gt, nt)
    up = F.interpolate(target, size=(16, 16), mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(up, gt.long(), reduction="none")
    w = torch.where(gt > 0, 1.1, 0.9)
    assert losses["loss_mask"].item() == pytest.approx(((w * per_pixel).sum() / w.sum()).item(), rel=1e-5)
    # a batch of two no-target samples: the weighted mean is the plain mean of the two CEs
    plain = F.cross_entropy(out["nt_logits"][0], nt.long(), reduction="none").mean()
    assert losses["loss_nt"].item() == pytest.approx(plain.item(), rel=1e-5)
    with pytest.raises(KeyError, match="ReLA decoder"):
        ReLACriterion(LossConfig())({"pred_masks": [target[:, 0]], "nt_logits": [None]}, gt, nt)


def test_minimap_target_is_bilinear_then_truncated():
    # 8 -> 2: each cell samples the 2x2 pixels around its centre (rows/cols 1-2 and 5-6)
    gt = torch.zeros(1, 8, 8)
    gt[0, 1:3, 1:3] = 1  # cell (0, 0): its four sampled pixels all foreground -> 1
    gt[0, 1:3, 5] = 1  # cell (0, 1): half of its sampled pixels -> 0.5 -> truncated to 0
    gt[0, 4:8, 0:4] = 1
    gt[0, 5, 1] = 0  # cell (1, 0): 3 of 4 -> 0.75 -> 0 although the quadrant is 15/16 foreground
    gt[0, 4, 4] = 1  # cell (1, 1): foreground outside the sampled pixels is never seen -> 0
    assert minimap_target(gt, 2).tolist() == [[1, 0, 0, 0]]
    small = F.interpolate(gt[:, None], size=(2, 2), mode="bilinear", align_corners=False)
    assert small.flatten().tolist() == [1.0, 0.5, 0.75, 0.0]
    assert minimap_target(torch.ones(1, 96, 96), 10).sum() == 100


def test_rela_inference_sigmoid_of_difference_equals_argmax():
    torch.manual_seed(0)
    target = torch.randn(3, 2, 12, 12) * 3
    final = target[:, 1] - target[:, 0]
    post = postprocess([final], [torch.tensor([[2.0, 1.0], [0.0, 3.0], [-1.0, -1.5]])], (48, 48), nt_rule="any")
    argmax = F.interpolate(target, size=(48, 48), mode="bilinear", align_corners=False).argmax(1) == 1
    assert torch.equal(post.raw_masks, argmax)
    assert post.no_target.tolist() == [False, True, False]
    assert decide_no_target([torch.tensor([[0.0, 1.0]])], "first")[0].item()


def test_rela_every_preset_and_checkpoint_round_trip(tmp_path):
    model = build_mabp("tiny", arch="rela").eval()
    again = build_mabp(checkpoint=save_checkpoint(model, tmp_path / "rela.pt")).eval()
    assert again.cfg.arch == "rela" and type(again.decoder).__name__ == "ReLADecoder"
    imgs, ids, mask = _inputs(model, b=1)
    with torch.no_grad():
        torch.testing.assert_close(model(imgs, ids, mask)["pred_masks"][0], again(imgs, ids, mask)["pred_masks"][0])
    lite = build_mabp("lite", arch="rela").eval()
    with torch.no_grad():
        out = lite(*_inputs(lite, b=1, size=256))
    assert out["pred_masks"][0].shape == (1, 64, 64) and out["minimap"].shape == (1, 100, 2)
