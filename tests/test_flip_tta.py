"""Flip test-time augmentation (mabp/flip_tta.py) and where it plugs in: the predictor (eager and ONNX
Runtime), train.evaluate and train.calibrate. Off by default, so every other test sees one pass."""
import numpy as np
import pytest
import torch

from mabp import build_mabp
from mabp.flip_tta import FlipTTA, merge_flipped, mirror_id_pairs, mirror_token_ids
from mabp.postprocess import nt_probabilities, postprocess
from mabp.predictor import MABPPredictor
from mabp.registry import load_checkpoint
from mabp.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_mabp("tiny").eval()


def _image(seed: int, h: int = 60, w: int = 80) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return np.kron(rng.randint(0, 255, (6, 8, 3)).astype(np.uint8), np.ones((h // 6, w // 8, 1), np.uint8))


def test_mirror_pairs_and_ids(tiny):
    tok = TextTokenizer(tiny.cfg.text)
    vocab = tok.tokenizer.get_vocab()
    pairs = mirror_id_pairs(vocab)
    assert (vocab["left"], vocab["right"]) in pairs and (vocab["leftmost"], vocab["rightmost"]) in pairs
    ids = tok(["the leftmost circle to the right of the left square"]).input_ids
    back = tok.tokenizer.convert_ids_to_tokens(mirror_token_ids(ids, pairs)[0, 1:11].tolist())
    assert back == ["the", "rightmost", "circle", "to", "the", "left", "of", "the", "right", "square"]
    assert torch.equal(mirror_token_ids(mirror_token_ids(ids, pairs), pairs), ids)  # an involution
    plain = tok(["the red circle"]).input_ids
    assert torch.equal(mirror_token_ids(plain, pairs), plain)
    with pytest.raises(ValueError, match="left"):
        mirror_id_pairs({"[PAD]": 0, "up": 1, "down": 2})


def test_merge_by_hand():
    a = torch.tensor([[[0.0, 2.0, -1.0]]])  # (B=1, h=1, w=3) logits
    b = torch.tensor([[[3.0, 0.0, 1.0]]])  # the mirrored answer: flipped back it is [1, 0, 3]
    na, nb = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -1.0]])
    out = merge_flipped({"pred_masks": [a], "nt_logits": [na, None], "aux": 7},
                        {"pred_masks": [b], "nt_logits": [nb, None]})
    want = (torch.tensor([0.0, 2.0, -1.0]).sigmoid() + torch.tensor([1.0, 0.0, 3.0]).sigmoid()) / 2
    torch.testing.assert_close(out["pred_masks"][0][0, 0].sigmoid(), want)
    torch.testing.assert_close(out["nt_logits"][0].softmax(-1), (na.softmax(-1) + nb.softmax(-1)) / 2)
    assert out["nt_logits"][1] is None and out["aux"] == 7
    # A mirror-equivariant answer is left as it is.
    same = merge_flipped({"pred_masks": [a], "nt_logits": [na]}, {"pred_masks": [a.flip(-1)], "nt_logits": [na]})
    torch.testing.assert_close(same["pred_masks"][0], a, atol=1e-5, rtol=0)
    # Saturated logits stay finite.
    big = merge_flipped({"pred_masks": [torch.full((1, 2, 2), 80.0)], "nt_logits": [None]},
                        {"pred_masks": [torch.full((1, 2, 2), 80.0)], "nt_logits": [None]})
    assert torch.isfinite(big["pred_masks"][0]).all() and (big["pred_masks"][0] > 10).all()
    with pytest.raises(ValueError, match="different models"):
        merge_flipped({"pred_masks": [a], "nt_logits": [na]}, {"pred_masks": [a, a], "nt_logits": [na]})
    with pytest.raises(ValueError, match="different models"):
        merge_flipped({"pred_masks": [a], "nt_logits": [na]}, {"pred_masks": [a], "nt_logits": [None]})


def test_wrapper_is_the_average_of_the_two_passes(tiny):
    tok = TextTokenizer(tiny.cfg.text)
    t = tok(["the circle on the left", "the blue square"])
    images = torch.from_numpy(np.stack([_image(0, 96, 96), _image(1, 96, 96)])).permute(0, 3, 1, 2).float()
    tta = FlipTTA.for_model(tiny)
    with torch.inference_mode():
        got = tta(images, t.input_ids, t.attention_mask)
        a = tiny(images, t.input_ids, t.attention_mask)
        b = tiny(images.flip(-1), mirror_token_ids(t.input_ids, tta.pairs), t.attention_mask)
    want = merge_flipped(a, b)
    for x, y in zip(got["pred_masks"] + got["nt_logits"], want["pred_masks"] + want["nt_logits"]):
        torch.testing.assert_close(x, y)
    assert not torch.allclose(got["pred_masks"][-1], a["pred_masks"][-1])  # it is not one pass
    assert tta.cfg is tiny.cfg


def test_predictor_flip_tta_matches_the_batch_wrapper(tiny):
    assert not MABPPredictor(tiny).flip_tta  # off by default (the paper's single pass)
    pred = MABPPredictor(tiny, flip_tta=True)
    image = _image(2)
    pred.set_image(image)
    tta = FlipTTA.for_model(tiny)
    for text in ("the circle on the left", "the rightmost red square"):
        res = pred.predict(text)
        assert res.extras["flip_tta"] and res.extras["engine"] == "pytorch"
        t = pred.tokenizer([text])
        with torch.inference_mode():
            want = tta(pred._tensor, t.input_ids, t.attention_mask)
        h, w = image.shape[:2]
        post = postprocess(want["pred_masks"], want["nt_logits"], (h, w), model_size=(96, 96),
                           nt_rule=tiny.cfg.inference.nt_rule)
        assert (post.raw_masks[0].numpy() == res.raw_mask).mean() > 0.999
        torch.testing.assert_close(torch.tensor(res.nt_probs), nt_probabilities(want["nt_logits"])[:, 0],
                                   atol=1e-5, rtol=0)
        # introspection (hooks on the first pass) still works with the averaged masks
        assert pred.predict(text, introspect=True).extras["introspection"] is not None


def test_predictor_flip_tta_fast_path_equals_eager(tiny):
    from mabp.fast_path import build_fast_path

    path, note = build_fast_path(tiny)
    assert path is not None, note
    eager, fast = MABPPredictor(tiny, flip_tta=True), MABPPredictor(tiny, fast_path=path, flip_tta=True)
    eager.set_image(_image(4))
    fast.set_image(_image(4))
    for text in ("the leftmost circle", "the green triangles"):
        e, f = eager.run_model(text), fast.run_model(text)
        assert (e["path"], f["path"]) == ("pytorch", "onnxruntime")
        for a, b in zip(e["outputs"]["pred_masks"] + e["outputs"]["nt_logits"],
                        f["outputs"]["pred_masks"] + f["outputs"]["nt_logits"]):
            torch.testing.assert_close(b.float(), a.float(), atol=1e-4, rtol=1e-4)


def test_evaluate_and_calibrate_follow_the_setting(tiny, tmp_path, capsys):
    from train import calibrate
    from mabp.registry import save_checkpoint
    from train.data import build_dataset
    from train.evaluate import evaluate_model

    ds = build_dataset("synthgres", "val", mode="eval", size=96)
    plain = evaluate_model(tiny, ds, batch_size=4, progress=False, limit=12)
    flip = evaluate_model(tiny, ds, batch_size=4, progress=False, limit=12, flip_tta=True)
    assert not plain["flip_tta"] and flip["flip_tta"]
    assert [r["nt_prob"] for r in plain["per_sample"]] != [r["nt_prob"] for r in flip["per_sample"]]
    src = save_checkpoint(tiny, tmp_path / "tiny.pt",
                          extra={"train_config": {"data": {"kwargs": {"world": "shapes"}}}})
    dst = tmp_path / "calibrated.pt"
    assert calibrate.main(["--checkpoint", str(src), "--samples", "8", "--grid", "0.3", "--flip-tta",
                           "--out", str(dst), "--no-progress", "--threads", "1"]) == 0
    assert "flip TTA" in capsys.readouterr().out
    ckpt = load_checkpoint(dst)
    assert ckpt["config"]["inference"]["flip_tta"] is True and ckpt["nt_calibration"]["flip_tta"] is True
    model = build_mabp(checkpoint=ckpt)
    assert model.cfg.inference.flip_tta and MABPPredictor(model).flip_tta
    # The stored setting is the default of the evaluator; an explicit False overrides it.
    again = evaluate_model(model, ds, batch_size=4, progress=False, limit=4)
    assert again["flip_tta"] and not evaluate_model(model, ds, batch_size=4, progress=False, limit=4,
                                                    flip_tta=False)["flip_tta"]
