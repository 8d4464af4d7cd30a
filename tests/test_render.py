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


def test_status_banner_states_a_calibrated_no_target_threshold():
    assert "above" not in render.status_banner(True, 0.91, 0.0, "any")  # the official 0.5: not repeated
    calibrated = render.status_banner(True, 0.4, 0.0, "any", nt_threshold=0.35)
    assert "p(no target) = 0.40, no target above 0.35" in calibrated and "mabp-no-target" in calibrated
    assert "no target above 0.35" in render.status_banner(False, 0.2, 0.1, nt_threshold=0.35)


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


def test_latency_text_names_the_mask_refinement():
    t = render.latency_text(130.0, 40.0, engine="onnxruntime", refine="guided r=8 eps=0.001")
    assert t.startswith("model time 130 ms (ONNX Runtime, mask edges refined by the guided filter (r=8 eps=0.001))")
    assert "post-processing only; mask edges refined" in render.latency_text(3.0, cached=True, refine="guided r=4 eps=0.01")
    assert "refined" not in render.latency_text(130.0, engine="onnxruntime", refine="none")


def test_latency_text():
    assert "model time 42 ms" in render.latency_text(42.2)
    t = render.latency_text(3.0, 81.0, cached=True, engine="onnxruntime")
    assert "cached" in t and "image encoding 81 ms" in t and "ONNX" not in t  # nothing ran: no engine
    assert render.latency_text(38.4, engine="onnxruntime").startswith("model time 38 ms (ONNX Runtime)")
    assert "(PyTorch)" in render.latency_text(60.0, engine="pytorch")
    t = render.latency_text(70.0, 90.0, engine="onnxruntime", flip_tta=True)
    assert "(ONNX Runtime, two passes: the image and its mirror)" in t and "both views" in t


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


def test_charts_are_rgb_arrays_and_grow_with_the_words():
    bars = render.word_bar_chart(["[CLS]", "the", "cat", "[SEP]"], [0.1, 0.2, 0.6, 0.1], title="t")
    assert bars.ndim == 3 and bars.shape[2] == 3 and bars.dtype == np.uint8 and bars.shape[1] == 560
    long = render.word_bar_chart([f"w{i}" for i in range(20)], np.linspace(0, 1, 20))
    # one row per word: 20 words make a taller chart, not smaller labels
    assert long.shape[0] - bars.shape[0] >= 16 * 25
    zero = render.word_bar_chart(["a"], [0.0])
    assert zero.ndim == 3 and zero.shape[1] == 560
    rng = np.random.RandomState(0)
    sc = render.pca_scatter(rng.randn(30, 2), rng.randint(0, 3, 30), 3, highlight=4)
    assert sc.shape == (480, 520, 3)
    w = rng.randn(16, 20)
    mask = np.zeros(20, bool)
    mask[:5] = True
    w[:, ~mask] = np.nan
    toks = ["[CLS]", "the", "red", "cat", "[SEP]"] + ["[PAD]"] * 15
    hm = render.word_weight_heatmap(w, toks, mask, highlight_word=2)
    assert hm.shape == (150 + 30 * 5, 600, 3) and hm.std() > 0


def test_real_words():
    toks = ["[CLS]", "a", "[SEP]", "[PAD]"]
    assert render.real_words(toks, np.array([1, 1, 1, 0])) == [(0, "[CLS]"), (1, "a"), (2, "[SEP]")]


def test_helpers_are_deterministic():
    rng = np.random.RandomState(1)
    args = (rng.randn(20, 2), rng.randint(0, 2, 20), 2)
    assert np.array_equal(render.pca_scatter(*args), render.pca_scatter(*args))


def _luma(rgb):
    return rgb.astype(float) @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("colour", [(215, 35, 35), (245, 115, 185), (135, 55, 190), (255, 64, 160)])
def test_overlay_is_visible_on_any_colour(colour):
    """Red, pink, purple and magenta objects on a background of the same colour: the overlay keeps the
    object's own colour inside, darkens and greys the rest, and draws a dark + light outline."""
    img = np.empty((80, 100, 3), np.uint8)
    img[:] = colour
    mask = np.zeros((80, 100), bool)
    mask[20:60, 30:70] = True
    out = render.segmentation_view(img, mask, "overlay")
    inside, outside = out[30:50, 40:60], out[:10, :20]
    assert np.array_equal(inside, img[30:50, 40:60])  # the object keeps its colours
    assert _luma(inside).mean() - _luma(outside).mean() > 40  # visible contrast
    sat = lambda a: (a.max(-1).astype(int) - a.min(-1)).mean()  # noqa: E731
    assert sat(outside) < 0.5 * sat(inside)
    ring = out[18:23, 28:72]
    assert ring.min() < 30 and ring.max() > 230  # both the dark and the light line
    assert np.array_equal(render.segmentation_view(img, np.zeros_like(mask), "overlay"), img)  # no mask: as is


def test_views_mask_cutout_and_preview_size():
    img = np.random.RandomState(0).randint(0, 255, (2000, 3200, 3)).astype(np.uint8)
    mask = np.zeros((2000, 3200), bool)
    mask[500:1500, 800:2400] = True
    for view in render.VIEWS:
        out = render.segmentation_view(img, mask, view)
        assert out.shape == (1000, 1600, 3) and out.dtype == np.uint8  # preview <= 1600 px
    m = render.segmentation_view(img, mask, "mask")
    assert set(np.unique(m)) == {0, 255} and m[500, 800].tolist() == [255] * 3 and m[10, 10].tolist() == [0] * 3
    cut = render.segmentation_view(img, mask, "cut-out")
    assert set(np.unique(cut[:200, :200])) <= {200, 235}  # checkerboard outside
    with pytest.raises(ValueError, match="unknown view"):
        render.segmentation_view(img, mask, "x-ray")
    full = render.binary_mask_png_array(mask)
    assert full.shape == (2000, 3200) and full.dtype == np.uint8 and set(np.unique(full)) == {0, 255}


def test_tiny_masks_get_a_pixel_count_and_a_ring():
    assert render.area_text(0.0004, 40) == "40 px"
    assert render.area_text(0.2, 99) == "20.0% of the image"
    banner = render.status_banner(False, 0.1, 0.0004, pixels=40)
    assert "Target found: 40 px" in banner
    img = np.full((200, 200, 3), 90, np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[100:103, 100:103] = True  # 9 px of 40,000
    out = render.double_outline(img, mask)
    assert (out[:, :, 2] < 40).any() and ((out[:, :, 0] > 200) & (out[:, :, 2] < 40)).any()  # yellow ring
    assert np.array_equal(out[0:50, 0:50], img[0:50, 0:50])


def test_banner_carries_the_vocabulary_notice():
    b = render.status_banner(False, 0.03, 0.1, notice="None of these words <was> known")
    assert 'id="mabp-oov"' in b and "&lt;was&gt;" in b and "Target found" in b
    assert "mabp-oov" in render.status_banner(True, 0.9, notice="x")
    assert "mabp-oov" not in render.status_banner(False, 0.03, 0.1)


def test_colour_bars_and_legends():
    bar = render.colorbar_strip(400, 0.0, 0.25, "attention mass")
    assert bar.shape[1] == 400 and bar.dtype == np.uint8
    row = bar[bar.shape[0] // 2]
    assert (row[:, 0].astype(int) - row[:, 2]).std() > 10  # a colour ramp, not blank
    div = render.colorbar_strip(300, -2.0, 2.0, "raw weight", colors="diverging")
    assert div.shape[1] == 300
    leg = render.legend_strip(300, [((255, 0, 0), "cluster 0"), ((0, 0, 255), "cluster 1"), (None, "regions")] * 3,
                              title="clusters")
    one = render.legend_strip(300, [((255, 0, 0), "cluster 0")])
    assert leg.shape[1] == 300 and leg.shape[0] > one.shape[0]  # wrapped over several lines
    img = np.zeros((50, 300, 3), np.uint8)
    stacked = render.stack_below(img, leg, bar)  # a strip of another width is dropped
    assert stacked.shape == (50 + leg.shape[0], 300, 3) and np.array_equal(stacked[:50], img)


def test_largest_mask_region():
    boxes = _grid_boxes(2, 20, 20)
    assert render.largest_mask_region(boxes, np.array([0.1, 0.0, 0.9, 0.2])) == 2
    assert render.largest_mask_region(boxes, np.zeros(4)) is None
