"""The predictor on awkward images and texts, and its caches."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

from mabp import build_mabp
from mabp.image_io import InputError, to_rgb_uint8
from mabp.predictor import MABPPredictor


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return MABPPredictor(build_mabp("tiny"))


def _check(result, shape):
    assert result.mask.shape == shape and result.mask.dtype == np.bool_
    assert result.raw_mask.shape == shape
    assert 0.0 <= result.nt_prob <= 1.0 and len(result.nt_probs) == 4
    assert [m.shape for m in result.head_masks] == [(3, 3), (6, 6), (12, 12), (24, 24)]
    if result.no_target:
        assert not result.mask.any()
    assert result.latency_ms >= 0


@pytest.mark.parametrize("image", [
    np.full((50, 70), 128, dtype=np.uint8),  # grayscale
    np.random.RandomState(0).randint(0, 255, (40, 30, 4)).astype(np.uint8),  # RGBA
    np.zeros((1, 1, 3), dtype=np.uint8),  # 1x1
    np.random.RandomState(1).randint(0, 255, (3000, 4000, 3)).astype(np.uint8),  # 4000x3000 photo
    (np.random.RandomState(2).rand(20, 20, 3)).astype(np.float32),  # float in [0, 1]
    np.random.RandomState(3).randint(0, 65535, (25, 35, 3)).astype(np.uint16),  # 16-bit
])
def test_predictor_awkward_images(predictor, image):
    predictor.set_image(image)
    result = predictor.predict("the red circle")
    _check(result, image.shape[:2])


def test_rgba_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[1, 1] = [0, 0, 255, 0]  # fully transparent blue -> white
    rgb = to_rgb_uint8(rgba)
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("bad,match", [
    (None, "No image"),
    (np.zeros((0, 5, 3), dtype=np.uint8), "empty"),
    (np.zeros((5, 5, 2), dtype=np.uint8), "channels"),
    (np.zeros((2, 2, 2, 3), dtype=np.uint8), "shape"),
    (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN"),
])
def test_bad_images_give_clear_errors(predictor, bad, match):
    with pytest.raises(InputError, match=match):
        predictor.set_image(bad)


def test_too_large_image_is_refused_with_advice():
    with pytest.raises(InputError, match="Downscale"):
        to_rgb_uint8(np.zeros((8000, 6000, 3), dtype=np.uint8), max_pixels=40_000_000)


# Zero-width space / joiner, BOM, soft hyphen, control characters, lone combining accents: non-empty
# strings that BERT's normaliser reduces to no word piece at all -- the same "empty" as whitespace.
NO_PIECES = ["\u200b", "\u200d\u2060 \ufeff", "\u00ad", "\x00\x07", "\u0301\u0301"]


@pytest.mark.parametrize("text", ["", "   \n\t ", None, *NO_PIECES])
def test_empty_text_is_refused(predictor, text):
    predictor.set_image(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="expression|No expression"):
        predictor.predict(text)
    with pytest.raises(InputError, match="expression|No expression"):
        predictor.outputs_for(text)


@pytest.mark.parametrize("text", NO_PIECES)
def test_text_without_word_pieces_gets_the_empty_message(predictor, text):
    assert text.strip() and predictor.tokenizer.word_pieces(text) == []
    predictor.set_image(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError) as exc:
        predictor.predict(text)
    assert str(exc.value) == MABPPredictor.EMPTY_TEXT
    assert predictor.tokenizer.word_pieces("\u200bred") == ["red"]  # one real piece is enough
    assert predictor.predict("\u200bred\u200b").text == "\u200bred\u200b"


def test_long_text_is_truncated_and_says_so(predictor):
    predictor.set_image(np.zeros((32, 32, 3), dtype=np.uint8))
    text = " ".join(["red circle"] * 250)  # 500 words
    result = predictor.predict(text)
    assert result.truncated and result.num_tokens > 20 and len(result.tokens) == 20
    assert result.tokens[0] == "[CLS]" and result.tokens[-1] == "[SEP]"
    short = predictor.predict("the red circle")
    assert not short.truncated


def test_predict_without_image_is_refused():
    p = MABPPredictor(build_mabp("tiny"))
    with pytest.raises(InputError, match="set_image"):
        p.predict("the red circle")


def test_threshold_change_reuses_cached_outputs(predictor):
    predictor.set_image(np.random.RandomState(0).randint(0, 255, (64, 64, 3)).astype(np.uint8))
    first = predictor.predict("all stars", threshold=0.5)
    again = predictor.predict("all stars", threshold=0.3)
    assert again.latency_ms < first.latency_ms
    assert again.raw_mask.sum() >= first.raw_mask.sum()  # a lower threshold never removes pixels
    with pytest.raises(InputError, match="threshold"):
        predictor.predict("all stars", threshold=1.5)


def test_set_image_during_predict_does_not_mix_images():
    """Another thread's set_image while a prediction runs: the answer keeps the image it was computed
    on (mask at that image's size) and is not cached under the new image."""
    p = MABPPredictor(build_mabp("tiny"))
    first = np.random.RandomState(0).randint(0, 255, (40, 60, 3)).astype(np.uint8)
    second = np.random.RandomState(1).randint(0, 255, (90, 30, 3)).astype(np.uint8)
    p.set_image(first)
    forward = p.model.forward_features

    def swap_then_forward(*args, **kwargs):
        p.set_image(second)  # what a concurrent set_image would do mid-run
        return forward(*args, **kwargs)

    p.model.forward_features = swap_then_forward
    try:
        result = p.predict("the red circle")
    finally:
        p.model.forward_features = forward
    _check(result, first.shape[:2])
    assert not p.has_outputs("the red circle")  # computed on `first`, so not an answer for `second`
    on_second = p.predict("the red circle")
    _check(on_second, second.shape[:2])
    assert p.has_outputs("the red circle")
    reference = MABPPredictor(p.model)
    reference.set_image(first)
    np.testing.assert_array_equal(result.raw_mask, reference.predict("the red circle").raw_mask)

    class SwapOnSecondLookup(dict):
        """A cache that swaps the image at its second lookup within one call: an image read and a
        features read done in two locked steps would pair `first`'s size with `second`'s outputs."""
        calls = 0

        def get(self, *args):
            SwapOnSecondLookup.calls += 1
            if SwapOnSecondLookup.calls == 2:
                p._outputs = OrderedDict()  # set_image clears the cache; keep this one in place
                p._image, p._tensor, p._visual = second, p.preprocess(second), None
                if p.model.visual_cacheable():
                    p._visual = p.model.encode_visual(p._tensor)
            return super().get(*args)

    p.set_image(first)
    p._outputs = SwapOnSecondLookup()
    again = p.predict("the red circle")
    np.testing.assert_array_equal(again.raw_mask, result.raw_mask)


def test_cached_visual_pass_equals_full_forward():
    """The predictor's per-image cache must not change a single output (closed gates / late fusion)."""
    torch.manual_seed(0)
    for fusion in ("pwam", "late"):
        model = build_mabp("tiny", visual__fusion=fusion).eval()
        p = MABPPredictor(model)
        image = np.random.RandomState(5).randint(0, 255, (96, 96, 3)).astype(np.uint8)
        p.set_image(image)
        assert p._visual is not None  # zero gates: cacheable even in "pwam" mode
        out = p.outputs_for("the big blue star")
        tok = p.tokenizer(["the big blue star"])
        with torch.no_grad():
            full = model(p._tensor, tok.input_ids, tok.attention_mask)
        for a, b in zip(out["pred_masks"], full["pred_masks"]):
            torch.testing.assert_close(a, b)


def test_open_gates_disable_the_visual_cache():
    model = build_mabp("tiny").eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            if layer.res_gate is not None:
                layer.res_gate[0].weight.normal_(0, 0.1)
                layer.res_gate[2].weight.normal_(0, 0.1)
    p = MABPPredictor(model)
    p.set_image(np.zeros((96, 96, 3), dtype=np.uint8))
    assert p._visual is None and not model.visual_cacheable()
    tok = p.tokenizer(["the red circle"])
    out = p.outputs_for("the red circle")
    with torch.no_grad():
        full = model(p._tensor, tok.input_ids, tok.attention_mask)
    torch.testing.assert_close(out["pred_masks"][-1], full["pred_masks"][-1])


def test_predict_cli_writes_overlays_and_reports_bad_input(tmp_path, capsys):
    import json

    from train import predict as cli

    out = tmp_path / "out"
    code = cli.main(["--preset", "tiny", "--image", "assets/examples/scene.png", "--text", "the red circle", "  ",
                     "\u200b\u200d", "--out", str(out)])
    lines = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
    assert code == 2  # one expression was empty
    assert lines[0]["text"] == "the red circle" and (out / "scene-0.png").is_file() and (out / "scene-0-mask.png").is_file()
    assert "empty" in lines[1]["error"]
    assert "empty" in lines[2]["error"] and len(lines) == 3  # no word piece = empty, nothing written
    assert not (out / "scene-2.png").exists()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="not an image"):
        cli.main(["--preset", "tiny", "--image", str(bad), "--text", "x"])
