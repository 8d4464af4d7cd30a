"""The training speed-ups change no result: the visual-pass cache, the warm start across lite sizes."""
from pathlib import Path

import pytest
import torch

from mabp import build_mabp
from mabp.registry import save_checkpoint
from train.config import load_config
from train.engine import Trainer
from train.visual_cache import VisualFeatureCache, cacheable_visual_pass
from train.warm_start import adapt_state, load_adapted

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lite():
    model = build_mabp("lite")
    for p in model.backbone.backbone.parameters():
        p.requires_grad_(False)
    return model.train()


def test_visual_cache_gives_the_encoder_maps_and_evicts_by_bytes(lite):
    assert cacheable_visual_pass(lite)
    images = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad():
        ref = [lite.encode_visual(images[i:i + 1]) for i in range(3)]
    per_image = sum(m.numel() * 4 for m in ref[0])
    cache = VisualFeatureCache(max_bytes=2 * per_image)  # room for two images
    maps = cache.features(lite, images, [("val", 1), ("val", 2), None])
    assert cache.misses == 3 and cache.hits == 0 and len(cache) == 2
    for level, got in enumerate(maps):
        torch.testing.assert_close(got, torch.cat([r[level] for r in ref]), rtol=0, atol=0)
    again = cache.features(lite, images[[1, 0]], [("val", 2), ("val", 1)])
    assert cache.hits == 2 and torch.equal(again[0][0], maps[0][1])
    cache.features(lite, images[2:], [("val", 3)])  # evicts the least recently used ("val", 2)
    assert len(cache) == 2 and cache.nbytes <= 2 * per_image
    cache.features(lite, images[1:2], [("val", 2)])
    assert cache.misses == 5
    # trainable stages or train-mode BatchNorm: their output is not a fixed function of the image
    lite.backbone.backbone.conv_stem.weight.requires_grad_(True)
    try:
        assert not cacheable_visual_pass(lite)
    finally:
        lite.backbone.backbone.conv_stem.weight.requires_grad_(False)


def test_trainer_step_is_the_same_with_and_without_the_visual_cache(tmp_path):
    losses = []
    for mb in (0, 64):
        cfg = load_config(ROOT / "train/configs/lite_synthgres.yaml",
                          [f"train.output_dir={tmp_path / str(mb)}", "train.batch_size=2", f"train.visual_cache_mb={mb}",
                           "data.val_samples=2", "model.disable_dropout=true"])
        torch.manual_seed(0)
        trainer = Trainer(cfg)
        assert (trainer.visual_cache is not None) == bool(mb)
        batch = next(iter(trainer._make_loader(0, 0)))
        losses.append(trainer.train_step(batch)["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_warm_start_copies_what_fits_and_keeps_the_first_sampling_points(tmp_path):
    big = build_mabp("tiny", pixel_decoder__num_points=2)
    small = build_mabp("tiny", pixel_decoder__num_points=1, decoder__ffn_dim=48)
    state = big.state_dict()
    adapted, report = adapt_state(small, state)
    name = next(k for k in state if k.endswith("self_attn.sampling_offsets.weight"))
    attn = dict(big.named_modules())[name.rsplit(".", 2)[0]]
    h, lv = attn.n_heads, attn.n_levels
    expected = state[name].view(h, lv, 2, 2, -1)[:, :, :1].reshape(h * lv * 2, -1)
    assert torch.equal(adapted[name], expected) and name in report["sliced"]
    assert any("linear1" in k for k in report["fresh"])  # the decoder FFN changed size: fresh
    assert report["copied"] and not report["unused"]
    path = save_checkpoint(big, tmp_path / "big.pt")
    from mabp.registry import load_checkpoint

    load_adapted(small, load_checkpoint(path))
    torch.testing.assert_close(small.state_dict()[name], expected)
    with pytest.raises(ValueError, match="not the same architecture"):
        adapt_state(small, {"nothing.weight": torch.zeros(1)})
