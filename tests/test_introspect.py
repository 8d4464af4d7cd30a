"""Introspection through hooks: exactness, cleanliness (hooks removed, no cost when off), shapes."""
import numpy as np
import pytest
import torch
from torch import nn

from mabp import build_mabp
from mabp.introspect import _attention_weights, cluster_prototypes
from mabp.predictor import MABPPredictor


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    p = MABPPredictor(build_mabp("tiny"))
    p.set_image(np.random.RandomState(0).randint(0, 255, (120, 90, 3)).astype(np.uint8))
    return p


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_recomputed_attention_equals_multihead_attention_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4)
    q, k = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    mask = torch.zeros(2 * 4, 5, 7, dtype=torch.bool)
    mask[:, :, :3] = True
    ref = mha(q, k, k, attn_mask=mask, need_weights=True, average_attn_weights=True)[1]
    torch.testing.assert_close(_attention_weights(mha, q, k, mask), ref)


def test_introspection_content_and_hooks_removed(predictor):
    model = predictor.model
    before = _hook_count(model)
    plain = predictor.predict("the red circle")
    r = predictor.predict("the red circle", introspect=True)
    assert _hook_count(model) == before  # every hook removed after the call
    assert np.array_equal(plain.mask, r.mask)  # hooks do not change the answer
    info = r.extras["introspection"]
    assert info.tokens[:5] == ["[CLS]", "the", "red", "circle", "[SEP]"] and len(info.tokens) == 20
    assert [s.n for s in info.scales] == [4, 8, 16, 16]
    for s in info.scales:  # region boxes tile the original image (120 x 90)
        area = ((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])).sum()
        assert area == pytest.approx(120 * 90)
        assert (s.share >= 0).all() and (s.share <= 1).all()
    assert len(info.layers) == 9 and [l.n for l in info.layers] == [4] * 3 + [8] * 3 + [16] * 3
    for layer in info.layers:  # attention over [image ; language] is a distribution per query
        total = layer.image.reshape(layer.image.shape[0], -1).sum(1) + layer.language.sum(1)
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # layer 0 is unmasked; later layers follow the own-window-or-foreground rule
    assert info.word_weights.shape == (16, 20) and np.isnan(info.word_weights[:, 5:]).all()
    assert info.prototypes.shape == (256, 32) and info.similarity.shape == (256, 24, 24)


def test_word_weights_are_the_query_generators(predictor):
    r = predictor.predict("the big blue star", introspect=True)
    info = r.extras["introspection"]
    tok = predictor.tokenizer(["the big blue star"])
    with torch.no_grad():
        lang = predictor.model.encode_text(tok.input_ids, tok.attention_mask)
        w, _ = predictor.model.decoder.query_generator.word_weights(lang, tok.attention_mask)
    real = tok.attention_mask[0].bool().numpy()
    np.testing.assert_allclose(info.word_weights[:, real], w[0].numpy().T[:, real], rtol=1e-5, atol=1e-5)


def test_cluster_prototypes():
    rng = np.random.RandomState(0)
    protos = np.concatenate([rng.randn(20, 8) + 10, rng.randn(20, 8) - 10])
    out = cluster_prototypes(protos, k=2)
    assert out["k"] == 2 and out["pca"].shape == (40, 2)
    assert len(set(out["labels"][:20])) == 1 and out["labels"][0] != out["labels"][-1]
    assert out["silhouette"] > 0.8
    same = cluster_prototypes(np.ones((10, 4)), k=5)  # all identical: one cluster, silhouette undefined
    assert same["k"] == 1 and same["silhouette"] is None
