"""The no-target threshold: the decision at 0.5 is the official argmax, other thresholds move it, the
evaluation scores a grid from one pass, and train.calibrate writes the chosen one into a checkpoint."""
import numpy as np
import pytest
import torch

from mabp import build_mabp
from mabp.postprocess import decide_no_target, postprocess
from mabp.predictor import MABPPredictor
from mabp.registry import load_checkpoint, save_checkpoint
from train import calibrate
from train.data import build_dataset
from train.evaluate import evaluate_model


def _logits(*p_nt):
    """(B, 2) logits whose softmax gives no-target probabilities p_nt."""
    p = torch.tensor(p_nt, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], -1).float()


def test_half_is_the_argmax_and_other_thresholds_move_the_decision():
    heads = [_logits(0.2, 0.45, 0.6), _logits(0.1, 0.35, 0.4)]
    tie = [torch.tensor([[1.0, 1.0]])]  # equal logits: argmax says class 0, as the official code does
    for rule in ("first", "last", "any"):
        votes = torch.stack([h.argmax(-1) == 1 for h in heads])
        expect = {"first": votes[0], "last": votes[-1], "any": votes.any(0)}[rule]
        assert torch.equal(decide_no_target(heads, rule)[0], expect)
        assert torch.equal(decide_no_target(heads, rule, 0.5)[0], expect)
    assert not decide_no_target(tie, "any", 0.5)[0].item()
    assert decide_no_target(heads, "any", 0.3)[0].tolist() == [False, True, True]
    assert decide_no_target(heads, "last", 0.3)[0].tolist() == [False, True, True]
    assert decide_no_target(heads, "first", 0.7)[0].tolist() == [False, False, False]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="threshold"):
            decide_no_target(heads, "any", bad)
    masks = [torch.zeros(3, 4, 4)]
    post = postprocess(masks, heads, (4, 4), nt_rule="any", nt_threshold=0.3)
    assert post.no_target.tolist() == [False, True, True]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_mabp("tiny").eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(model, path, extra={"train_config": {"data": {"kwargs": {"world": "shapes"}}}})
    return path


def test_predictor_uses_the_config_threshold_and_reuses_outputs(tiny_ckpt):
    model = build_mabp(checkpoint=tiny_ckpt).eval()
    p = MABPPredictor(model)
    p.set_image(np.random.RandomState(0).randint(0, 255, (48, 48, 3)).astype(np.uint8))
    base = p.predict("the red circle")
    assert base.nt_threshold == 0.5
    below = p.predict("the red circle", nt_threshold=max(0.01, base.nt_prob - 0.01))
    above = p.predict("the red circle", nt_threshold=min(0.99, base.nt_prob + 0.01))
    assert below.no_target and not above.no_target
    assert below.latency_ms < 50 and below.nt_prob == base.nt_prob  # cached outputs, no model time
    model.cfg = model.cfg.override(**{"inference.nt_threshold": max(0.01, base.nt_prob - 0.01)})
    p = MABPPredictor(model)  # the predictor reads the model's inference settings when built
    p.set_image(np.random.RandomState(0).randint(0, 255, (48, 48, 3)).astype(np.uint8))
    assert p.predict("the red circle").no_target


def test_evaluation_scores_a_grid_from_one_pass(tiny_ckpt):
    model = build_mabp(checkpoint=tiny_ckpt).eval()
    ds = build_dataset("synthgres", "val", size=model.cfg.image_size, length=24)
    res = evaluate_model(model, ds, batch_size=8, progress=False, nt_thresholds=(0.2, 0.5, 0.8))
    assert res["nt_threshold"] == 0.5 and set(res["per_nt_threshold"]) == {0.2, 0.5, 0.8}
    assert res["per_nt_threshold"][0.5]["gIoU"] == pytest.approx(res["metrics"]["gIoU"])
    at = evaluate_model(model, ds, batch_size=8, progress=False, nt_threshold=0.2)
    assert at["nt_threshold"] == 0.2
    for key in ("gIoU", "cIoU", "N-acc", "T-acc"):
        assert at["metrics"][key] == pytest.approx(res["per_nt_threshold"][0.2][key], nan_ok=True)
    # a lower threshold never says "no target" less often
    n_nt = lambda m: m["TP"] + m["FP"]  # noqa: E731
    per = res["per_nt_threshold"]
    assert n_nt(per[0.2]) >= n_nt(per[0.5]) >= n_nt(per[0.8])


def test_choose_threshold_takes_the_best_and_breaks_ties_towards_half():
    per = {0.3: {"gIoU": 70.0}, 0.4: {"gIoU": 72.0}, 0.5: {"gIoU": 71.0}, 0.6: {"gIoU": 72.0}}
    assert calibrate.choose_threshold(per) == 0.4 or calibrate.choose_threshold(per) == 0.6
    per[0.45] = {"gIoU": 72.0}
    assert calibrate.choose_threshold(per) == 0.45
    assert calibrate.choose_threshold({0.2: {"gIoU": 1.0}, 0.8: {"gIoU": 1.0}, 0.5: {"gIoU": 1.0}}) == 0.5
    with pytest.raises(ValueError):
        calibrate.choose_threshold({0.5: {"gIoU": None}})


def test_calibrate_writes_the_threshold_and_keeps_the_weights(tiny_ckpt, tmp_path, capsys):
    dst = tmp_path / "calibrated.pt"
    code = calibrate.main(["--checkpoint", str(tiny_ckpt), "--samples", "16", "--grid", "0.3", "0.7",
                           "--out", str(dst), "--no-progress", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| 0.3 |" in out and "| 0.5 |" in out and "| 0.7 |" in out and "chosen no-target threshold" in out
    src, new = load_checkpoint(tiny_ckpt), load_checkpoint(dst)  # the renewed checksum verifies
    rec = new["nt_calibration"]
    assert rec["split"] == "train" and rec["world"] == "shapes" and rec["n"] == 16
    assert rec["seed"] == calibrate.CALIBRATION_SEED and set(rec["grid"]) == {"0.3", "0.5", "0.7"}
    assert new["config"]["inference"]["nt_threshold"] == rec["chosen"]
    assert rec["chosen"] == calibrate.choose_threshold({float(k): v for k, v in rec["grid"].items()})
    assert all(torch.equal(src["model"][k], new["model"][k]) for k in src["model"])
    assert build_mabp(checkpoint=dst).cfg.inference.nt_threshold == rec["chosen"]


def test_calibrate_refuses_bad_input(tiny_ckpt, tmp_path, capsys):
    assert calibrate.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert calibrate.main(["--checkpoint", str(tiny_ckpt), "--grid", "1.5"]) == 2
    assert calibrate.main(["--checkpoint", str(tiny_ckpt), "--samples", "0"]) == 2
    assert calibrate.main(["--checkpoint", str(tiny_ckpt), "--dataset", "grefcoco"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "between 0 and 1" in err and "--split" in err
    with pytest.raises(ValueError, match="nt_threshold"):
        build_mabp("tiny", inference__nt_threshold=1.0)
