"""The ONNX Runtime fast path (mabp/fast_path.py): same outputs as eager PyTorch within 1e-4, used only
where it applies, and off (with the reason) where it cannot serve."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mabp import build_mabp
from mabp.fast_path import FastPathUnavailable, OnnxFastPath, build_fast_path
from mabp.predictor import MABPPredictor

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "checkpoints" / "mabp-lite-synthgres.pt"
TEXTS = ["the red circle", "all the squares on the left", "every shape but the small green triangles",
         "the purple elephant", "cat"]


def _image(seed: int, h: int = 90, w: int = 120) -> np.ndarray:
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 255, (6, 8, 3)).astype(np.uint8)
    return np.kron(coarse, np.ones((h // 6, w // 8, 1), np.uint8))  # blocks: not pure noise


@pytest.fixture(scope="module")
def tiny():
    model = build_mabp("tiny").eval()
    path, note = build_fast_path(model)
    assert path is not None, note
    return model, path


def _flat(out):
    return list(out["pred_masks"]) + [n for n in out["nt_logits"] if n is not None]


def _assert_same(eager, fast):
    assert [n is None for n in eager["nt_logits"]] == [n is None for n in fast["nt_logits"]]
    for a, b in zip(_flat(eager), _flat(fast)):
        assert a.shape == b.shape and b.dtype == torch.float32
        torch.testing.assert_close(b, a.float(), atol=1e-4, rtol=1e-4)


def test_outputs_equal_eager_within_1e4(tiny):
    model, path = tiny
    assert path.info.max_prob_diff <= 1e-3 and path.info.onnx_mb > 0
    eager_pred, fast_pred = MABPPredictor(model), MABPPredictor(model, fast_path=path)
    for seed in range(2):
        eager_pred.set_image(_image(seed))
        fast_pred.set_image(_image(seed))
        for text in TEXTS:
            e, f = eager_pred.run_model(text), fast_pred.run_model(text)
            assert (e["path"], f["path"]) == ("pytorch", "onnxruntime")
            _assert_same(e["outputs"], f["outputs"])
            re_, rf = eager_pred.predict(text), fast_pred.predict(text)
            assert re_.no_target == rf.no_target and abs(re_.nt_prob - rf.nt_prob) < 1e-4
            assert (re_.mask == rf.mask).mean() > 0.999


def test_introspection_and_other_shapes_run_eager(tiny):
    model, path = tiny
    pred = MABPPredictor(model, fast_path=path)
    pred.set_image(_image(3))
    # hooks need the eager modules: introspection never takes the fast path
    assert pred.predict("the red circle", introspect=True).extras["introspection"] is not None
    assert pred._outputs["the red circle"]["path"] == "pytorch"
    tok = pred.tokenizer(["the red circle"])
    ids, mask = tok.input_ids, tok.attention_mask
    assert path.accepts(pred._visual, ids, mask)
    assert not path.accepts(pred._visual, ids[:, :-1], mask[:, :-1])  # another token length
    assert not path.accepts(pred._visual, torch.cat([ids, ids]), torch.cat([mask, mask]))  # batch 2
    assert not path.accepts(list(pred._visual.feats), ids, mask)  # the graph was traced on Swin features
    assert path.accepts_image(pred._tensor) and not path.accepts_image(pred._tensor[:, :, :64])
    # and an expression that takes the fast path afterwards still does
    pred.predict("the blue square")
    assert pred._outputs["the blue square"]["path"] == "onnxruntime"


def test_image_graph_equals_eager_visual_pass(tiny):
    model, path = tiny
    pred = MABPPredictor(model)
    pred.set_image(_image(4))
    with torch.no_grad():
        eager = model.encode_visual(pred._tensor)
    fast = path.encode_visual(pred._tensor)
    assert type(fast) is type(eager) and list(fast.sizes) == list(eager.sizes)
    for a, b in zip(eager.feats, fast.feats):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_shipped_checkpoint_agrees_on_synthgres_val():
    """The model the app serves: its fast path agrees with eager on real val samples (mask logits within
    1e-4, identical masks and no-target decisions). benchmarks/fast_path_agreement.py does 300."""
    from train.data import build_dataset

    model = build_mabp(checkpoint=SHIPPED).eval()
    path, note = build_fast_path(model)
    assert path is not None, note
    eager_pred, fast_pred = MABPPredictor(model), MABPPredictor(model, fast_path=path)
    ds = build_dataset("synthgres", "val", mode="eval", size=model.cfg.image_size)
    for i in range(6):
        s = ds[i]
        image = np.asarray(s["image"])  # (H, W, 3) uint8
        eager_pred.set_image(image)
        fast_pred.set_image(image)
        _assert_same(eager_pred.run_model(s["sentence"])["outputs"], fast_pred.run_model(s["sentence"])["outputs"])
        e, f = eager_pred.predict(s["sentence"]), fast_pred.predict(s["sentence"])
        assert e.no_target == f.no_target and (e.mask == f.mask).mean() > 0.999


def test_unavailable_says_why_and_never_raises(tiny, monkeypatch):
    model, _ = tiny
    with pytest.raises(FastPathUnavailable, match="disagreed"):
        OnnxFastPath.build(model, tolerance=-1.0)  # no difference can be below a negative tolerance
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    path, note = build_fast_path(model)
    assert path is None and "onnxruntime is not installed" in note and "eager PyTorch" in note


def test_a_model_whose_visual_stages_see_language_has_no_fast_path():
    model = build_mabp("tiny").eval()  # PWAM fusion with closed gates: cacheable until they open
    with torch.no_grad():  # open the gates: language then reaches the visual stages
        for gate in model.backbone.layers:
            if gate.res_gate is not None:
                gate.res_gate[0].weight.fill_(0.1)
                gate.res_gate[2].weight.fill_(0.1)
    assert not model.visual_cacheable()
    path, note = build_fast_path(model)
    assert path is None and "visual stages see the language" in note


def test_video_frames_take_the_fast_path_and_agree(tiny):
    model, path = tiny
    frames = [_image(10 + k) for k in range(3)]
    texts = ["the red circle", "all squares"]
    eager = list(MABPPredictor(model).predict_video(frames, texts))
    fast = list(MABPPredictor(model, fast_path=path).predict_video(frames, texts))
    for fe, ff in zip(eager, fast):
        for re_, rf in zip(fe.results, ff.results):
            assert rf.extras["engine"] == "onnxruntime" and re_.extras["engine"] == "pytorch"
            assert re_.no_target == rf.no_target and (re_.mask == rf.mask).mean() > 0.999


# ------------------------------------------------------------------------ concurrent expressions
@pytest.fixture(scope="module")
def tiny_concurrent():
    model = build_mabp("tiny").eval()
    path, note = build_fast_path(model, threads=2, concurrent=True)
    assert path is not None and path.single_thread_session is not None, note
    assert "1-thread session" in note
    return model, path


def test_runs_alone_take_the_multi_thread_session_and_declared_load_the_one_thread(tiny_concurrent):
    model, path = tiny_concurrent
    eager, fast = MABPPredictor(model), MABPPredictor(model, fast_path=path)
    img = _image(3)
    eager.set_image(img)
    fast.set_image(img)
    path.runs = {"multi_thread": 0, "single_thread": 0}
    _assert_same(eager.run_model(TEXTS[0])["outputs"], fast.run_model(TEXTS[0])["outputs"])
    assert path.runs == {"multi_thread": 1, "single_thread": 0}
    with path.requests():  # one request declared: still alone
        _assert_same(eager.run_model(TEXTS[1])["outputs"], fast.run_model(TEXTS[1])["outputs"])
    assert path.runs == {"multi_thread": 2, "single_thread": 0}
    with path.requests(), path.requests():  # two in flight: the one-thread session
        _assert_same(eager.run_model(TEXTS[2])["outputs"], fast.run_model(TEXTS[2])["outputs"])
    assert path.runs == {"multi_thread": 2, "single_thread": 1}
    assert path._requests == 0 and not path._multi_busy


def test_many_threads_on_one_predictor_agree_with_eager(tiny_concurrent):
    from concurrent.futures import ThreadPoolExecutor

    model, path = tiny_concurrent
    img = _image(4)
    texts = TEXTS + [f"{t} number {i}" for i, t in enumerate(TEXTS)]
    eager = MABPPredictor(model)
    eager.set_image(img)
    expected = {t: eager.predict(t) for t in texts}
    fast = MABPPredictor(model, fast_path=path, cache_texts=3)  # a small cache: evictions under contention
    fast.set_image(img)
    path.runs = {"multi_thread": 0, "single_thread": 0}
    with path.requests(), path.requests(), ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: fast.predict(t, fast_only=True), texts * 2))
    for r in got:
        e = expected[r.text]
        assert r.extras["engine"] == "onnxruntime" and r.no_target == e.no_target
        assert abs(r.nt_prob - e.nt_prob) < 1e-4 and (r.mask == e.mask).mean() > 0.999
    assert path.runs["multi_thread"] == 0 and 1 <= path.runs["single_thread"] <= 2 * len(texts)
    assert len(fast.cached_outputs()) <= 3


def test_fast_only_refuses_what_only_eager_can_do(tiny_concurrent):
    from mabp.predictor import FastPathRefused

    model, path = tiny_concurrent
    plain = MABPPredictor(model)  # no fast path at all
    plain.set_image(_image(5))
    with pytest.raises(FastPathRefused):
        plain.predict("the red circle", fast_only=True)
    fast = MABPPredictor(model, fast_path=path)
    fast.set_image(_image(5))
    with pytest.raises(FastPathRefused):  # introspection needs forward hooks on the torch model
        fast.run_model("the red circle", record=True, fast_only=True)
    assert fast.predict("the red circle", fast_only=True).extras["engine"] == "onnxruntime"
