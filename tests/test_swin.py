"""Tests for the multimodal Swin backbone (mabp/modeling/swin.py). Tiny configs only; Swin-B is built
(for the key/shape manifest) but never run unless MABP_SLOW=1."""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mabp.config import VisualConfig
from mabp.modeling.swin import (
    MASK_VALUE,
    SwinPWAMEncoder,
    SwinTransformerBlock,
    pad_to_window,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

torch.set_num_threads(1)

MANIFEST = Path(__file__).resolve().parent / "data" / "mabp_official_state_dict.json"  # facts: keys, shapes
TEXT_DIM = 32
N_WORDS = 20


def tiny_cfg(**kw) -> VisualConfig:
    base = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4,
                drop_path_rate=0.1, pwam_heads=1)
    base.update(kw)
    return VisualConfig(**base)


def tiny_model(seed: int = 0, **kw) -> SwinPWAMEncoder:
    torch.manual_seed(seed)
    return SwinPWAMEncoder(tiny_cfg(**kw), TEXT_DIM).eval()


def inputs(b: int = 2, h: int = 96, w: int = 96, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, h, w, generator=g)
    lang = torch.randn(b, TEXT_DIM, N_WORDS, generator=g)
    lang_mask = torch.zeros(b, N_WORDS, 1)
    lang_mask[0, :7] = 1
    lang_mask[1:, :12] = 1
    return images, lang, lang_mask


def randomise_gates(model: SwinPWAMEncoder, std: float = 0.2) -> None:
    with torch.no_grad():
        for layer in model.layers:
            if layer.res_gate is not None:
                layer.res_gate[0].weight.normal_(0, std)
                layer.res_gate[2].weight.normal_(0, std)


# ------------------------------------------------------------------------------- window helpers
def test_window_partition_reverse_round_trip_with_padding():
    x = torch.randn(2, 7, 10, 5)
    xp = pad_to_window(x, 4)
    assert xp.shape == (2, 8, 12, 5)
    assert torch.equal(xp[:, :7, :10], x) and xp[:, 7:].abs().sum() == 0 and xp[:, :, 10:].abs().sum() == 0
    win = window_partition(xp, 4)
    assert win.shape == (2 * 2 * 3, 4, 4, 5)
    # window k of image 0 is the (k // 3, k % 3) tile, row-major
    assert torch.equal(win[4], xp[0, 4:8, 4:8])
    assert torch.equal(win[6 + 2], xp[1, 0:4, 8:12])
    back = window_reverse(win, 4, 8, 12)
    assert torch.equal(back, xp)
    assert torch.equal(back[:, :7, :10], x)
    with pytest.raises(ValueError):
        window_partition(x, 4)


def test_relative_position_index_standard():
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.dtype == torch.long
    assert idx.min() == 0 and idx.max() == 24
    # token 0 = (0,0), token 8 = (2,2): offset (-2,-2) -> (0,0) -> 0; reverse (2,2) -> (4,4) -> 24
    assert idx[0, 8] == 0 and idx[8, 0] == 24
    assert torch.all(idx.diagonal() == (3 - 1) * 5 + (3 - 1))


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(8, 8, 4, 2)  # 2x2 windows of 16 tokens
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, MASK_VALUE}
    assert torch.all(mask[0] == 0)  # top-left window: one region
    # top-right window (rolled columns 4..7): columns 4,5 -> region 1, 6,7 -> region 2
    assert mask[1, 0, 1] == 0 and mask[1, 0, 2] == MASK_VALUE and mask[1, 2, 3] == 0
    # bottom-right window mixes 4 regions: tokens (0,0)/(1,1) same region, (0,0)/(3,3) not, (2,0)/(0,0) not
    assert mask[3, 0, 5] == 0 and mask[3, 0, 15] == MASK_VALUE and mask[3, 8, 0] == MASK_VALUE
    assert torch.equal(mask, mask.transpose(1, 2))
    # non-square padded size
    assert shifted_window_mask(8, 12, 4, 2).shape == (6, 16, 16)


# ------------------------------------------------------------------------------- naive window attention
def naive_attention_branch(blk: SwinTransformerBlock, xn: torch.Tensor) -> torch.Tensor:
    """Straightforward (shifted-)window attention on the normalised map xn (B, H, W, C): for every window of
    the rolled, zero-padded grid, gather its tokens at their ORIGINAL coordinates, attend with the relative
    bias looked up pair by pair, and the region rule written directly on rolled coordinates."""
    b, h, w, c = xn.shape
    ws, s, attn = blk.window_size, blk.shift_size, blk.attn
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    xp = torch.zeros(b, hp, wp, c)
    xp[:, :h, :w] = xn
    out = torch.zeros_like(xp)
    heads, hd = attn.num_heads, c // attn.num_heads

    def region(r: int, size: int) -> int:
        return 0 if r < size - ws else (1 if r < size - s else 2)

    for wi in range(hp // ws):
        for wj in range(wp // ws):
            local = [(a, bb) for a in range(ws) for bb in range(ws)]
            rolled = [(wi * ws + a, wj * ws + bb) for a, bb in local]
            orig = [((r + s) % hp, (q + s) % wp) for r, q in rolled]
            rows = torch.tensor([o[0] for o in orig])
            cols = torch.tensor([o[1] for o in orig])
            tok = xp[:, rows, cols]  # (B, N, C)
            q, k, v = attn.qkv(tok).split(c, dim=-1)
            q = q.view(b, -1, heads, hd).transpose(1, 2) * attn.scale
            k = k.view(b, -1, heads, hd).transpose(1, 2)
            v = v.view(b, -1, heads, hd).transpose(1, 2)
            logits = q @ k.transpose(-1, -2)  # (B, heads, N, N)
            n = len(local)
            bias = torch.zeros(heads, n, n)
            for i, (ai, bi) in enumerate(local):
                for j, (aj, bj) in enumerate(local):
                    bias[:, i, j] = attn.relative_position_bias_table[
                        (ai - aj + ws - 1) * (2 * ws - 1) + (bi - bj + ws - 1)]
                    if s > 0:
                        ri = (region(rolled[i][0], hp), region(rolled[i][1], wp))
                        rj = (region(rolled[j][0], hp), region(rolled[j][1], wp))
                        if ri != rj:
                            bias[:, i, j] += MASK_VALUE
            p = (logits + bias).softmax(-1)
            o = (p @ v).transpose(1, 2).reshape(b, n, c)
            out[:, rows, cols] = attn.proj(o)
    return out[:, :h, :w]


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("hw", [(7, 10), (8, 8), (3, 5)])
def test_block_attention_matches_naive_per_window(shift, hw):
    torch.manual_seed(0)
    h, w = hw
    blk = SwinTransformerBlock(dim=8, num_heads=2, window_size=4, shift_size=shift).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 1.0)  # make the bias and its indexing matter
        blk.norm1.weight.normal_(1, 0.3)
        blk.norm1.bias.normal_(0, 0.3)
        blk.mlp.fc2.weight.zero_()  # switch the MLP branch off: block(x) = x + attn_branch(norm1(x))
        blk.mlp.fc2.bias.zero_()
    x = torch.randn(2, h * w, 8)
    with torch.no_grad():
        got = blk(x, h, w) - x
        ref = naive_attention_branch(blk, blk.norm1(x).view(2, h, w, 8)).reshape(2, h * w, 8)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def padded_block_reference(blk: SwinTransformerBlock, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The official block written out: every padded token goes through qkv and proj like a real one."""
    b, _, c = x.shape
    ws, s = blk.window_size, blk.shift_size
    xp = pad_to_window(blk.norm1(x).view(b, h, w, c), ws)
    hp, wp = xp.shape[1], xp.shape[2]
    mask = shifted_window_mask(hp, wp, ws, s) if s else None
    if s:
        xp = torch.roll(xp, shifts=(-s, -s), dims=(1, 2))
    y = window_reverse(blk.attn(window_partition(xp, ws).view(-1, ws * ws, c), mask=mask).view(-1, ws, ws, c),
                       ws, hp, wp)
    if s:
        y = torch.roll(y, shifts=(s, s), dims=(1, 2))
    x = x + y[:, :h, :w].reshape(b, h * w, c)
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("shift", [0, 6])
@pytest.mark.parametrize("hw", [(15, 15), (30, 23), (12, 13)])
def test_padded_maps_skip_the_padded_tokens_linear_layers_exactly(shift, hw):
    """Swin-B's window (12) on its 480x480 stage-3/4 sizes and an odd one: the padded-map shortcut (qkv on
    real tokens, bias in the padding, proj after cropping) equals the official form, forward and backward."""
    torch.manual_seed(0)
    h, w = hw
    blk = SwinTransformerBlock(dim=32, num_heads=4, window_size=12, shift_size=shift)
    with torch.no_grad():
        blk.attn.qkv.bias.normal_(0, 1.0)  # a large bias makes the padded keys/values matter
        blk.attn.relative_position_bias_table.normal_(0, 1.0)
    x = torch.randn(2, h * w, 32, requires_grad=True)
    got = blk(x, h, w)
    ref = padded_block_reference(blk, x, h, w)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, [x, blk.attn.qkv.bias, blk.attn.qkv.weight, blk.attn.proj.weight], g)
    grads_ref = torch.autograd.grad(ref, [x, blk.attn.qkv.bias, blk.attn.qkv.weight, blk.attn.proj.weight], g)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)  # weight grads sum ~900 tokens


def test_whole_encoder_with_the_shortcut_equals_the_padded_official_form(monkeypatch):
    """End to end through every stage (maps 18x13 .. 3x2, window 7: every stage padded), 'pwam' mode with
    open gates so the language path is exercised too: within 1e-5 of the all-padded form."""
    model = tiny_model(window_size=7).eval()
    randomise_gates(model)
    images, lang, lang_mask = inputs(b=1, h=70, w=50)
    with torch.no_grad():
        got = model(images, lang[:1], lang_mask[:1])
        monkeypatch.setattr(SwinTransformerBlock, "forward",
                            lambda blk, x, h, w, attn_mask=None: padded_block_reference(blk, x, h, w))
        ref = model(images, lang[:1], lang_mask[:1])
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- official layout
def test_state_dict_matches_official_manifest_swin_b():
    ref = json.loads(MANIFEST.read_text())["state_dict"]
    ref = {k[len("backbone."):]: tuple(v) for k, v in ref.items() if k.startswith("backbone.")}
    torch.manual_seed(0)
    model = SwinPWAMEncoder(VisualConfig(), text_dim=768)
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(ref) == 411
    assert set(mine) == set(ref), (sorted(set(ref) - set(mine))[:5], sorted(set(mine) - set(ref))[:5])
    assert mine == ref
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 96_099_704
    n_pwam = sum(p.numel() for n, p in model.named_parameters() if ".fusion." in n)
    n_gate = sum(p.numel() for n, p in model.named_parameters() if ".res_gate." in n)
    assert (n_pwam, n_gate) == (8_531_200, 688_128)
    assert model.out_channels == {"res2": 128, "res3": 256, "res4": 512, "res5": 1024}
    assert model.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    # drop path: linspace(0, 0.3, 24) over all blocks
    assert model.layers[0].blocks[0].drop_path.__class__.__name__ == "Identity"
    assert abs(model.layers[3].blocks[1].drop_path.drop_prob - 0.3) < 1e-6
    assert model.layers[1].blocks[1].shift_size == 6 and model.layers[1].blocks[0].shift_size == 0


def test_late_mode_has_no_gates_and_loads_paper_state():
    paper = tiny_model(fusion="pwam")
    late = tiny_model(fusion="late")
    assert not any(".res_gate." in k for k in late.state_dict())
    assert all(layer.res_gate is None for layer in late.layers)
    late.load_state_dict(paper.state_dict(), strict=True)  # gate keys (all zero) are dropped silently
    randomise_gates(paper)
    with pytest.warns(UserWarning, match="res_gate"):
        late.load_state_dict(paper.state_dict(), strict=True)


# ------------------------------------------------------------------------------- tiny forward
@pytest.mark.parametrize("hw", [(96, 96), (128, 160)])
@pytest.mark.parametrize("fusion", ["pwam", "late"])
def test_output_shapes_any_size(hw, fusion):
    model = tiny_model(fusion=fusion)
    images, lang, lang_mask = inputs(h=hw[0], w=hw[1])
    with torch.no_grad():
        out = model(images, lang, lang_mask)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feat in out.items():
        s = model.strides[name]
        assert feat.shape == (2, model.out_channels[name], hw[0] // s, hw[1] // s)
        assert torch.isfinite(feat).all()


def test_init_values_and_zero_gates():
    model = tiny_model()
    blk = model.layers[0].blocks[0]
    assert torch.all(blk.norm1.weight == 1) and torch.all(blk.norm1.bias == 0)
    assert torch.all(blk.attn.qkv.bias == 0)
    # trunc_normal(std=.02) with the timm/torch default absolute cut-off at +-2 (i.e. effectively untruncated)
    assert 0.015 < model.layers[2].blocks[0].mlp.fc1.weight.std() < 0.025
    for layer in model.layers[:3]:
        assert torch.all(layer.res_gate[0].weight == 0) and torch.all(layer.res_gate[2].weight == 0)
        x = torch.randn(3, layer.dim)
        assert torch.all(layer.res_gate(x) == 0)
    assert model.layers[3].res_gate is None and model.layers[3].downsample is None


def test_zero_gates_make_backbone_language_free():
    """With the zero-initialised gates nothing of the language reaches the next stage: the input of every
    PatchMerging is independent of the sentence and the paper model equals the late-fusion model."""
    model = tiny_model()
    images, lang, lang_mask = inputs()
    seen: list[torch.Tensor] = []
    hooks = [layer.downsample.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
             for layer in model.layers[:3]]
    with torch.no_grad():
        out_a = model(images, lang, lang_mask)
        out_b = model(images, torch.randn_like(lang), lang_mask)
    for h in hooks:
        h.remove()
    for a, b in zip(seen[:3], seen[3:]):
        assert torch.equal(a, b)
    assert not torch.allclose(out_a["res5"], out_b["res5"])  # language still shapes the outputs
    late = tiny_model(fusion="late")
    late.load_state_dict(model.state_dict())
    with torch.no_grad():
        out_late = late(images, lang, lang_mask)
    for k in out_a:
        torch.testing.assert_close(out_late[k], out_a[k], atol=1e-5, rtol=1e-5)

    # open the gates: now the language changes what the next stage sees
    randomise_gates(model)
    seen.clear()
    hooks = [model.layers[1].downsample.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))]
    with torch.no_grad():
        model(images, lang, lang_mask)
        model(images, torch.randn_like(lang), lang_mask)
    hooks[0].remove()
    assert not torch.allclose(seen[0], seen[1])


def test_gradients_reach_pwam_and_gates():
    model = tiny_model().train()
    images, lang, lang_mask = inputs(b=2, h=64, w=64)
    # At the exact zero init both gate weights get zero gradient (official behaviour): d/dW2 needs
    # relu(W1 x) != 0 and d/dW1 needs W2 != 0.
    loss = sum(v.square().mean() for v in model(images, lang, lang_mask).values())
    loss.backward()
    assert model.layers[0].res_gate[0].weight.grad.abs().sum() == 0
    model.zero_grad(set_to_none=True)
    randomise_gates(model)
    lang = lang.clone().requires_grad_(True)
    loss = sum(v.square().mean() for v in model(images, lang, lang_mask).values())
    loss.backward()
    for i, layer in enumerate(model.layers):
        for name, p in layer.fusion.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"layers.{i}.fusion.{name}"
        if layer.res_gate is not None:
            for name, p in layer.res_gate.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, f"layers.{i}.res_gate.{name}"
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.grad.abs().sum() > 0
    assert lang.grad.abs().sum() > 0


@pytest.mark.parametrize("fusion", ["pwam", "late"])
def test_padded_words_are_ignored(fusion):
    model = tiny_model(fusion=fusion)
    randomise_gates(model)  # let language flow through the backbone too
    images, lang, lang_mask = inputs()
    lang2 = lang.clone()
    pad = lang_mask[..., 0] == 0  # (B, L)
    lang2.permute(0, 2, 1)[pad] = torch.randn(int(pad.sum()), TEXT_DIM) * 10
    with torch.no_grad():
        a = model(images, lang, lang_mask)
        b = model(images, lang2, lang_mask)
        c = model(images, lang2, torch.ones_like(lang_mask))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a["res2"], c["res2"])


def test_late_mode_split_equals_forward():
    model = tiny_model(fusion="late")
    images, lang, lang_mask = inputs(h=64, w=96)
    with torch.no_grad():
        full = model(images, lang, lang_mask)
        visual = model.forward_visual(images)
        split = model.forward_fusion(visual, lang, lang_mask)
        visual2 = model.forward_visual(images)
        other = model.forward_fusion(visual, torch.randn_like(lang), lang_mask)
    assert [tuple(s) for s in visual.sizes] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[-1] for f in visual.feats] == [16, 32, 64, 128]
    for k in full:
        assert torch.equal(full[k], split[k])
        assert not torch.allclose(full[k], other[k])
    for f1, f2 in zip(visual.feats, visual2.feats):
        assert torch.equal(f1, f2)
    # a plain (feats, sizes) tuple works too (e.g. rebuilt from a cache)
    again = model.forward_fusion((list(visual.feats), list(visual.sizes)), lang, lang_mask)
    assert torch.equal(again["res5"], full["res5"])


def test_forward_visual_refused_in_pwam_mode_with_open_gates():
    model = tiny_model(fusion="pwam")
    assert model.language_free_stages()  # zero gates: the visual pass is language-free
    model.forward_visual(torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        for layer in model.layers:
            if layer.res_gate is not None:
                layer.res_gate[0].weight.fill_(0.1)
                layer.res_gate[2].weight.fill_(0.1)
    assert not model.language_free_stages()
    with pytest.raises(RuntimeError, match="late"):
        model.forward_visual(torch.randn(1, 3, 32, 32))


def test_window_larger_than_map_and_odd_sizes():
    """The segmentation variant pads rather than shrinking the window; inputs not divisible by 32 still
    run (ceil sizes) through PatchEmbed / PatchMerging padding."""
    model = tiny_model(window_size=7)
    images, lang, lang_mask = inputs(b=1, h=70, w=50)
    with torch.no_grad():
        out = model(images, lang[:1], lang_mask[:1])
    assert out["res2"].shape[-2:] == (18, 13)
    assert out["res5"].shape[-2:] == (3, 2)


def test_bias_table_resize_on_load():
    src = tiny_model(window_size=3)
    dst = tiny_model(window_size=4, seed=3)
    # an ImageNet Swin file holds only the Swin parts (no PWAM, gates or per-stage output norms)
    swin_only = {k: v for k, v in src.state_dict().items()
                 if ".fusion." not in k and ".res_gate." not in k and not re.match(r"norm\d\.", k)}
    state = {"model": dict(swin_only)}
    state["model"]["head.weight"] = torch.zeros(10, 128)
    state["model"]["norm.weight"] = torch.ones(128)
    state["model"]["layers.0.blocks.1.attn_mask"] = torch.zeros(1)
    fresh, ignored = dst.load_swin_weights(state)
    assert all(".fusion." in k or ".res_gate." in k or re.match(r"backbone\.norm\d\.", k) for k in fresh)
    assert "head.weight" in ignored and "layers.0.blocks.1.attn_mask" in ignored
    assert dst.layers[0].blocks[0].attn.relative_position_bias_table.shape == (49, 1)
    assert torch.equal(dst.layers[2].blocks[1].mlp.fc1.weight, src.layers[2].blocks[1].mlp.fc1.weight)
    # a file that lacks a Swin block never half-loads
    from mabp.convert import ConversionError

    broken = {k: v for k, v in swin_only.items() if not k.startswith("layers.2.blocks.1.")}
    with pytest.raises(ConversionError, match="layers.2.blocks.1"):
        dst.load_swin_weights(broken)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MABP_SLOW") != "1", reason="Swin-B forward is slow; set MABP_SLOW=1")
def test_swin_b_forward_small_input():
    model = SwinPWAMEncoder(VisualConfig(), text_dim=768).eval()
    images = torch.randn(1, 3, 64, 96)
    lang = torch.randn(1, 768, 20)
    mask = torch.ones(1, 20, 1)
    with torch.no_grad():
        out = model(images, lang, mask)
    assert out["res5"].shape == (1, 1024, 2, 3)
    assert out["res2"].shape == (1, 128, 16, 24)


def test_window_order_cache_made_under_inference_mode_serves_training():
    """The cached gather indices are ordinary tensors even when first built under torch.inference_mode
    (the predictor's mode), so a later training step can save them for backward."""
    blk = SwinTransformerBlock(dim=8, num_heads=2, window_size=4, shift_size=2)
    with torch.inference_mode():
        blk(torch.randn(1, 7 * 9, 8), 7, 9)
    x = torch.randn(1, 7 * 9, 8, requires_grad=True)
    blk(x, 7, 9).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
