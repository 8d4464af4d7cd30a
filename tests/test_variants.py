"""Ablation switches of paper Tables V and VI: every combination builds through build_mabp, trains
with build_criterion, and each switch does what it says."""
import math

import pytest
import torch

from mabp import build_mabp, get_config
from mabp.config import DecoderConfig, LossConfig
from mabp.criterion import MABPCriterion, build_criterion
from mabp.modeling.mabp_decoder import MABPDecoder, as_per_head, global_attention_mask
from mabp.modeling.mixed_modal_layer import MixedModalLayer
from mabp.modeling.naive_head import NaiveAggregationHead
from mabp.modeling.query_generator import QueryGenerator
from mabp.modeling.random_queries import RandomQueries
from mabp.modeling.region_language_attention import RegionLanguageAttention
from mabp.modeling.ria_rla_layer import RIARLALayer
from mabp.postprocess import postprocess
from mabp.tokenizer import TextTokenizer
from mabp.variants import PAPER_MIN_PIXELS, VARIANTS, attention_mask_kind, supervised_heads, validate

pytestmark = pytest.mark.usefixtures("single_thread")


SWITCHES_ALONE = {
    "query_random": {"decoder__query_init": "random"},
    "layers_ria_rla": {"decoder__layer_type": "ria_rla"},
    "head_naive_max": {"decoder__head_type": "naive"},
    "head_naive_mean": {"decoder__head_type": "naive", "decoder__naive_aggregation": "mean"},
    "head_naive_softmax": {"decoder__head_type": "naive", "decoder__naive_aggregation": "softmax"},
    "mmd_global_mask": {"decoder__attn_mask": "global"},
    "ria_rla_region_mask": {"decoder__layer_type": "ria_rla", "decoder__attn_mask": "region"},
    "ria_rla_words": {"decoder__layer_type": "ria_rla", "decoder__rla_input": "words"},
    "main_depth_2": {"decoder__main_supervision": 2},
}
CASES = {**{k: v for k, v in VARIANTS.items() if k != "rela"}, **SWITCHES_ALONE}


def _batch(tok, size=96):
    gt = torch.zeros(2, size, size)
    gt[0, 10:50, 20:70] = 1
    t = tok(["the red square on the left", "nothing"])
    return torch.rand(2, 3, size, size) * 255, t.input_ids, t.attention_mask, gt, torch.tensor([False, True])


@pytest.mark.parametrize("name", sorted(CASES))
def test_variant_forward_backward_on_tiny(name):
    model = build_mabp("tiny", **CASES[name])
    imgs, ids, mask, gt, nt = _batch(TextTokenizer(model.cfg.text))
    out = model(imgs, ids, mask)
    assert [tuple(p.shape) for p in out["pred_masks"]] == [(2, 3, 3), (2, 6, 6), (2, 12, 12), (2, 24, 24)]
    has_nt = [n is not None for n in out["nt_logits"]]
    assert all(tuple(n.shape) == (2, 2) for n in out["nt_logits"] if n is not None)
    losses = build_criterion(model.cfg)(out, gt, nt)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    main_heads, nt_heads = supervised_heads(model.cfg.decoder)
    assert [i for i, h in enumerate(has_nt) if h] == nt_heads
    live = set(main_heads) | set(nt_heads) | {3}
    dead = [n for n, p in model.decoder.named_parameters()
            if p.grad is None or not p.grad.abs().sum() > 0]
    # Everything reaches the loss, except heads the switch leaves unsupervised and, in the "words" RLA,
    # the attention matrices that only see the zero-initialised projection at step 0 (ReLA's design).
    allowed = [n for n in dead if n.startswith("heads.") and int(n.split(".")[1]) not in live]
    if model.cfg.decoder.rla_input == "words":
        allowed += [n for n in dead if n in ("layers.0.rla.cross_attn.in_proj_weight",
                                             "layers.0.rla.cross_attn.out_proj.weight")]
    assert sorted(dead) == sorted(allowed), dead


def test_table_rows_build_the_modules_they_name():
    naive = build_mabp("tiny", **VARIANTS["table5_naive"]).decoder
    assert isinstance(naive.query_generator, RandomQueries) and isinstance(naive.layers[0], RIARLALayer)
    assert all(isinstance(h, NaiveAggregationHead) for h in naive.heads)
    assert naive.mask_kind == "global" and naive.lang_query_embed is None
    assert naive.layers[0].rla is not None and all(layer.rla is None for layer in naive.layers[1:])
    rsh = build_mabp("tiny", **VARIANTS["table5_rsh"]).decoder
    assert not any(isinstance(h, NaiveAggregationHead) for h in rsh.heads) and rsh.mask_kind == "global"
    mmd = build_mabp("tiny", **VARIANTS["table5_mmd"]).decoder
    assert isinstance(mmd.layers[0], MixedModalLayer) and isinstance(mmd.query_generator, RandomQueries)
    assert mmd.mask_kind == "region"
    full = build_mabp("tiny").decoder
    assert isinstance(full.query_generator, QueryGenerator)
    # shared pieces keep their names: a random-query model shares query_feat / langv_proj keys
    assert {"query_generator.query_feat.weight", "query_generator.langv_proj.weight"} <= set(mmd.state_dict())
    assert set(mmd.state_dict()) < set(full.state_dict())


def test_supervision_depth_mapping():
    assert supervised_heads(DecoderConfig()) == ([0, 1, 2], [0, 1, 2, 3])
    assert supervised_heads(DecoderConfig(main_supervision="last")) == ([], [0, 1, 2, 3])
    assert supervised_heads(DecoderConfig(main_supervision=2)) == ([2], [0, 1, 2, 3])
    assert supervised_heads(DecoderConfig(main_supervision=4)) == ([0, 1, 2], [0, 1, 2, 3])
    assert supervised_heads(DecoderConfig(main_supervision="3")) == ([1, 2], [0, 1, 2, 3])  # CLI strings
    assert supervised_heads(DecoderConfig(nt_supervision="last")) == ([0, 1, 2], [3])
    assert supervised_heads(DecoderConfig(nt_supervision="none")) == ([0, 1, 2], [])
    crit = build_criterion(get_config("tiny", decoder__main_supervision="last", decoder__nt_supervision="last"))
    assert isinstance(crit, MABPCriterion) and crit.main_heads == [] and crit.nt_heads == [3]


def test_build_criterion_default_equals_the_official_criterion():
    torch.manual_seed(0)
    outputs = {"pred_masks": [torch.randn(2, s, s) for s in (2, 4, 8, 16)],
               "nt_logits": [torch.randn(2, 2) for _ in range(4)]}
    gt = (torch.rand(2, 32, 32) > 0.5).float()
    nt = torch.tensor([False, True])
    ours = build_criterion(get_config("tiny"))(outputs, gt, nt)
    official = MABPCriterion(LossConfig())(outputs, gt, nt)
    assert all(torch.equal(ours[k], official[k]) for k in official)
    # the "last" head only: intermediate terms vanish, only head 3's NT is supervised
    last = build_criterion(get_config("tiny", decoder__main_supervision="last",
                                      decoder__nt_supervision="last"))(outputs, gt, nt)
    assert last["loss_ce_inter"].item() == 0 and last["loss_dice_inter"].item() == 0
    w = torch.tensor([0.9, 1.1])
    head3 = torch.nn.functional.cross_entropy(outputs["nt_logits"][3], nt.long(), weight=w, reduction="none").mean()
    assert last["loss_nt"].item() == pytest.approx(head3.item(), rel=1e-6)


def test_nt_none_removes_the_branch_and_uses_the_50_pixel_rule():
    model = build_mabp("tiny", decoder__nt_supervision="none").eval()
    assert model.cfg.inference.min_pixels == PAPER_MIN_PIXELS
    assert not any(hasattr(h, "nt_embed") for h in model.decoder.heads)
    # an explicit positive value is kept
    assert build_mabp("tiny", decoder__nt_supervision="none", inference__min_pixels=30).cfg.inference.min_pixels == 30
    losses = build_criterion(model.cfg)({"pred_masks": [torch.zeros(1, 2, 2)] * 4, "nt_logits": [None] * 4},
                                        torch.zeros(1, 8, 8), torch.tensor([True]))
    assert losses["loss_nt"].item() == 0
    # inference: no NT head -> emptiness from the pixel rule (< 50 positives at the model size)
    final = torch.full((1, 24, 24), -5.0)
    final[0, :3, :3] = 5.0  # 9 pixels at 1/4 -> ~144 at 96: not empty
    kw = dict(min_pixels=model.cfg.inference.min_pixels, model_size=(96, 96))
    assert not postprocess([final], [None] * 4, (96, 96), **kw).no_target.item()
    final[0, :3, :3] = -5.0
    final[0, 0, 0] = 5.0  # one pixel at 1/4 -> < 50 at 96: empty
    assert postprocess([final], [None] * 4, (96, 96), **kw).no_target.item()


def test_invalid_switches_are_refused():
    for key, value in [("decoder__query_init", "zero"), ("decoder__layer_type", "lstm"),
                       ("decoder__head_type", "fcn"), ("decoder__nt_supervision", "first"),
                       ("decoder__main_supervision", 0), ("decoder__main_supervision", 5),
                       ("decoder__main_supervision", True), ("decoder__naive_aggregation", "median"),
                       ("arch", "mask2former")]:
        with pytest.raises(ValueError):
            validate(get_config("tiny", **{key: value}))
    with pytest.raises(ValueError, match="needs the RSH windows"):
        build_mabp("tiny", decoder__head_type="naive", decoder__attn_mask="region")
    with pytest.raises(ValueError, match="would be ignored"):
        build_mabp("tiny", arch="rela", decoder__head_type="naive")
    with pytest.raises(ValueError, match="square"):
        build_mabp("tiny", arch="rela", decoder__rela_num_queries=50)


def test_attention_mask_kinds():
    assert attention_mask_kind(DecoderConfig()) == "region"
    assert attention_mask_kind(DecoderConfig(layer_type="ria_rla")) == "global"
    assert attention_mask_kind(DecoderConfig(head_type="naive")) == "global"
    assert attention_mask_kind(DecoderConfig(layer_type="ria_rla", attn_mask="region")) == "region"
    dec = MABPDecoder(DecoderConfig(hidden_dim=16, num_heads=2, ffn_dim=32, layer_type="ria_rla"), 12, 20)
    x, feat = torch.randn(16, 3, 16), torch.randn(3, 16, 6, 6)
    m = dec.attention_mask(x, dec.heads[0], feat)
    assert m.shape == (3, 1, 16, 36)  # vision only: RIA has no language columns; shared by the 2 heads
    per_query = torch.einsum("bqc,bchw->bqhw", dec.heads[0].embed(x), feat)
    # additive (0 / -inf) form of the bool rule, shared by the heads
    blocked = global_attention_mask(per_query, 0)
    assert m.dtype == torch.float32
    assert torch.equal(m == float("-inf"), blocked) and torch.equal(m[~blocked], torch.zeros(int((~blocked).sum())))


def test_global_attention_mask_rule():
    logits = torch.full((1, 3, 2, 2), -4.0)
    logits[0, 0, 0, 1] = 3.0  # query 0: one pixel
    logits[0, 1] = 1.0  # query 1: everything
    # query 2: nothing -> its row is opened (Mask2Former guard)
    m = as_per_head(global_attention_mask(logits, num_tokens=3), 2)
    assert m.shape == (2, 3, 4 + 3)
    assert m[0, 0, :4].tolist() == [True, False, True, True]
    assert not m[0, 1].any() and not m[0, 2].any()
    assert not m[:, :, 4:].any() and torch.equal(m[0], m[1])
    # sigmoid >= 0.5 is allowed: a logit of exactly 0 is visible
    assert not global_attention_mask(torch.zeros(1, 1, 1, 2))[0, 0].any()


def test_naive_head_aggregations_by_hand():
    torch.manual_seed(0)
    x, feat, lang = torch.randn(4, 2, 8), torch.randn(2, 8, 5, 5), torch.randn(20, 2, 8)
    for agg in ("max", "mean", "softmax"):
        head = NaiveAggregationHead(8, 4, 20, aggregation=agg)
        per_query = torch.einsum("bqc,bchw->bqhw", head.embed(x), feat)
        logits, nt = head(x, feat, lang)
        if agg == "max":
            expected = per_query.max(1).values
        elif agg == "mean":
            expected = per_query.mean(1)
        else:
            w = head.agg_weight(head.norm(x.transpose(0, 1))).squeeze(-1).softmax(-1)
            expected = (w[:, :, None, None] * per_query).sum(1)
        torch.testing.assert_close(logits, expected)
        torch.testing.assert_close(head.mask_logits(x, feat), expected)
        assert nt.shape == (2, 2)
    # NT: the centroid is the GLOBAL mean feature, the same for every query
    e = head.nt_emb_proj(head.embed(x))
    c = head.pooler_src_proj(feat.mean((2, 3)))
    s = head.nt_lang_emb_proj(lang.permute(1, 2, 0)).squeeze(-1)
    manual = head.nt_embed(torch.cat([(e * s[:, None]).sum(-1), (e * c[:, None]).sum(-1)], -1))
    torch.testing.assert_close(nt, manual)


def test_random_queries_are_text_independent_and_keep_language_tokens():
    gen = RandomQueries(4, 8, 6)
    lang, mask = torch.randn(2, 5, 6), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    q, t = gen(lang, mask)
    q2, _ = gen(torch.randn(2, 5, 6), mask)
    assert q.shape == (4, 2, 8) and torch.equal(q, q2) and torch.equal(q[:, 0], gen.query_feat.weight)
    torch.testing.assert_close(t.transpose(0, 1), gen.langv_proj(lang) * mask[..., None])


def test_rla_gate_and_zero_projection():
    torch.manual_seed(0)
    rla = RegionLanguageAttention(8, 2, weight=0.1, text_dim=6)
    x, words = torch.randn(4, 2, 8), torch.randn(5, 2, 6)
    assert rla.lang_weight.item() == 0 and not rla.lang_proj.weight.any()
    # zero projection: the words cannot matter at initialisation
    torch.testing.assert_close(rla(x, words), rla(x, torch.randn(5, 2, 6)))
    torch.nn.init.normal_(rla.lang_proj.weight)
    mem = rla.lang_proj(words)
    expected = x + 0.1 * 0.5 * rla.norm(x + rla.cross_attn(x, mem, mem)[0])  # sigmoid(0) = 0.5
    torch.testing.assert_close(rla(x, words), expected)
    assert not torch.allclose(rla(x, words), rla(x, torch.randn(5, 2, 6)))


def test_ria_rla_layer_rla_only_where_built_and_language_only_mixed():
    torch.manual_seed(0)
    layer = RIARLALayer(8, 2, 16, num_tokens=5, rla=RegionLanguageAttention(8, 2))
    plain = RIARLALayer(8, 2, 16, num_tokens=5)
    x, qpos, lang = torch.randn(4, 1, 8), torch.randn(4, 1, 8), torch.randn(5, 1, 8)
    mem, pos = torch.randn(9, 1, 8), torch.randn(9, 1, 8)
    out, lang_out = layer(x, qpos, lang, None, mem, pos)
    torch.testing.assert_close(lang_out, layer.token_mix(lang.permute(1, 2, 0)).permute(2, 0, 1))
    # the language tokens reach the queries only through the RLA
    other = torch.randn(5, 1, 8)
    assert not torch.allclose(out, layer(x, qpos, other, None, mem, pos)[0])
    torch.testing.assert_close(plain(x, qpos, lang, None, mem, pos)[0], plain(x, qpos, other, None, mem, pos)[0])


def test_default_switches_keep_the_official_decoder():
    dec = MABPDecoder(DecoderConfig(), text_dim=768, num_tokens=20)
    assert sum(p.numel() for p in dec.parameters()) == 18_583_440
    assert math.isclose(sum(p.numel() for p in MABPDecoder(DecoderConfig(nt_supervision="full", main_supervision=4),
                                                           768, 20).parameters()), 18_583_440)
