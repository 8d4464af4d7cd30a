"""Whole-model tests: presets, the official manifest, shapes, checkpoints, overfitting."""
import json
import time
from pathlib import Path

import pytest
import torch

from mabp import build_mabp, get_config, save_checkpoint
from mabp.config import MABPConfig
from mabp.criterion import MABPCriterion
from mabp.official import official_to_ours
from mabp.tokenizer import TextTokenizer

MANIFEST = Path(__file__).resolve().parent / "data" / "mabp_official_state_dict.json"  # facts: keys, shapes


@pytest.fixture(scope="module")
def paper_model():
    return build_mabp("paper").eval()


def test_paper_preset_is_the_official_model_weight_for_weight(paper_model):
    manifest = json.loads(MANIFEST.read_text())
    ours = {k: list(v.shape) for k, v in paper_model.state_dict().items()}
    official = {official_to_ours(k): v for k, v in manifest["state_dict"].items()}
    assert None not in official
    assert ours == official  # all 1,005 entries, names mapped, shapes equal
    n = sum(p.numel() for p in paper_model.parameters())
    assert n == manifest["num_parameters"] == 229_119_176
    assert abs(n - 229.1e6) / 229.1e6 < 0.005


def test_paper_forward_480_cpu_batch1(paper_model):
    ids = torch.zeros(1, 20, dtype=torch.long)
    ids[0, :5] = torch.tensor([101, 1996, 2417, 4418, 102])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = paper_model(torch.rand(1, 3, 480, 480) * 255, ids, (ids > 0).long())
    elapsed = time.perf_counter() - t0
    assert [tuple(p.shape) for p in out["pred_masks"]] == [(1, 15, 15), (1, 30, 30), (1, 60, 60), (1, 120, 120)]
    assert all(tuple(n.shape) == (1, 2) for n in out["nt_logits"])
    assert all(torch.isfinite(p).all() for p in out["pred_masks"])
    print(f"paper forward at 480: {elapsed:.1f} s")


def _tiny_batch(tok, size=96):
    imgs = torch.zeros(4, 3, size, size)
    gts = torch.zeros(4, size, size)
    imgs[0, 0, 10:40, 10:40] = 255
    gts[0, 10:40, 10:40] = 1
    imgs[1, 2, 50:90, 40:80] = 255
    gts[1, 50:90, 40:80] = 1
    imgs[2, 0, 60:90, 5:30] = 255
    imgs[2, 2, 5:30, 60:90] = 255
    gts[2, 60:90, 5:30] = 1
    gts[2, 5:30, 60:90] = 1
    imgs[3, 1, 30:60, 30:60] = 255
    nt = torch.tensor([False, False, False, True])
    t = tok(["the red square", "the blue square", "the red and blue squares", "the green circle"])
    return imgs, gts, nt, t


def test_tiny_overfits_four_samples():
    torch.manual_seed(0)
    model = build_mabp("tiny")
    tok = TextTokenizer(model.cfg.text)
    imgs, gts, nt, t = _tiny_batch(tok)
    crit = MABPCriterion(model.cfg.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = crit(model(imgs, t.input_ids, t.attention_mask), gts, nt)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] / min(losses[-5:]) >= 5, losses


@pytest.mark.parametrize("size", [(96, 96), (96, 160)])
def test_tiny_shapes_square_and_non_square(size):
    model = build_mabp("tiny").eval()
    h, w = size
    tok = TextTokenizer(model.cfg.text)
    t = tok(["the red circle", "all stars"])
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w) * 255, t.input_ids, t.attention_mask)
    expected = [(2, h // s, w // s) for s in (32, 16, 8, 4)]
    assert [tuple(p.shape) for p in out["pred_masks"]] == expected


def test_checkpoint_round_trip_rebuilds_from_checkpoint_alone(tmp_path):
    model = build_mabp("tiny").eval()
    path = save_checkpoint(model, tmp_path / "tiny.pt", extra={"step": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["preset"] == "tiny" and raw["step"] == 3
    again = build_mabp(checkpoint=path).eval()
    assert again.cfg == model.cfg
    tok = TextTokenizer(model.cfg.text)
    t = tok(["the red circle"])
    x = torch.rand(1, 3, 96, 96) * 255
    with torch.no_grad():
        a = model(x, t.input_ids, t.attention_mask)["pred_masks"][-1]
        b = again(x, t.input_ids, t.attention_mask)["pred_masks"][-1]
    torch.testing.assert_close(a, b)
    # fp16 storage restores to fp32 within fp16 precision
    half = build_mabp(checkpoint=save_checkpoint(model, tmp_path / "half.pt", half=True)).eval()
    assert all(p.dtype == torch.float32 for p in half.parameters())


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_mabp(checkpoint=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read") as exc:  # CheckpointError, one line naming the file
        build_mabp(checkpoint=bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an MABP checkpoint"):
        build_mabp(checkpoint=tmp_path / "foreign.pt")
    model = build_mabp("tiny")
    path = save_checkpoint(model, tmp_path / "t.pt")
    with pytest.raises(ValueError, match="does not fit the model"):
        build_mabp("tiny", checkpoint=path, decoder__ffn_dim=32)


def test_config_round_trip_and_overrides():
    cfg = get_config("lite", text__max_tokens=20, inference__nt_rule="last")
    assert cfg.inference.nt_rule == "last" and cfg.visual.kind == "efficientnet_lite0"
    assert MABPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(KeyError, match="unknown config key"):
        get_config("tiny", decoder__nope=1)
    with pytest.raises(KeyError, match="unknown preset"):
        get_config("huge")


def test_lite_preset_builds_with_pretrained_encoders():
    model = build_mabp("lite").eval()
    assert model.text_encoder.hidden_size == 384 and model.cfg.image_size == 256
    assert model.visual_cacheable()  # late fusion
    tok = TextTokenizer(model.cfg.text)
    t = tok(["the two red circles"])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 256, 256) * 255, t.input_ids, t.attention_mask)
    assert [tuple(p.shape) for p in out["pred_masks"]] == [(1, 8, 8), (1, 16, 16), (1, 32, 32), (1, 64, 64)]


def test_checkpoint_without_package_weights_is_small_and_exact(tmp_path):
    """skip_external leaves out weights identical to the installed MiniLM / EfficientNet ones."""
    model = build_mabp("lite").eval()
    with torch.no_grad():  # "train" the decoder and one MiniLM layer; the rest stays as packaged
        model.decoder.query_generator.langq_proj.weight.add_(0.5)
        model.text_encoder.bert.encoder.layer[0].output.dense.bias.add_(0.1)
    full = save_checkpoint(model, tmp_path / "full.pt")
    small = save_checkpoint(model, tmp_path / "small.pt", skip_external=True)
    raw = torch.load(small, weights_only=True)
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in raw["external"]
    assert "text_encoder.bert.encoder.layer.0.output.dense.bias" not in raw["external"]  # trained: stored
    assert not any(k.startswith("decoder.") for k in raw["external"])
    assert small.stat().st_size < 0.6 * full.stat().st_size
    again = build_mabp(checkpoint=small).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    # if the installed package weights change, loading refuses instead of silently differing
    raw["external_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="differ"):
        build_mabp(checkpoint=raw)
