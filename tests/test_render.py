"""app/render.py: pure drawing helpers on small arrays (no model, no Gradio)."""
import numpy as np
import pytest

from app import render


def _img(h=40, w=60, value=100):
    return np.full((h, w, 3), value, dtype=np.uint8)


def _grid_boxes(n, h, w):
    """n x n row-major boxes tiling an (h, w) image, like mabp.introspect's region boxes."""
    ys, xs = np.linspace(0, h, n + 1), np.linspace(0, w, n + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(n) for c in range(n)])


def test_display_scale_and_downscale():
    assert render.display_scale((100, 200), 768) == 1.0
    assert render.display_scale((1000, 3072), 768) == pytest.approx(0.25)
    small, s = render.downscale(_img(1000, 3072), 768)
    assert small.shape == (250, 768, 3) and s == pytest.approx(0.25)
    same, s1 = render.downscale(_img(), 768)
    assert s1 == 1.0 and same.shape == (40, 60, 3)
    np.testing.assert_allclose(render.scale_boxes(np.array([[0, 0, 8, 4]]), 0.5), [[0, 0, 4, 2]])


def test_segmentation_overlay_tints_only_the_mask_and_keeps_input():
    img = _img()
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    before = img.copy()
    out = render.segmentation_overlay(img, mask)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(img, before)  # pure: the input is not modified
    assert not np.array_equal(out[15, 20], img[15, 20])  # inside: tinted
    assert np.array_equal(out[35, 55], img[35, 55])  # far outside: untouched
    assert np.array_equal(render.segmentation_overlay(img, np.zeros((40, 60), bool)), img)


def test_head_mask_tiles_captions_and_sizes():
    img = _img(300, 600)
    heads = [np.ones((4, 4), bool), np.zeros((8, 8), bool), np.eye(16, dtype=bool), np.ones((32, 32), bool)]
    tiles = render.head_mask_tiles(img, heads, side=120)
    assert len(tiles) == 4
    for (tile, caption), m in zip(tiles, heads):
        assert tile.shape == (60, 120, 3)
        assert f"{m.shape[1]}x{m.shape[0]}" in caption
    assert "100.0% fg" in tiles[0][1] and "0.0% fg" in tiles[1][1]


def test_status_banner_states_are_distinct_and_escaped():
    nt = render.status_banner(True, 0.91, 0.0, "any")
    assert "No target" in nt and "0.91" in nt and "mabp-no-target" in nt
    found = render.status_banner(False, 0.12, 0.25, "first")
    assert "Target found" in found and "25.0%" in found and "No target" not in found
    err = render.status_banner(None, error="<script>bad</script>")
    assert "&lt;script&gt;" in err and "<script>" not in err and "mabp-error" in err
    idle = render.status_banner(None, message="ready & waiting")
    assert "ready &amp; waiting" in idle


def test_truncation_note_lists_kept_tokens():
    toks = ["[CLS]", "the", "red", "circle", "[SEP]"]
    note = render.truncation_note(toks, 37, 20)
    assert "37 tokens" in note and "20" in note and "`the red circle`" in note


def test_latency_text():
    assert "model time 42 ms" in render.latency_text(42.2)
    t = render.latency_text(3.0, 81.0, cached=True)
    assert "cached" in t and "image encoding 81 ms" in t


def test_region_at_inside_and_nearest():
    boxes = _grid_boxes(4, 40, 40)
    assert render.region_at(boxes, 1, 1) == 0
    assert render.region_at(boxes, 39.9, 39.9) == 15
    assert render.region_at(boxes, 15, 25) == 9  # row 2, col 1
    assert render.region_at(boxes, 40, 40) == 15  # on the far edge: nearest centre
    assert render.region_at(boxes, -5, 2) == 0
    assert render.box_center(boxes, 5) == (15.0, 15.0)


def test_region_owner_map_and_grid():
    boxes = _grid_boxes(2, 40, 60)
    owner = render.region_owner_map(boxes, (40, 60))
    assert owner[0, 0] == 0 and owner[0, 59] == 1 and owner[39, 0] == 2 and owner[39, 59] == 3
    assert (owner >= 0).all()
    mask = np.zeros((2, 2), bool)
    mask[0, 0] = True  # only region 0 is foreground
    out = render.region_grid(_img(40, 60), boxes, mask, highlight=3)
    assert out.shape == (40, 60, 3)
    assert not np.array_equal(out[10, 10], [100, 100, 100])  # region 0 coloured
    assert np.array_equal(out[30, 45], [100, 100, 100])  # region 3 inside: not coloured


def test_map_overlay_heat_and_box():
    vals = np.zeros((5, 5), np.float32)
    vals[0, 0] = 1.0
    out = render.map_overlay(_img(50, 50), vals, box=(10, 10, 20, 20))
    assert out.shape == (50, 50, 3)
    assert not np.array_equal(out[2, 2], out[45, 45])  # hot corner differs from the cold one
    assert np.array_equal(out[10, 15], [0, 255, 255]) or out[10, 15, 1] > 200  # box outline in cyan


def test_diverging_colors():
    c = render.diverging_colors(np.array([-2.0, 0.0, 2.0, np.nan]))
    assert c.shape == (4, 3) and c.dtype == np.uint8
    assert tuple(c[1]) == (255, 255, 255)  # zero is white
    assert c[0, 2] > c[0, 0] and c[2, 0] > c[2, 2]  # negative blue, positive red
    assert tuple(c[3]) == (160, 160, 160)  # padding (nan) is grey
    assert (render.diverging_colors(np.zeros(3)) == 255).all()


def test_region_values_and_cluster_overlays():
    boxes = _grid_boxes(2, 20, 20)
    out = render.region_values_overlay(_img(20, 20), boxes, np.array([1.0, -1.0, 0.0, 0.5]), highlight=0)
    assert out.shape == (20, 20, 3)
    assert out[5, 15, 2] > out[5, 15, 0]  # region 1 negative -> bluish
    labels = np.array([0, 1, 1, 0])
    cl = render.cluster_overlay(_img(20, 20), boxes, labels, 2)
    assert np.array_equal(cl[5, 5], cl[15, 15]) and not np.array_equal(cl[5, 5], cl[5, 15])


def test_charts_are_rgb_arrays():
    bars = render.word_bar_chart(["[CLS]", "the", "cat", "[SEP]"], [0.1, 0.2, 0.6, 0.1], title="t")
    assert bars.ndim == 3 and bars.shape[2] == 3 and bars.dtype == np.uint8 and bars.shape[:2] == (260, 640)
    zero = render.word_bar_chart(["a"], [0.0])
    assert zero.shape == (260, 640, 3)
    rng = np.random.RandomState(0)
    sc = render.pca_scatter(rng.randn(30, 2), rng.randint(0, 3, 30), 3, highlight=4)
    assert sc.shape == (380, 420, 3)
    w = rng.randn(16, 20)
    mask = np.zeros(20, bool)
    mask[:5] = True
    w[:, ~mask] = np.nan
    toks = ["[CLS]", "the", "red", "cat", "[SEP]"] + ["[PAD]"] * 15
    hm = render.word_weight_heatmap(w, toks, mask, highlight_word=2)
    assert hm.shape == (360, 640, 3) and hm.std() > 0


def test_real_words():
    toks = ["[CLS]", "a", "[SEP]", "[PAD]"]
    assert render.real_words(toks, np.array([1, 1, 1, 0])) == [(0, "[CLS]"), (1, "a"), (2, "[SEP]")]


def test_helpers_are_deterministic():
    rng = np.random.RandomState(1)
    args = (rng.randn(20, 2), rng.randint(0, 2, 20), 2)
    assert np.array_equal(render.pca_scatter(*args), render.pca_scatter(*args))
