"""train.average: the weighted mean of state dicts, its refusals, and the CLI's checkpoint (weights,
reset no-target threshold, record, vocabulary), on the tiny preset."""
import pytest
import torch

from mabp import build_mabp
from mabp.registry import load_checkpoint, save_checkpoint
from train import average
from train.average import average_state_dicts

pytestmark = pytest.mark.usefixtures("single_thread")


def test_uniform_and_weighted_means_keep_identical_and_integer_tensors():
    frozen = torch.randn(3, 3)
    a = {"w": torch.tensor([0.0, 2.0]), "frozen": frozen, "count": torch.tensor(7)}
    b = {"w": torch.tensor([4.0, 6.0]), "frozen": frozen.clone(), "count": torch.tensor(7)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["frozen"] is frozen  # bit-identical everywhere: untouched, so an export still leaves it out
    assert out["count"].item() == 7
    out = average_state_dicts([a, b], [1, 3])  # normalised: 0.25 / 0.75
    assert torch.allclose(out["w"], torch.tensor([3.0, 5.0]))
    half = {"w": torch.tensor([1.0, 3.0], dtype=torch.float16)}
    other = {"w": torch.tensor([2.0, 4.0], dtype=torch.float16)}
    got = average_state_dicts([half, other])["w"]
    assert got.dtype == torch.float16 and torch.equal(got, torch.tensor([1.5, 3.5], dtype=torch.float16))


@pytest.mark.parametrize("states, weights, match", [
    ([], None, "nothing to average"),
    ([{"w": torch.ones(2)}, {"w": torch.ones(2)}], [1.0], "1 weights for 2"),
    ([{"w": torch.ones(2)}, {"w": torch.ones(2)}], [1.0, 0.0], "positive"),
    ([{"w": torch.ones(2)}, {"w": torch.ones(2)}], [1.0, float("inf")], "positive"),
    ([{"w": torch.ones(2)}, {"v": torch.ones(2)}], None, "other tensors"),
    ([{"w": torch.ones(2)}, {"w": torch.ones(3)}], None, "not the same model"),
    ([{"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.float64)}], None, "not the same model"),
    ([{"n": torch.tensor([1, 2])}, {"n": torch.tensor([1, 3])}], None, "cannot be averaged"),
])
def test_refusals(states, weights, match):
    with pytest.raises(ValueError, match=match):
        average_state_dicts(states, weights)


def _tiny(seed: int):
    torch.manual_seed(seed)
    return build_mabp("tiny").eval()


def test_cli_writes_the_average_with_threshold_reset_and_record(tmp_path, capsys):
    m0, m1 = _tiny(0), _tiny(1)
    m0.cfg.inference.nt_threshold = 0.3  # a calibrated input: its threshold must not carry over
    train_config = {"data": {"dataset": "synthgres", "kwargs": {"world": "shapes"}}}
    p0 = save_checkpoint(m0, tmp_path / "a" / "last.pt", extra={"train_config": train_config, "step": 10})
    p1 = save_checkpoint(m1, tmp_path / "b" / "last.pt", extra={"train_config": train_config, "step": 20})
    out = tmp_path / "avg.pt"
    assert average.main([str(p0), str(p1), "--weights", "1", "3", "--fp32", "--out", str(out)]) == 0
    assert "choose it with python -m train.calibrate" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["inference"]["nt_threshold"] == 0.5
    assert [(r["file"], r["step"], r["weight"]) for r in ckpt["averaged_from"]] == [
        (str(p0), 10, 0.25), (str(p1), 20, 0.75)]
    assert ckpt["train_config"] == train_config
    assert "shapes" in ckpt["vocabulary"]["worlds"]
    got = build_mabp(checkpoint=out).state_dict()
    s0, s1 = m0.state_dict(), m1.state_dict()
    differ = [k for k in s0 if torch.is_floating_point(s0[k]) and not torch.equal(s0[k], s1[k])]
    assert differ  # two seeds: the test would prove nothing otherwise
    for k in differ:
        assert torch.allclose(got[k], 0.25 * s0[k] + 0.75 * s1[k], atol=1e-6), k


def test_cli_refuses_another_model_and_bad_arguments(tmp_path, capsys):
    p0 = save_checkpoint(_tiny(0), tmp_path / "a.pt")
    torch.manual_seed(0)
    small = build_mabp("tiny", image_size=64).eval()
    p1 = save_checkpoint(small, tmp_path / "b.pt")
    assert average.main([str(p0), str(p1), "--out", str(tmp_path / "x.pt")]) == 2
    assert "another model" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert average.main([str(p0), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        average.main([str(p0), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit):
        average.main([str(p0), str(p0), "--weights", "1", "--out", str(tmp_path / "x.pt")])
