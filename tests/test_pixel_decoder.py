"""Tests for the pure-PyTorch MSDeformAttn and the MSDeformAttn pixel decoder."""
from __future__ import annotations

import json
import math
from pathlib import Path
from dataclasses import replace
from typing import Dict, List, Tuple

import pytest
import torch

from mabp.config import PixelDecoderConfig
from mabp.modeling.ms_deform_attn import (MSDeformAttn, export_layout, ms_deform_attn_core,
                                          ms_deform_attn_core_export, ms_deform_attn_core_grid_sample)
from mabp.modeling.pixel_decoder import MSDeformAttnPixelDecoder

MANIFEST = Path(__file__).resolve().parent / "data" / "mabp_official_state_dict.json"  # facts: keys, shapes
PREFIX = "sem_seg_head.pixel_decoder."
SWIN_B = {"res2": 128, "res3": 256, "res4": 512, "res5": 1024}
SMALL = PixelDecoderConfig(conv_dim=32, mask_dim=32, num_layers=1, num_groups=8, ffn_dim=64)


# --------------------------------------------------------------------------- naive reference
def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample img (C, H, W) at normalised (x, y) with align_corners=False and zero padding.

    Written independently from grid_sample: pixel (i, j) has its centre at ((j+0.5)/W, (i+0.5)/H).
    """
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(c, dtype=torch.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx].double()
    return out


def _naive_core(
    value: torch.Tensor, shapes: List[Tuple[int, int]], loc: torch.Tensor, attw: torch.Tensor
) -> torch.Tensor:
    """value (B, Lin, M, D); loc (B, Lq, M, L, P, 2); attw (B, Lq, M, L, P) -> (B, Lq, M*D)."""
    b, _, m, d = value.shape
    _, lq, _, n_lv, n_pt, _ = loc.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, lq, m * d, dtype=torch.float64)
    for bi in range(b):
        for q in range(lq):
            for hd in range(m):
                acc = torch.zeros(d, dtype=torch.float64)
                for lv, (h, w) in enumerate(shapes):
                    # value rows are row-major (y, x) flattened per level
                    img = value[bi, starts[lv]:starts[lv + 1], hd].T.reshape(d, h, w)
                    for p in range(n_pt):
                        x, y = loc[bi, q, hd, lv, p].tolist()
                        acc += float(attw[bi, q, hd, lv, p]) * _bilinear_zero_pad(img, x, y)
                out[bi, q, hd * d:(hd + 1) * d] = acc
    return out


def ms_deform_attn_core_export_std(value, spatial_shapes, sampling_locations, attention_weights):
    """The ONNX-export core called with the standard layouts."""
    return ms_deform_attn_core_export(value, spatial_shapes, *export_layout(sampling_locations, attention_weights))


@pytest.mark.parametrize("core", [ms_deform_attn_core, ms_deform_attn_core_grid_sample,
                                  ms_deform_attn_core_export_std])
def test_core_matches_naive(core) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 3), (1, 2)]
    b, lq, m, d, p = 2, 4, 2, 3, 2
    lin = sum(h * w for h, w in shapes)
    value = torch.randn(b, lin, m, d, generator=g)
    # Include locations outside [0, 1] to exercise the zero padding.
    loc = torch.rand(b, lq, m, len(shapes), p, 2, generator=g) * 1.6 - 0.3
    attw = torch.rand(b, lq, m, len(shapes), p, generator=g)
    got = core(value, torch.tensor(shapes), loc, attw)
    ref = _naive_core(value, shapes, loc, attw)
    assert got.shape == (b, lq, m * d)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_module_matches_naive() -> None:
    """Whole MSDeformAttn (projections, offset normalisation by (W, H), softmax) vs naive core."""
    torch.manual_seed(1)
    shapes = [(3, 4), (2, 2)]
    d_model, heads, pts = 8, 2, 3
    attn = MSDeformAttn(d_model, n_levels=len(shapes), n_heads=heads, n_points=pts)
    with torch.no_grad():  # non-zero weights so offsets/attention depend on the query
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    lin = sum(h * w for h, w in shapes)
    query = torch.randn(1, 5, d_model)
    inp = torch.randn(1, lin, d_model)
    ref_pts = torch.rand(1, 5, len(shapes), 2)
    ss = torch.tensor(shapes)
    lsi = torch.tensor([0, shapes[0][0] * shapes[0][1]])
    got = attn(query, ref_pts, inp, ss, lsi)

    with torch.no_grad():
        value = attn.value_proj(inp).view(1, lin, heads, d_model // heads)
        off = attn.sampling_offsets(query).view(1, 5, heads, len(shapes), pts, 2)
        w = attn.attention_weights(query).view(1, 5, heads, -1).softmax(-1).view(1, 5, heads, len(shapes), pts)
        loc = off.clone()
        for lv, (h, wd) in enumerate(shapes):
            loc[:, :, :, lv, :, 0] = ref_pts[:, :, None, lv, None, 0] + off[:, :, :, lv, :, 0] / wd
            loc[:, :, :, lv, :, 1] = ref_pts[:, :, None, lv, None, 1] + off[:, :, :, lv, :, 1] / h
        ref = attn.output_proj(_naive_core(value, shapes, loc, w).float())
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _attn_with_inputs(seed: int):
    """A 3-level MSDeformAttn with query-dependent offsets and weights, and inputs for it."""
    torch.manual_seed(seed)
    shapes = [(6, 5), (3, 3), (2, 2)]
    attn = MSDeformAttn(16, n_levels=3, n_heads=4, n_points=2)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.sampling_offsets.bias.normal_(0, 2.0)
        attn.attention_weights.weight.normal_(0, 0.5)
    lin = sum(h * w for h, w in shapes)
    return attn, (torch.randn(2, lin, 16), torch.rand(2, lin, 3, 2), torch.randn(2, lin, 16), torch.tensor(shapes))


def test_module_training_path_equals_inference_path() -> None:
    """Under autograd MSDeformAttn samples with grid_sample (faster backward), at inference with the
    embedding_bag core: the two paths give the same output."""
    attn, args = _attn_with_inputs(2)
    training = attn(*args)
    assert training.requires_grad
    with torch.no_grad():
        inference = attn(*args)
    torch.testing.assert_close(training.detach(), inference, atol=1e-5, rtol=1e-5)


def test_module_export_path_equals_inference_path(monkeypatch) -> None:
    """Inside an ONNX export MSDeformAttn folds 2 / (W, H) into the offsets' linear layer and adds the
    reference points in the export layout (`_export_grids`): same outputs as the eager path."""
    attn, args = _attn_with_inputs(3)
    with torch.no_grad():
        eager = attn(*args)
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        exported = attn(*args)
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)


def test_embedding_bag_core_equals_grid_sample_core_with_gradients() -> None:
    """The fast core and the official grid_sample maths agree in value and in all three gradients,
    including points exactly on pixel centres, on the borders and outside the maps."""
    g = torch.Generator().manual_seed(1)
    shapes = [(5, 7), (3, 4), (2, 2)]
    b, lq, m, d, p = 2, 30, 4, 8, 3
    lin = sum(h * w for h, w in shapes)
    value = torch.randn(b, lin, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    loc[0, :6] = torch.tensor([0.0, 1.0, 0.5, -0.1, 1.1, 0.25], dtype=torch.float64).view(6, 1, 1, 1, 1)
    attw = torch.rand(b, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    results = []
    for core in (ms_deform_attn_core, ms_deform_attn_core_grid_sample, ms_deform_attn_core_export_std):
        v, lc, a = (t.clone().requires_grad_() for t in (value, loc, attw))
        out = core(v, shapes, lc, a)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out, v.grad, lc.grad, a.grad))
    for other in results[1:]:
        for fast, ref in zip(results[0], other):
            torch.testing.assert_close(fast, ref, atol=1e-9, rtol=1e-9)


def test_core_non_finite_locations_read_zeros() -> None:
    """A diverged offset (nan / inf) must not index outside the value table."""
    value = torch.randn(1, 6, 1, 2)
    loc = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30]).view(1, 4, 1, 1, 1, 1).expand(1, 4, 1, 1, 1, 2)
    out = ms_deform_attn_core(value, [(2, 3)], loc.contiguous(), torch.ones(1, 4, 1, 1, 1))
    assert torch.equal(out, torch.zeros(1, 4, 2))


def test_pixel_centre_returns_pixel_value() -> None:
    h, w, d = 3, 5, 2
    value = torch.arange(h * w * d, dtype=torch.float32).view(1, h * w, 1, d)
    for i, j in [(0, 0), (1, 3), (2, 4)]:
        loc = torch.tensor([(j + 0.5) / w, (i + 0.5) / h]).view(1, 1, 1, 1, 1, 2)
        out = ms_deform_attn_core(value, [(h, w)], loc, torch.ones(1, 1, 1, 1, 1))
        torch.testing.assert_close(out.view(d), value[0, i * w + j, 0])


def test_initial_sampling_offsets() -> None:
    """Head 0 points along +x, point k at k+1 pixels; head 2 (90 deg) along +y."""
    attn = MSDeformAttn(256, n_levels=3, n_heads=8, n_points=4)
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    torch.testing.assert_close(bias[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(bias[0, :, :, 1], torch.zeros(3, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[2, 2, :, 1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([1.0, 1.0]))


# --------------------------------------------------------------------------- pixel decoder
def _features(b: int, h: int, w: int, ch: Dict[str, int], dtype=torch.float32) -> Dict[str, torch.Tensor]:
    return {f"res{k}": torch.randn(b, ch[f"res{k}"], h // 2**k, w // 2**k, dtype=dtype) for k in (2, 3, 4, 5)}


def _check_shapes(mask, ms, b, h, w, cfg) -> None:
    assert mask.shape == (b, cfg.mask_dim, h // 4, w // 4)
    assert [tuple(t.shape) for t in ms] == [(b, cfg.conv_dim, h // s, w // s) for s in (32, 16, 8)]
    assert all(t.dtype == torch.float32 for t in [mask, *ms])
    assert all(torch.isfinite(t).all() for t in [mask, *ms])


def test_state_dict_matches_official_manifest() -> None:
    with open(MANIFEST) as f:
        manifest = json.load(f)["state_dict"]
    official = [(k[len(PREFIX):], list(v)) for k, v in manifest.items() if k.startswith(PREFIX)]
    model = MSDeformAttnPixelDecoder(PixelDecoderConfig(), SWIN_B)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert dict(ours) == dict(official)
    assert [k for k, _ in ours] == [k for k, _ in official]  # same order too
    assert sum(p.numel() for p in model.parameters()) == 5_544_384


def test_shapes_96_full_config() -> None:
    torch.manual_seed(0)
    cfg = PixelDecoderConfig()
    model = MSDeformAttnPixelDecoder(cfg, SWIN_B).eval()
    with torch.no_grad():
        mask, ms = model(_features(2, 96, 96, SWIN_B))
    _check_shapes(mask, ms, 2, 96, 96, cfg)


@pytest.mark.parametrize("hw", [(480, 480), (128, 160), (160, 96)])
def test_shapes_small_config(hw: Tuple[int, int]) -> None:
    torch.manual_seed(0)
    ch = {"res2": 24, "res3": 40, "res4": 112, "res5": 320}  # an EfficientNet-like backbone
    model = MSDeformAttnPixelDecoder(SMALL, ch).eval()
    h, w = hw
    with torch.no_grad():
        mask, ms = model(_features(1, h, w, ch))
    _check_shapes(mask, ms, 1, h, w, SMALL)


def test_non_square_full_config() -> None:
    torch.manual_seed(0)
    cfg = replace(PixelDecoderConfig(), num_layers=2)
    model = MSDeformAttnPixelDecoder(cfg, SWIN_B).eval()
    with torch.no_grad():
        mask, ms = model(_features(1, 128, 160, SWIN_B))
    _check_shapes(mask, ms, 1, 128, 160, cfg)


def test_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    cfg = replace(SMALL, num_layers=2)
    ch = {"res2": 8, "res3": 16, "res4": 16, "res5": 32}
    model = MSDeformAttnPixelDecoder(cfg, ch)
    # The official init zeroes the offset/attention weights, which makes d(out)/d(query) and hence
    # the level-embedding gradient exactly zero at init; perturb so every path is exercised.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    mask, ms = model(_features(2, 64, 96, ch))
    (mask.square().mean() + sum(t.square().mean() for t in ms)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    ch = {"res2": 8, "res3": 16, "res4": 16, "res5": 32}
    model = MSDeformAttnPixelDecoder(SMALL, ch).eval()
    feats = _features(1, 64, 64, ch)
    with torch.no_grad():
        ref_mask, ref_ms = model(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask, ms = model({k: v.bfloat16() for k, v in feats.items()})
            mask32, _ = model(feats)
    assert mask.dtype == torch.float32 and all(t.dtype == torch.float32 for t in ms)
    # fp32 inputs under autocast give the exact fp32 result (autocast really is off inside).
    torch.testing.assert_close(mask32, ref_mask, atol=0, rtol=0)
    # bf16 inputs only lose input precision.
    torch.testing.assert_close(mask, ref_mask, atol=0.1, rtol=0.05)


def test_position_encoding_cached_per_size_and_inference_mode() -> None:
    from mabp.modeling.position_encoding import PositionEmbeddingSine

    pe = PositionEmbeddingSine(8)
    a = pe(torch.zeros(2, 3, 4, 5))
    assert a.shape == (2, 16, 4, 5) and torch.equal(a[0], a[1])
    # normalised y of row 0 is 1/4 * 2pi; channel 0 is its sine, channel 8 the x sine (1/5 * 2pi)
    assert abs(float(a[0, 0, 0, 0]) - math.sin(2 * math.pi / 4)) < 1e-5
    assert abs(float(a[0, 8, 0, 0]) - math.sin(2 * math.pi / 5)) < 1e-5
    assert pe(torch.zeros(1, 3, 6, 5)).shape == (1, 16, 6, 5)  # another size, not the cached one
    with torch.inference_mode():
        inf = pe(torch.zeros(1, 3, 4, 5))
    assert torch.equal(inf[0], a[0])
    # a tensor cached under inference_mode must not leak into autograd afterwards
    w = torch.ones(16, requires_grad=True)
    (pe(torch.zeros(1, 3, 4, 5)) * w.view(1, 16, 1, 1)).sum().backward()
    assert w.grad is not None
