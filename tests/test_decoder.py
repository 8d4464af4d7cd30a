"""The MABP decoder pieces: window geometry, regional heads, attention mask, query upsampling, shapes."""
import json
from pathlib import Path

import pytest
import torch

from mabp import build_mabp
from mabp.config import DecoderConfig
from mabp.modeling import mabp_decoder
from mabp.modeling.mabp_decoder import (MABPDecoder, as_per_head, queries_to_grid, region_attention_mask,
                                        upsample_queries)
from mabp.modeling.query_generator import QueryGenerator
from mabp.modeling.regional_head import (RegionalSupervisionHead, pad_to_windows, window_geometry,
                                         window_means, windowed_logits)
from mabp.official import official_to_ours

MANIFEST = Path(__file__).resolve().parent / "data" / "mabp_official_state_dict.json"  # facts: keys, shapes


@pytest.mark.parametrize("size,queries,pads,padded,ws", [
    (15, 16, (0, 1), 16, 4),   # head 0 at 480
    (30, 64, (1, 1), 32, 4),   # head 1
    (60, 256, (2, 2), 64, 4),  # head 2
    (120, 256, (4, 4), 128, 8),  # head 3 (final, 1/4)
])
def test_window_geometry_matches_reference_table_at_480(size, queries, pads, padded, ws):
    geo = window_geometry(size, size, queries)
    assert (geo.pad_top, geo.pad_bottom) == pads and (geo.pad_left, geo.pad_right) == pads
    assert geo.padded_h == padded and geo.win_h == ws


@pytest.mark.parametrize("onnx_export", [False, True])
def test_windowed_logits_equal_naive_per_window_dot_products(onnx_export, monkeypatch):
    """Both forms: bmm (eager) and gather + reduce (inside an ONNX export)."""
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: onnx_export)
    torch.manual_seed(1)
    b, c, h, w, q = 2, 5, 15, 13, 16
    feat = torch.randn(b, c, h, w)
    embed = torch.randn(b, q, c)
    geo = window_geometry(h, w, q)
    out = windowed_logits(embed, feat, geo)
    assert out.shape == (b, h, w)
    owner = geo.region_index()
    naive = torch.einsum("bpc,bcp->bp", embed[:, owner.flatten()], feat.flatten(2)).view(b, h, w)
    torch.testing.assert_close(out, naive)
    # independent of region_index: pad, cut into windows, dot each with its query, re-tile, crop
    padded = pad_to_windows(feat, geo)
    tiled = torch.zeros(b, geo.padded_h, geo.padded_w)
    for qi in range(q):
        r, col = divmod(qi, geo.n)
        ys, xs = slice(r * geo.win_h, (r + 1) * geo.win_h), slice(col * geo.win_w, (col + 1) * geo.win_w)
        tiled[:, ys, xs] = torch.einsum("bc,bchw->bhw", embed[:, qi], padded[:, :, ys, xs])
    crop = tiled[:, geo.pad_top:geo.pad_top + h, geo.pad_left:geo.pad_left + w]
    torch.testing.assert_close(out, crop, atol=1e-5, rtol=1e-5)
    # the owner map is the padded tiling: pixel (0, 0) belongs to window 0, the last pixel to the last window
    assert owner[0, 0] == 0 and owner[-1, -1] == q - 1


def test_pad_partition_round_trip():
    feat = torch.randn(1, 3, 30, 30)
    geo = window_geometry(30, 30, 64)
    padded = pad_to_windows(feat, geo)
    assert padded.shape[-2:] == (32, 32)
    crop = padded[..., geo.pad_top:geo.pad_top + 30, geo.pad_left:geo.pad_left + 30]
    assert torch.equal(crop, feat)
    boxes = geo.region_boxes()
    assert boxes.shape == (64, 4)
    # windows tile the map: areas add up to H*W
    assert int(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()) == 30 * 30


def test_nt_branch_uses_window_means_including_padding():
    head = RegionalSupervisionHead(hidden_dim=4, num_queries=16, num_tokens=20)
    feat = torch.ones(1, 4, 15, 15)
    geo = window_geometry(15, 15, 16)
    pooled = torch.nn.functional.avg_pool2d(pad_to_windows(feat, geo), geo.win_h)
    torch.testing.assert_close(window_means(feat, geo), pooled)
    for h, w, q in [(40, 40, 256), (30, 17, 64), (10, 10, 16)]:  # asymmetric padding, non-square maps
        g, f = window_geometry(h, w, q), torch.randn(2, 3, h, w)
        ref = torch.nn.functional.avg_pool2d(pad_to_windows(f, g), (g.win_h, g.win_w))
        torch.testing.assert_close(window_means(f, g), ref, atol=1e-6, rtol=1e-5)
    # the last row/column of windows holds one padded (zero) row/column: mean 3/4 (or 9/16 at the corner)
    assert pooled[0, 0, 0, 0] == 1 and pooled[0, 0, 0, 3] == 0.75 and pooled[0, 0, 3, 3] == 0.5625
    logits, nt = head(torch.randn(16, 1, 4), feat, torch.randn(20, 1, 4))
    assert logits.shape == (1, 15, 15) and nt.shape == (1, 2)


def test_attention_mask_rule_own_window_or_foreground_language_never_masked():
    heads, tokens = 2, 3
    logits = torch.full((1, 8, 8), -5.0)
    logits[0, 6, 1] = 5.0  # one foreground pixel (outside window 0)
    shared = region_attention_mask(logits, num_queries=4, num_tokens=tokens)
    assert shared.shape == (1, 1, 4, 64 + tokens)
    m = as_per_head(shared, heads)
    assert m.shape == (heads, 4, 64 + tokens)
    geo = window_geometry(8, 8, 4)  # windows of 3 pixels with padding (8 // 2 + 1 = 5? no: n=2 -> ws=5)
    owner = geo.region_index().flatten()
    for q in range(4):
        allowed = ~m[0, q, :64]
        expected = (owner == q)
        expected[6 * 8 + 1] = True
        assert torch.equal(allowed, expected)
    assert not m[:, :, 64:].any()  # language columns always visible
    assert torch.equal(m[0], m[1])  # the same mask for every head


def test_attention_mask_opens_visual_row_of_padding_only_window():
    # 40x40 map with 16x16 windows (lite at 1/8): window 3 wide, padded to 48 (4 each side), so the
    # first row of windows covers only padding. With no foreground, such a query's visual row is opened
    # (official guard on the visual part), not left with language only.
    logits = torch.full((1, 40, 40), -5.0)
    m = region_attention_mask(logits, num_queries=256, num_tokens=2)[:, 0]
    geo = window_geometry(40, 40, 256)
    owner = geo.region_index().flatten()
    assert not (owner == 0).any()  # query 0 owns only padding
    assert not m[0, 0].any()  # fully open
    q = int(owner[20 * 40 + 20])  # an inner query keeps its window rule
    assert torch.equal(~m[0, q, :1600], owner == q)


def test_shared_masks_give_the_per_head_mask_results():
    """The decoder builds one additive (B, 1, Q, K) mask shared by the heads (no B*heads copy);
    outputs must equal those of nn.MultiheadAttention's own (B*heads, Q, K) bool handling."""
    torch.manual_seed(0)
    model = build_mabp("tiny").eval()
    images, ids, mask = torch.rand(2, 3, 96, 96) * 255, torch.randint(5, 50, (2, 20)), torch.ones(2, 20, dtype=torch.long)
    with torch.no_grad():
        fast = model(images, ids, mask)
        additive = region_attention_mask(torch.randn(2, 12, 12), 16, 20, additive=torch.float32)
        assert additive.shape == (2, 1, 16, 164) and additive.dtype == torch.float32
        original = mabp_decoder.shared_head_mask
        try:
            # the reference: bool masks in nn.MultiheadAttention's (B*heads, Q, K) form
            mabp_decoder.shared_head_mask = lambda blocked, additive=None: as_per_head(
                original(blocked, None), model.cfg.decoder.num_heads)
            slow = model(images, ids, mask)
        finally:
            mabp_decoder.shared_head_mask = original
    for a, b in zip(fast["pred_masks"], slow["pred_masks"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast["nt_logits"], slow["nt_logits"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shared_mask_attention_equals_multihead_attention_in_values_and_gradients():
    from mabp.modeling.masked_attention import MaskedMultiheadAttention

    torch.manual_seed(0)
    attn = MaskedMultiheadAttention(16, 4)
    q, kv = torch.randn(6, 3, 16, requires_grad=True), torch.randn(9, 3, 16, requires_grad=True)
    blocked = torch.rand(3, 6, 9) < 0.4
    blocked[..., 0] = False  # every row keeps one visible key
    for form in (None, torch.float32):
        shared = mabp_decoder.shared_head_mask(blocked, form)
        out = attn(q, kv, kv, attn_mask=shared, need_weights=False)[0]
        ref = torch.nn.MultiheadAttention.forward(attn, q, kv, kv, attn_mask=as_per_head(shared, 4),
                                                  need_weights=False)[0]
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, [q, kv, attn.in_proj_weight], g)
        grads_ref = torch.autograd.grad(ref, [q, kv, attn.in_proj_weight], g)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="B, 1, Q, K"):
        attn(q, kv, kv, attn_mask=torch.zeros(3, 1, 5, 9), need_weights=False)


def test_query_upsampling_is_nearest_row_major():
    n, b, c = 4, 1, 1
    x = torch.arange(n * n, dtype=torch.float32).view(n * n, b, c)
    up = upsample_queries(x)
    assert up.shape == (4 * n * n, b, c)
    grid = queries_to_grid(up)[0, 0]
    for r in range(2 * n):
        for col in range(2 * n):
            assert grid[r, col] == (r // 2) * n + col // 2


def test_query_generator_has_no_softmax_and_ignores_padded_words():
    torch.manual_seed(0)
    gen = QueryGenerator(num_queries=4, hidden_dim=8, text_dim=6)
    lang = torch.randn(1, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    x, t = gen(lang, mask)
    lang2 = lang.clone()
    lang2[0, 3:] = 100.0  # padded words changed
    x2, t2 = gen(lang2, mask)
    torch.testing.assert_close(x, x2)
    assert t.shape == (5, 1, 8) and torch.all(t[3:] == 0)
    w, v = gen.word_weights(lang, mask)
    manual = gen.lango_proj(w[0, :3].t() @ v[0, :3])  # raw weights, real words only
    torch.testing.assert_close(x[:, 0], manual)


def _decoder_inputs(b, hidden, sizes, mask_size, text_dim=12):
    feats = [torch.randn(b, hidden, *s) for s in sizes]
    mf = torch.randn(b, hidden, *mask_size)
    lang = torch.randn(b, 20, text_dim)
    m = torch.zeros(b, 20, dtype=torch.long)
    m[:, :6] = 1
    return feats, mf, lang, m


@pytest.mark.parametrize("image", [(480, 480), (320, 416)])
def test_every_head_shape(image):
    h, w = image
    dec = MABPDecoder(DecoderConfig(hidden_dim=16, num_heads=2, ffn_dim=32), text_dim=12, num_tokens=20)
    sizes = [(h // 32, w // 32), (h // 16, w // 16), (h // 8, w // 8)]
    out = dec(*_decoder_inputs(2, 16, sizes, (h // 4, w // 4)))
    assert [tuple(p.shape) for p in out["pred_masks"]] == [(2, *s) for s in sizes] + [(2, h // 4, w // 4)]
    assert all(tuple(n.shape) == (2, 2) for n in out["nt_logits"])


def test_decoder_gradients_reach_every_parameter():
    dec = MABPDecoder(DecoderConfig(hidden_dim=16, num_heads=2, ffn_dim=32), text_dim=12, num_tokens=20)
    out = dec(*_decoder_inputs(1, 16, [(3, 3), (6, 6), (12, 12)], (24, 24)))
    loss = sum(p.square().mean() for p in out["pred_masks"]) + sum(n.square().sum() for n in out["nt_logits"])
    loss.backward()
    assert [n for n, p in dec.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_decoder_matches_official_manifest_names_shapes_and_count():
    sd = json.loads(MANIFEST.read_text())["state_dict"]
    dec = MABPDecoder(DecoderConfig(), text_dim=768, num_tokens=20)
    ours = {"decoder." + k: list(v.shape) for k, v in dec.state_dict().items()}
    official = {official_to_ours(k): v for k, v in sd.items() if k.startswith("sem_seg_head.predictor.")}
    assert ours == official
    assert sum(p.numel() for p in dec.parameters()) == 18_583_440
