"""J, F and J&F (mabp/video_metrics.py) on hand-built cases whose values are derived in the comments, the
DAVIS empty cases, and a brute-force cross-check of F against its distance definition."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mabp.video_metrics import (PAPER_MEVIS, VideoJFMeter, boundary_f, boundary_prf, boundary_tolerance, disk,
                                region_j, seg2bmap)


def square(x0: int, y0: int, n: int = 20, size: int = 100) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y0 + n, x0:x0 + n] = True
    return m


def empty(size: int = 100) -> np.ndarray:
    return np.zeros((size, size), bool)


# ------------------------------------------------------------------------------------------- J
def test_j_hand_cases():
    a = square(10, 10)
    assert region_j(a, a) == 1.0
    assert region_j(a, square(50, 50)) == 0.0
    # 20x20 squares shifted by 10 px horizontally: I = 10*20 = 200, U = 800 - 200 = 600.
    assert region_j(square(20, 10), square(10, 10)) == pytest.approx(200 / 600)
    assert region_j(empty(), empty()) == 1.0          # DAVIS: union 0 -> J = 1
    assert region_j(empty(), a) == 0.0 and region_j(a, empty()) == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        region_j(np.zeros((4, 4)), np.zeros((4, 5)))


# ------------------------------------------------------------------------------------------- F
def test_seg2bmap_of_one_pixel_and_a_square():
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    # The boundary is offset half a pixel towards the origin: the pixel and its N, W and NW neighbours.
    assert sorted(zip(*np.nonzero(seg2bmap(m)))) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # A 20x20 square [x0, x0+20): a ring from (y0-1, x0-1) to (y0+19, x0+19), 21 px a side = 80 px.
    b = seg2bmap(square(40, 40))
    assert b.sum() == 80
    assert b[39, 39] and b[59, 59] and b[39, 59] and b[59, 39] and not b[60, 60] and not b[50, 50]


def test_tolerance_is_0_008_of_the_diagonal():
    assert boundary_tolerance((100, 100)) == 2          # ceil(0.008 * 141.4) = ceil(1.13)
    assert boundary_tolerance((480, 854)) == 8          # ceil(0.008 * 979.6) = ceil(7.84), a MeViS frame
    assert boundary_tolerance((100, 100), 3) == 3       # >= 1 means pixels
    assert disk(2).sum() == 13 and disk(0).tolist() == [[1]]


def test_f_empty_cases_as_davis():
    a = square(10, 10)
    assert boundary_prf(empty(), empty()) == (1.0, 1.0, 1.0)     # n_fg = n_gt = 0: P = R = 1
    assert boundary_prf(empty(), a) == (0.0, 1.0, 0.0)           # nothing predicted: P = 1, R = 0 -> F = 0
    assert boundary_prf(a, empty()) == (0.0, 0.0, 1.0)           # nothing there: P = 0, R = 1 -> F = 0


def test_f_shifted_square():
    gt = square(40, 40)
    assert boundary_f(gt, gt) == 1.0
    # Shifted by 2 px = the tolerance on 100x100: every boundary pixel is within 2 of the other's.
    assert boundary_f(square(42, 40), gt) == 1.0
    # Shifted by 5 px: of the 80 predicted ring pixels, 18 on each horizontal side lie within 2 px of the
    # GT's rows (x <= x1 + 1) and 2 more at each end of the left column lie within 2 px of them (y0, y0+1,
    # y1-2, y1-3): 40 / 80. By symmetry recall is 40 / 80 too: F = 0.5.
    f, p, r = boundary_prf(square(45, 40), gt)
    assert (p, r, f) == (0.5, 0.5, 0.5)


def test_f_thin_line():
    line = np.zeros((100, 100), bool)
    line[50, 10:90] = True
    assert boundary_f(line, line) == 1.0
    # Its boundary is rows 49 and 50; a copy 5 rows lower has rows 54 and 55: 4 px > 2 px apart, F = 0.
    low = np.roll(line, 5, axis=0)
    assert boundary_f(low, line) == 0.0
    # A copy 2 rows lower (boundary rows 51, 52): every boundary pixel (y, x) of either has the other's
    # pixel (y -/+ 2, x) within the 2 px tolerance: F = 1.
    assert boundary_f(np.roll(line, 2, axis=0), line) == 1.0
    assert boundary_f(empty(), line) == 0.0


def _f_brute(pred: np.ndarray, gt: np.ndarray) -> float:
    """F from the definition: a boundary pixel matches if the other boundary has a pixel within r (Euclid)."""
    pb, gb = np.argwhere(seg2bmap(pred)), np.argwhere(seg2bmap(gt))
    if len(pb) == 0 or len(gb) == 0:
        return 1.0 if len(pb) == len(gb) == 0 else 0.0
    r = boundary_tolerance(pred.shape)
    d = np.sqrt(((pb[:, None, :] - gb[None, :, :]) ** 2).sum(-1))
    p = float((d.min(1) <= r).mean())
    rc = float((d.min(0) <= r).mean())
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def test_f_matches_its_definition_on_random_blobs():
    import cv2

    rng = np.random.default_rng(0)
    for _ in range(12):
        gt = np.zeros((60, 80), np.uint8)
        pred = np.zeros((60, 80), np.uint8)
        for m in (gt, pred):
            for _ in range(int(rng.integers(1, 4))):
                cv2.circle(m, (int(rng.integers(0, 80)), int(rng.integers(0, 60))), int(rng.integers(2, 15)), 1, -1)
        assert boundary_f(pred, gt) == pytest.approx(_f_brute(pred.astype(bool), gt.astype(bool)), abs=1e-12)


# --------------------------------------------------------------------------------------- J&F
def test_meter_averages_per_expression_then_over_expressions():
    a, b = square(10, 10), square(50, 50)
    m = VideoJFMeter()
    # Expression 1: frame 1 perfect (J = F = 1), frame 2 an empty GT answered with nothing (J = F = 1).
    m.update("v/0", a, a)
    m.update("v/0", empty(), empty())
    # Expression 2, three frames: perfect, wrong object (J = F = 0), nothing predicted (J = F = 0).
    m.update("v/1", b, b)
    m.update("v/1", a, b)
    m.update("v/1", empty(), b)
    out = m.compute()
    # Per expression: 100 and 33.33; mean over expressions (not over the 5 frames, which would give 60).
    assert out["J"] == pytest.approx((100 + 100 / 3) / 2)
    assert out["F"] == pytest.approx((100 + 100 / 3) / 2)
    assert out["J&F"] == pytest.approx((out["J"] + out["F"]) / 2)
    assert out["n_expressions"] == 2 and out["n_frames"] == 5
    assert VideoJFMeter().compute()["J&F"] is None


def test_meter_j_and_f_differ_when_the_boundary_is_close():
    m = VideoJFMeter()
    m.update("v/0", square(45, 40), square(40, 40))
    out = m.compute()
    assert out["J"] == pytest.approx(100 * 300 / 500)   # 15x20 overlap of two 20x20 squares
    assert out["F"] == pytest.approx(50.0)
    assert out["J&F"] == pytest.approx((60 + 50) / 2)


def test_paper_rows_are_table_vii():
    assert PAPER_MEVIS["valid"] == {"J&F": 43.4, "J": 39.9, "F": 46.9}
    assert PAPER_MEVIS["valid_u"] == {"J&F": 50.1, "J": 46.2, "F": 54.7}
    assert math.isclose((PAPER_MEVIS["valid_u"]["J"] + PAPER_MEVIS["valid_u"]["F"]) / 2, 50.45)
