"""Tests of mabp.metrics: every row of the §4 table, Pr@ boundary, both accuracy families, breakdown,
merge/state, NT decision rules, min-pixel rule and the tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mabp.metrics import (PAPER_RESULTS, GRESMeter, apply_min_pixels, decide_no_target, format_breakdown,
                          format_table, get_paper_row)


def _mask(h: int, w: int, *rects) -> np.ndarray:
    """Bool (h, w) mask with the given (y0, y1, x0, x1) rectangles set."""
    m = np.zeros((h, w), dtype=bool)
    for y0, y1, x0, x1 in rects:
        m[y0:y1, x0:x1] = True
    return m


# pred: 4x4 block at [0:4, 0:4] (16 px); gt: [2:6, 2:6] (16 px); I = 4, U = 28.
PRED = _mask(10, 10, (0, 4, 0, 4))
GT = _mask(10, 10, (2, 6, 2, 6))
EMPTY = np.zeros((10, 10), dtype=bool)


def test_row_tp_no_target_predicted_no_target():
    m = GRESMeter()
    rec = m.update(PRED, EMPTY, pred_nt=True, gt_nt=True)  # the un-zeroed mask must not matter
    assert rec["outcome"] == "TP" and rec["iou"] == 1.0 and (rec["I"], rec["U"]) == (0, 0)
    r = m.compute()
    assert (r["sum_I"], r["sum_U"]) == (0, 0)
    assert r["gIoU"] == 100.0 and r["cIoU"] is None  # ΣU = 0: undefined, reported as None


def test_row_fn_no_target_missed():
    m = GRESMeter()
    rec = m.update(PRED, EMPTY, pred_nt=False, gt_nt=True)
    assert rec["outcome"] == "FN" and rec["iou"] == 0.0 and (rec["I"], rec["U"]) == (0, 16)
    # Even an empty predicted mask scores IoU 0 when the NT head says "target".
    rec2 = m.update(EMPTY, EMPTY, pred_nt=False, gt_nt=True)
    assert rec2["outcome"] == "FN" and rec2["iou"] == 0.0 and (rec2["I"], rec2["U"]) == (0, 0)
    r = m.compute()
    assert (r["sum_I"], r["sum_U"]) == (0, 16) and r["gIoU"] == 0.0 and r["cIoU"] == 0.0


def test_row_fp_target_called_no_target():
    m = GRESMeter()
    rec = m.update(PRED, GT, pred_nt=True, gt_nt=False)
    # I forced to 0, U of the un-zeroed prediction with GT (28) still counted.
    assert rec["outcome"] == "FP" and rec["iou"] == 0.0 and (rec["I"], rec["U"]) == (0, 28)
    assert (rec["pred_pixels"], rec["gt_pixels"]) == (16, 16)
    r = m.compute()
    assert (r["sum_I"], r["sum_U"]) == (0, 28) and r["cIoU"] == 0.0


def test_row_tn_target_found():
    m = GRESMeter()
    rec = m.update(PRED, GT, pred_nt=False, gt_nt=False)
    assert rec["outcome"] == "TN" and rec["iou"] == pytest.approx(4 / 28) and (rec["I"], rec["U"]) == (4, 28)
    # U == 0 (empty GT and empty prediction for a target sample, e.g. a crowd-only ref) → IoU 0.
    rec2 = m.update(EMPTY, EMPTY, pred_nt=False, gt_nt=False)
    assert rec2["outcome"] == "TN" and rec2["iou"] == 0.0 and (rec2["I"], rec2["U"]) == (0, 0)
    r = m.compute()
    assert (r["sum_I"], r["sum_U"]) == (4, 28)
    assert r["cIoU"] == pytest.approx(100 * 4 / 28)
    assert r["gIoU"] == pytest.approx(100 * (4 / 28 + 0) / 2)


def test_all_rows_together_and_torch_inputs():
    m = GRESMeter()
    m.update(torch.from_numpy(PRED), torch.from_numpy(EMPTY), True, True)  # TP: +0/+0, iou 1
    m.update(PRED, EMPTY, False, True)  # FN: +0/+16, iou 0
    m.update(PRED, GT, True, False)  # FP: +0/+28, iou 0
    m.update(GT, GT, False, False)  # TN: +16/+16, iou 1
    r = m.compute()
    assert (r["TP"], r["FN"], r["FP"], r["TN"], r["n"]) == (1, 1, 1, 1, 4)
    assert (r["sum_I"], r["sum_U"]) == (16, 60)
    assert r["cIoU"] == pytest.approx(100 * 16 / 60)
    assert r["gIoU"] == pytest.approx(50.0)
    # Pr@ over the 2 target samples (FP iou 0, TN iou 1).
    assert r["Pr@0.7"] == r["Pr@0.8"] == r["Pr@0.9"] == 50.0
    assert [s["outcome"] for s in m.per_sample()] == ["TP", "FN", "FP", "TN"]


def test_float_masks_are_refused():
    with pytest.raises(TypeError, match="binary mask"):
        GRESMeter().update(PRED.astype(np.float32), GT, False, False)


def test_update_batch_matches_update():
    rng = np.random.default_rng(0)
    preds = rng.random((6, 8, 8)) > 0.5
    gts = rng.random((6, 8, 8)) > 0.6
    p_nt = np.array([0, 1, 0, 1, 0, 0], bool)
    g_nt = np.array([0, 0, 1, 1, 0, 1], bool)
    gts[g_nt] = False
    a, b = GRESMeter(), GRESMeter()
    a.update_batch(torch.from_numpy(preds), gts, torch.from_numpy(p_nt), g_nt, sample_ids=list(range(6)))
    for i in range(6):
        b.update(preds[i], gts[i], bool(p_nt[i]), bool(g_nt[i]), sample_id=i)
    assert a.compute() == b.compute()
    assert a.per_sample() == b.per_sample()


def test_pr_threshold_is_greater_or_equal():
    m = GRESMeter()
    # IoU exactly 0.7: I = 7, U = 10 (pred 7 px inside a 10 px GT).
    gt = _mask(1, 10, (0, 1, 0, 10))
    pred = _mask(1, 10, (0, 1, 0, 7))
    rec = m.update(pred, gt, False, False)
    assert rec["iou"] == 0.7
    # IoU exactly 0.8 and 0.9 with larger masks (I/U = 80/100, 90/100).
    gt100 = _mask(10, 10, (0, 10, 0, 10))
    m.update(_mask(10, 10, (0, 8, 0, 10)), gt100, False, False)
    m.update(_mask(10, 10, (0, 9, 0, 10)), gt100, False, False)
    m.update(_mask(10, 10, (0, 6, 0, 10)), gt100, False, False)  # 0.6: below every threshold
    m.update(EMPTY, EMPTY, True, True)  # no-target sample: excluded from Pr@
    r = m.compute()
    assert r["n_target"] == 4
    assert r["Pr@0.7"] == 75.0  # 0.7, 0.8, 0.9
    assert r["Pr@0.8"] == 50.0  # 0.8, 0.9
    assert r["Pr@0.9"] == 25.0  # 0.9


def test_both_accuracy_families():
    m = GRESMeter()
    # 3 TP, 1 FN, 2 FP, 4 TN.
    for _ in range(3):
        m.update(EMPTY, EMPTY, True, True)
    m.update(EMPTY, EMPTY, False, True)
    for _ in range(2):
        m.update(PRED, GT, True, False)
    for _ in range(4):
        m.update(GT, GT, False, False)
    r = m.compute()
    assert (r["TP"], r["FN"], r["FP"], r["TN"]) == (3, 1, 2, 4)
    assert r["N-acc"] == pytest.approx(100 * 3 / 4)
    assert r["T-acc"] == pytest.approx(100 * 4 / 6)
    assert r["N-acc(MABP-code)"] == pytest.approx(100 * 3 / 5)
    assert r["T-acc(MABP-code)"] == pytest.approx(100 * 3 / 6)


def test_undefined_values_are_none_not_nan():
    r = GRESMeter().compute()
    assert r["n"] == 0 and r["gIoU"] is None and r["cIoU"] is None and r["N-acc"] is None
    assert r["N-acc(MABP-code)"] == 0.0 and r["T-acc(MABP-code)"] == 0.0  # +1 denominators
    m = GRESMeter()
    m.update(GT, GT, False, False)  # only target samples: ReLA N-acc undefined
    r = m.compute()
    assert r["N-acc"] is None and r["T-acc"] == 100.0


def test_breakdown_by_tag():
    m = GRESMeter()
    m.update(GT, GT, False, False, tags={"target": "single", "type": "attribute"})
    m.update(PRED, GT, False, False, tags={"target": "multi-mixed", "type": "relation"})
    m.update(EMPTY, EMPTY, True, True, tags={"target": "no-target", "type": "attribute"})
    m.update(PRED, EMPTY, False, True, tags={"target": "no-target", "type": "relation"})
    by_target = m.breakdown("target")
    assert set(by_target) == {"single", "multi-mixed", "no-target"}
    assert by_target["single"]["gIoU"] == 100.0 and by_target["single"]["n"] == 1
    assert by_target["multi-mixed"]["cIoU"] == pytest.approx(100 * 4 / 28)
    assert by_target["no-target"]["N-acc"] == 50.0 and by_target["no-target"]["Pr@0.7"] is None
    by_type = m.breakdown("type")
    assert by_type["attribute"]["n"] == 2 and by_type["attribute"]["gIoU"] == 100.0
    assert by_type["relation"]["n"] == 2 and by_type["relation"]["sum_U"] == 28 + 16
    assert m.breakdown("missing_key") == {"None": m.compute()}
    text = format_breakdown(by_target, key="target")
    assert "| multi-mixed |" in text and "| no-target |" in text


def _random_meter(seed: int, n: int, offset: int = 0) -> GRESMeter:
    rng = np.random.default_rng(seed)
    m = GRESMeter()
    for i in range(n):
        g_nt = bool(rng.random() < 0.3)
        gt = EMPTY if g_nt else rng.random((10, 10)) > 0.5
        m.update(rng.random((10, 10)) > 0.5, gt, bool(rng.random() < 0.3), g_nt,
                 tags={"target": "no-target" if g_nt else "single"}, sample_id=offset + i)
    return m


def test_merge_equals_single_meter_and_state_roundtrip():
    a, b = _random_meter(1, 7), _random_meter(2, 5, offset=7)
    whole = GRESMeter()
    whole.load_state_dict(a.state_dict())
    whole.merge(b)
    # A single meter fed the same samples in the same order.
    ref = GRESMeter()
    for rec_src in (a, b):
        ref.merge(rec_src.state_dict())
    assert whole.compute() == ref.compute()
    assert whole.per_sample() == a.per_sample() + b.per_sample()
    assert whole.compute()["n"] == 12
    # Plain-array state (what DDP gathers) survives a round trip.
    state = whole.state_dict()
    assert all(isinstance(state[k], np.ndarray) for k in ("iou", "I", "U", "outcome"))
    again = GRESMeter.from_state_dict(state)
    assert again.compute() == whole.compute() and again.breakdown("target") == whole.breakdown("target")
    assert GRESMeter.from_arrays(whole.to_arrays()).compute() == whole.compute()


def test_merge_matches_direct_updates():
    rng = np.random.default_rng(3)
    samples = []
    for _ in range(10):
        g_nt = bool(rng.random() < 0.4)
        samples.append((rng.random((6, 6)) > 0.5, EMPTY[:6, :6] if g_nt else rng.random((6, 6)) > 0.5,
                        bool(rng.random() < 0.4), g_nt))
    single, p1, p2 = GRESMeter(), GRESMeter(), GRESMeter()
    for k, s in enumerate(samples):
        single.update(*s)
        (p1 if k < 4 else p2).update(*s)
    assert p1.merge(p2).compute() == single.compute()


def test_decide_no_target_rules():
    # Two samples, three heads. Class 1 = no target.
    h0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # head 0: sample 0 NT
    h1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # middle head: none
    h2 = np.array([[1.0, 0.0], [0.0, 2.0]])  # last head: sample 1 NT
    heads = [h0, h1, h2]
    assert decide_no_target(heads, "first").tolist() == [True, False]
    assert decide_no_target(heads, "last").tolist() == [False, True]
    assert decide_no_target(heads, "any").tolist() == [True, True]
    assert decide_no_target(h1, "any").tolist() == [False, False]  # a single (B, 2) array
    assert decide_no_target([np.array([[0.5, 0.5]])], "any").tolist() == [False]  # tie → class 0
    with pytest.raises(ValueError):
        decide_no_target(heads, "or")


def test_apply_min_pixels():
    small = _mask(20, 20, (0, 7, 0, 7))  # 49 px
    big = _mask(20, 20, (0, 5, 0, 10))  # 50 px
    out, empty = apply_min_pixels(small, 50)
    assert empty is True and not out.any()
    out, empty = apply_min_pixels(big, 50)
    assert empty is False and out.sum() == 50
    out, empty = apply_min_pixels(np.stack([small, big]), 50)
    assert empty.tolist() == [True, False] and out[0].sum() == 0 and out[1].sum() == 50
    assert small.sum() == 49  # input not modified


def test_format_table_has_both_rows():
    m = GRESMeter()
    m.update(GT, GT, False, False)
    m.update(EMPTY, EMPTY, True, True)
    paper = get_paper_row("grefcoco", "val")
    text = format_table(m.compute(), paper, nt_rule="any")
    lines = text.splitlines()
    assert lines[0].startswith("| | cIoU | gIoU | N-acc | T-acc | Pr@0.9 | Pr@0.8 | Pr@0.7 |")
    assert any(l.startswith("| ours | 100.00 | 100.00 |") for l in lines)
    assert "| paper | 65.69 | 68.79 | 64.55 | 96.40 | 26.17 | 58.92 | 70.45 |" in lines
    assert "TP/(TP+FP+1)" in text and "any" in text
    # With ReLA's family the paper has no comparable T-acc: shown as a dash, not a wrong number.
    rela = format_table(m.compute(), paper, acc="rela")
    assert "| paper | 65.69 | 68.79 | – | – |" in rela


def test_paper_results_constant():
    assert PAPER_RESULTS["grefcoco"]["testA"]["cIoU"] == 71.60
    assert PAPER_RESULTS["grefcoco"]["testB"]["gIoU"] == 64.01
    assert PAPER_RESULTS["grefcoco-readme"]["val"]["gIoU"] == 68.86
    assert PAPER_RESULTS["refcoco"]["testB"]["cIoU"] == 71.07
    assert PAPER_RESULTS["refcoco+"]["testA"]["cIoU"] == 71.76
    assert PAPER_RESULTS["refcocog"]["test"]["cIoU"] == 66.64
    assert PAPER_RESULTS["refcocog-google"]["val"]["cIoU"] == 62.84
