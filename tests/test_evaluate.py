"""Tests of train.evaluate: the §4 protocol end to end on the tiny model, the CLI, and the SynthGRES
export → gRefCOCO loader round trip.

The model under test is always the real tiny MABP (random weights, 96²); where a known prediction is
needed its forward is wrapped to overwrite the *outputs* (the real forward still runs), so the whole
evaluate path — resizing, post-processing, NT rules, metrics — is exercised.
"""
from __future__ import annotations

import json
from typing import List

import cv2
import numpy as np
import pytest
import torch

from mabp.registry import build_mabp, save_checkpoint
from train.data import build_dataset
from train.evaluate import evaluate_model, format_report, main

N_SAMPLES = 20  # the first 20 SynthGRES val samples hold a few no-target ones and every target tag
SIZE = 96


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_mabp("tiny")


@pytest.fixture(scope="module")
def synth():
    ds = build_dataset("synthgres", "val", size=SIZE, length=N_SAMPLES)
    # Counts are read from the data, not hard-coded, so generator tweaks do not break these tests; they
    # only need both kinds of samples to be present.
    assert 0 < _n_nt(ds) < N_SAMPLES, "the first SynthGRES val samples need targets and no-targets"
    return ds


@pytest.fixture(scope="module")
def base_result(tiny, synth):
    """The tiny model on the SynthGRES samples, shared by the tests that only read it."""
    tiny.train()  # the engine calls evaluate mid-training: the mode must come back
    res = evaluate_model(tiny, synth, batch_size=8, progress=False)
    assert tiny.training
    tiny.eval()
    return res


def _n_nt(ds) -> int:
    return sum(bool(ds[i]["no_target"]) for i in range(len(ds)))


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
    return save_checkpoint(tiny, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _force(monkeypatch, model, nt: List[bool] = None, mask_logit: float = None) -> None:
    """Wrap the model's forward: run it, then overwrite NT logits (per head: True = says no target)
    and/or the final mask logits with a constant."""
    real = model.forward

    def forward(images, input_ids, attention_mask):
        out = real(images, input_ids, attention_mask)
        if nt is not None:
            b = images.shape[0]
            out["nt_logits"] = [torch.tensor([[-5.0, 5.0] if v else [5.0, -5.0]]).expand(b, 2) for v in nt]
        if mask_logit is not None:
            out["pred_masks"] = out["pred_masks"][:-1] + [torch.full_like(out["pred_masks"][-1], mask_logit)]
        return out

    monkeypatch.setattr(model, "forward", forward)


def _gt_at(dataset, size: int) -> List[np.ndarray]:
    """GT masks resized with NEAREST to size×size, computed independently of train.evaluate."""
    return [cv2.resize(dataset[i]["mask"].astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
            .astype(bool) for i in range(len(dataset))]


# ------------------------------------------------------------------------------------------ core
def test_evaluate_model_end_to_end(tiny, synth, base_result):
    res = base_result
    m = res["metrics"]
    for key in ("cIoU", "gIoU", "N-acc", "T-acc", "N-acc(MABP-code)", "T-acc(MABP-code)",
                "Pr@0.7", "Pr@0.8", "Pr@0.9", "TP", "FN", "FP", "TN"):
        assert key in m
    assert m["n"] == res["n"] == N_SAMPLES == len(res["per_sample"])
    assert m["n_no_target"] == _n_nt(synth)
    assert set(res["breakdowns"]["target"]) == {synth[i]["tags"]["target"] for i in range(N_SAMPLES)}
    assert "no-target" in res["breakdowns"]["target"] and "single" in res["breakdowns"]["target"]
    assert "type" in res["breakdowns"] and sum(g["n"] for g in res["breakdowns"]["type"].values()) == N_SAMPLES
    assert res["nt_rule"] == tiny.cfg.inference.nt_rule and res["threshold"] == 0.5
    # The chosen rule's side meter and the main meter are the same computation.
    assert res["per_rule"][res["nt_rule"]] == m
    assert len(res["per_head_nt"]) == 4 and all(h["n"] == N_SAMPLES for h in res["per_head_nt"])
    k = next(i for i in range(N_SAMPLES) if synth[i]["no_target"])
    rec = res["per_sample"][k]
    assert rec["index"] == k and rec["gt_nt"] and rec["outcome"] in ("TP", "FN")
    assert rec["sentence"] == synth[k]["sentence"] and rec["ref_id"] == synth[k]["ref_id"]
    assert len(rec["nt_probs"]) == 4 and 0 <= rec["nt_prob"] <= 1
    # Real datasets get the published rows beside ours (paper + README for gRefCOCO val).
    report = format_report(res, "grefcoco", "val")
    assert "| paper | 65.69 | 68.79 | 64.55 | 96.40 |" in report and "| README (rule any) | 65.72 |" in report
    assert "| paper |" not in format_report(res, "synthgres", "val")
    # Batch composition does not change a sample's result.
    res1 = evaluate_model(tiny, synth, batch_size=3, limit=5, progress=False)
    assert res1["n"] == 5
    assert [r["iou"] for r in res1["per_sample"]] == pytest.approx([r["iou"] for r in res["per_sample"][:5]], abs=1e-6)


def test_always_no_target_gives_known_numbers(tiny, synth, monkeypatch):
    _force(monkeypatch, tiny, nt=[True, True, True, True])
    res = evaluate_model(tiny, synth, batch_size=8, progress=False)
    m, n, n_nt = res["metrics"], N_SAMPLES, _n_nt(synth)
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (n_nt, 0, n - n_nt, 0)
    assert m["N-acc"] == 100.0 and m["T-acc"] == 0.0
    assert m["gIoU"] == pytest.approx(100.0 * n_nt / n)
    assert m["cIoU"] == 0.0 and m["sum_I"] == 0  # FP: I forced to 0, the raw mask still inflates U
    assert m["Pr@0.7"] == m["Pr@0.8"] == m["Pr@0.9"] == 0.0
    assert m["N-acc(MABP-code)"] == pytest.approx(100.0 * n_nt / (n_nt + 1))
    assert m["T-acc(MABP-code)"] == pytest.approx(100.0 * n_nt / (n + 1))
    assert res["breakdowns"]["target"]["no-target"]["N-acc"] == 100.0


def test_full_masks_never_no_target_gives_known_numbers(tiny, monkeypatch):
    # Canvas 128 ≠ model 96, so the image squash and the NEAREST GT resize are both exercised.
    ds = build_dataset("synthgres", "val", size=128, length=N_SAMPLES)
    _force(monkeypatch, tiny, nt=[False] * 4, mask_logit=10.0)
    res = evaluate_model(tiny, ds, batch_size=8, progress=False)
    gts = _gt_at(ds, SIZE)
    is_nt = np.array([ds[i]["no_target"] for i in range(N_SAMPLES)])
    area = SIZE * SIZE
    expected_iou = np.where(is_nt, 0.0, [g.sum() / area for g in gts])  # FN: 0 even though a mask exists
    got = np.array([r["iou"] for r in res["per_sample"]])
    np.testing.assert_allclose(got, expected_iou, atol=1e-12)
    m = res["metrics"]
    assert m["gIoU"] == pytest.approx(100.0 * expected_iou.mean())
    # ΣI = GT pixels of target samples; ΣU = a full canvas per sample (FN adds |pred| = S²).
    assert m["sum_I"] == sum(int(g.sum()) for g in gts) and m["sum_U"] == N_SAMPLES * area
    n_nt = int(is_nt.sum())
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (0, n_nt, 0, N_SAMPLES - n_nt)
    assert m["T-acc"] == 100.0 and m["N-acc"] == 0.0


def test_empty_masks_score_zero_and_rules_differ(tiny, synth, monkeypatch):
    # Head 0 says "no target", the others do not: first/any call everything no-target, last nothing.
    # One run reports every rule (its side meters; the end-to-end test ties them to the main meter).
    _force(monkeypatch, tiny, nt=[True, False, False, False], mask_logit=-10.0)
    res = evaluate_model(tiny, synth, batch_size=8, nt_rule="last", progress=False)
    last, n_nt = res["metrics"], _n_nt(synth)
    assert res["per_rule"]["last"] == last
    assert last["gIoU"] == 0.0 and last["cIoU"] == 0.0 and last["sum_U"] > 0  # TN: U = |gt|
    assert (last["TP"], last["FN"]) == (0, n_nt)  # an empty mask is still FN, IoU 0
    first, any_ = res["per_rule"]["first"], res["per_rule"]["any"]
    assert first == any_ and (first["TP"], first["FP"]) == (n_nt, N_SAMPLES - n_nt)
    assert first["gIoU"] == pytest.approx(100.0 * n_nt / N_SAMPLES)
    heads = res["per_head_nt"]
    assert heads[0]["TP"] == n_nt and heads[0]["FP"] == N_SAMPLES - n_nt and heads[3]["TN"] == N_SAMPLES - n_nt
    assert heads[0]["acc"] == pytest.approx(100.0 * n_nt / N_SAMPLES) and heads[3]["N-acc"] == 0.0


def test_model_without_nt_branch_uses_its_pixel_rule(synth, monkeypatch):
    # Table VI "branch removed": no NT head, so emptiness is the model's < 50 pixels rule even when the
    # caller (the training engine, the CLI) passes the official min_pixels 0. Before, such a model
    # could never say "no target" there and its training curves showed N-acc 0.
    torch.manual_seed(0)
    model = build_mabp("tiny", decoder__nt_supervision="none")
    assert model.cfg.inference.min_pixels == 50
    n_nt = _n_nt(synth)
    _force(monkeypatch, model, mask_logit=-10.0)  # empty masks: every sample is "no target"
    res = evaluate_model(model, synth, batch_size=8, progress=False)
    assert res["min_pixels"] == 50
    m = res["metrics"]
    assert (m["TP"], m["FP"], m["FN"]) == (n_nt, N_SAMPLES - n_nt, 0) and m["N-acc"] == 100.0
    _force(monkeypatch, model, mask_logit=10.0)  # full masks: never "no target"
    m = evaluate_model(model, synth, batch_size=8, progress=False)["metrics"]
    assert (m["TP"], m["FN"]) == (0, n_nt) and m["T-acc"] == 100.0
    # an explicit positive value still wins; a model with an NT branch keeps the official 0
    assert evaluate_model(model, synth, batch_size=8, progress=False, min_pixels=7, limit=2)["min_pixels"] == 7
    assert evaluate_model(build_mabp("tiny"), synth, batch_size=8, progress=False, limit=2)["min_pixels"] == 0


# ------------------------------------------------------------------------------------------ CLI
def test_cli_writes_results(ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["--checkpoint", str(ckpt), "--dataset", "synthgres", "--split", "val", "--size", str(SIZE),
                 "--limit", "8", "--batch-size", "4", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no-target rule: any (from the checkpoint's inference.nt_rule)" in printed
    assert "| | cIoU | gIoU | N-acc | T-acc | Pr@0.9 | Pr@0.8 | Pr@0.7 |" in printed and "| ours |" in printed
    assert "By target tag" in printed and "By expression type" in printed and "head 3 alone" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 8 and results["dataset"] == "synthgres" and results["nt_rule"] == "any"
    assert len(results["checkpoint_sha256"]) == 16 and results["samples_per_s"] > 0
    for key in ("N-acc", "T-acc", "N-acc(MABP-code)", "T-acc(MABP-code)"):
        assert key in results["metrics"]
    lines = (out / "per_sample.jsonl").read_text().splitlines()
    assert len(lines) == 8
    rec = json.loads(lines[0])
    assert {"sentence", "iou", "outcome", "nt_prob", "tags", "ref_id", "sent_id", "image_id"} <= set(rec)


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_bad_input_exit_2(ckpt, tmp_path, capsys):
    base = ["--no-progress", "--out", str(tmp_path / "o")]
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "synthgres", "--split", "val"] + base) == 2
    assert "checkpoint not found" in _err(capsys)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(junk), "--dataset", "synthgres", "--split", "val", "--limit", "1"] + base) == 2
    assert "cannot use checkpoint" in _err(capsys)
    assert main(["--checkpoint", str(ckpt), "--dataset", "grefcoco", "--split", "val",
                 "--root", str(tmp_path / "missing")] + base) == 2
    assert "dataset root not found" in _err(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--checkpoint", str(ckpt), "--dataset", "grefcoco", "--split", "val", "--root", str(empty)] + base) == 2
    assert "refs file not found" in _err(capsys)
    assert main(["--checkpoint", str(ckpt), "--dataset", "synthgres", "--split", "vall"] + base) == 2
    assert "no split 'vall'" in _err(capsys)
    assert main(["--checkpoint", str(ckpt), "--dataset", "synthgres", "--split", "val", "--nt-threshold", "1"] + base) == 2
    assert "--nt-threshold must be strictly between 0 and 1" in _err(capsys)
    assert main(["--checkpoint", str(ckpt), "--dataset", "synthgres", "--split", "val",
                 "--nt-thresholds", "0.5", "1.5"] + base) == 2
    assert "--nt-thresholds must each be strictly between 0 and 1, got 1.5" in _err(capsys)


def test_cli_nt_threshold_is_used_and_reported(ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(ckpt), "--dataset", "synthgres", "--split", "val", "--size", str(SIZE),
                 "--limit", "4", "--out", str(out), "--no-progress", "--nt-threshold", "0.05",
                 "--nt-thresholds", "0.95", "0.05", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "no-target threshold 0.05 (calibrated; 0.5 = argmax)" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["nt_threshold"] == 0.05
    # The extra thresholds come from the same pass: the run's own one reproduces the main metrics, and a
    # higher threshold can only call fewer samples "no target".
    per = results["per_nt_threshold"]
    assert list(per) == ["0.05", "0.5", "0.95"]
    for key in ("gIoU", "cIoU", "N-acc", "T-acc"):
        assert per["0.05"][key] == pytest.approx(results["metrics"][key], nan_ok=True)
    nt_calls = [per[t]["TP"] + per[t]["FP"] for t in ("0.05", "0.5", "0.95")]
    assert nt_calls == sorted(nt_calls, reverse=True)
    report = (out / "report.md").read_text()
    assert "### Other no-target thresholds" in report
    assert "| 0.05 |" in report and "this run's" in report and "| 0.95 |" in report


# ------------------------------------------------------------------------------------------ export round trip
def _compare(synth, loaded, exact: bool) -> None:
    assert len(loaded) == len(synth)
    for i in range(len(synth)):
        a, b = synth[i], loaded[i]
        assert (a["sentence"], a["no_target"], a["tags"]["target"], a["ref_id"], a["sent_id"], a["image_id"]) == \
               (b["sentence"], b["no_target"], b["tags"]["target"], b["ref_id"], b["sent_id"], b["image_id"])
        assert np.array_equal(a["image"], b["image"])  # PNG is lossless
        if exact:
            assert np.array_equal(a["mask"], b["mask"]), i
        elif a["no_target"]:
            assert not b["mask"].any()
        else:
            inter, union = np.logical_and(a["mask"], b["mask"]).sum(), np.logical_or(a["mask"], b["mask"]).sum()
            assert inter / union >= 0.97, (i, inter / union)


def test_export_polygons_round_trip(synth, tmp_path):
    from train.data.synthgres import export_split

    export_split("val", str(tmp_path), num=N_SAMPLES, size=SIZE, rle=False, progress=False)
    _compare(synth, build_dataset("grefcoco", "val", root=str(tmp_path)), exact=False)


def test_export_rle_round_trip_evaluates_identically(synth, base_result, ckpt, tmp_path, capsys):
    from train.data.synthgres import export_split

    export_split("val", str(tmp_path / "export"), num=N_SAMPLES, size=SIZE, rle=True, progress=False)
    loaded = build_dataset("grefcoco", "val", root=str(tmp_path / "export"))
    _compare(synth, loaded, exact=True)
    # Evaluate the export through the CLI (the tiny model rebuilt from its checkpoint) with
    # `--dataset grefcoco --root <export>`: the generator's numbers, sample for sample.
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpt), "--dataset", "grefcoco", "--root", str(tmp_path / "export"),
                 "--split", "val", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SynthGRES export, so no published gRefCOCO row" in printed and "| paper |" not in printed
    exp = json.loads((out / "results.json").read_text())
    assert exp["n"] == N_SAMPLES and exp["synthgres_export"]
    ours = json.loads(json.dumps(base_result))  # as JSON, like results.json
    assert exp["metrics"] == ours["metrics"]
    assert exp["breakdowns"] == ours["breakdowns"]  # target, and the export's expression type / nt kind
    assert set(exp["breakdowns"]) >= {"target", "type"}
    assert exp["per_rule"] == ours["per_rule"] and exp["per_head_nt"] == ours["per_head_nt"]
    per_sample = [json.loads(line) for line in (out / "per_sample.jsonl").read_text().splitlines()]
    assert [(r["ref_id"], r["sentence"], r["iou"], r["outcome"]) for r in per_sample] == \
           [(r["ref_id"], r["sentence"], r["iou"], r["outcome"]) for r in ours["per_sample"]]


def test_engine_and_cli_share_one_evaluation_loop(tiny, synth, base_result):
    """The training engine's validation and train.evaluate run the same loop: same metrics, sample for sample."""
    from torch.utils.data import DataLoader, Subset

    from mabp.tokenizer import TextTokenizer
    from train.collate import Collator
    from train.engine import evaluate

    loader = DataLoader(Subset(synth, list(range(len(synth)))), batch_size=3,  # as the engine builds it
                        collate_fn=Collator(TextTokenizer(tiny.cfg.text), SIZE), generator=torch.Generator())
    rng = torch.get_rng_state()
    metrics, meter = evaluate(tiny, loader, torch.device("cpu"), nt_rule=tiny.cfg.inference.nt_rule)
    assert torch.equal(rng, torch.get_rng_state())  # an evaluation never moves the global RNG
    ref = base_result["metrics"]
    assert {k: metrics[k] for k in ("gIoU", "cIoU", "N-acc", "T-acc", "n")} == \
           {k: ref[k] for k in ("gIoU", "cIoU", "N-acc", "T-acc", "n")}
    assert [m["iou"] for m in meter.per_sample()] == [r["iou"] for r in base_result["per_sample"]]
    assert metrics["NT-AUROC"] == pytest.approx(base_result["nt_auroc"], abs=1e-9)  # same probabilities


def test_nt_auroc_ranks_no_target_probabilities():
    from train.evaluate import nt_auroc

    rec = lambda p, nt: {"nt_prob": p, "nt_probs": [p], "gt_nt": nt}  # noqa: E731
    # no-target 0.9 outranks both targets, no-target 0.4 outranks one of them (0.2, not 0.6): 3 of 4 pairs
    assert nt_auroc([rec(0.9, True), rec(0.2, False), rec(0.6, False), rec(0.4, True)]) == pytest.approx(75.0)
    assert nt_auroc([rec(0.5, True), rec(0.5, False)]) == pytest.approx(50.0)  # a tie counts one half
    assert nt_auroc([rec(0.9, True), rec(0.1, True)]) is None  # one kind of sample only: undefined
    # a model without an NT branch has no probability to rank (nt_prob is its pixel rule's 0 / 1)
    assert nt_auroc([{"nt_prob": 1.0, "nt_probs": [], "gt_nt": True},
                     {"nt_prob": 0.0, "nt_probs": [], "gt_nt": False}]) is None
    assert nt_auroc([]) is None


def test_nt_auroc_of_a_real_evaluation_counts_pairs(base_result):
    """The AUROC of evaluate_model equals the share of (no-target, target) pairs ranked right, counted here."""
    per = base_result["per_sample"]
    pos = [r["nt_prob"] for r in per if r["gt_nt"]]
    neg = [r["nt_prob"] for r in per if not r["gt_nt"]]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    assert base_result["nt_auroc"] == pytest.approx(100.0 * wins / (len(pos) * len(neg)))
    assert "No-target AUROC" in format_report(base_result, "synthgres", "val")
