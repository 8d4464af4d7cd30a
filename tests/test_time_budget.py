"""train/time_budget.py: the schedule length that fits a wall-clock budget (scripts/train_on_gpu.sh)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.time_budget import main, plan_max_steps


def _records(t0: float, startup: float, sec: float, steps=range(10, 170, 10)):
    # What the engine logs: a train record every 10 steps, plus an eval record that must be ignored.
    recs = [{"type": "train", "step": s, "time": t0 + startup + s * sec, "sec_per_step": sec * 0.7} for s in steps]
    recs.insert(3, {"type": "eval", "step": 30, "gIoU": 50.0})
    return recs


def test_plan_uses_wall_clock_and_leaves_the_safety_share():
    t0 = 1000.0
    recs = _records(t0, startup=25.0, sec=0.3)
    now = recs[-1]["time"] + 5.0  # the stop and the planning took 5 s
    max_steps, why = plan_max_steps(recs, t0, budget_s=600.0, now=now, safety=0.88)
    left = 600.0 - (now - t0) - 25.0
    assert max_steps == 160 + int(left / 0.3 * 0.88)
    assert "0.300 s/step" in why and "start-up 25 s" in why
    # The engine's sec_per_step (0.21 here) is not what plans the run: it would overrun the budget.
    assert max_steps < 160 + int(left / 0.21 * 0.88)


def test_plan_reads_only_the_last_run_of_a_resumed_folder():
    # an earlier, interrupted measuring phase (an hour before, run "a") must not count
    old = [dict(r, run="a") for r in _records(0.0, startup=20.0, sec=0.5, steps=range(10, 60, 10))]
    t0 = 3600.0
    new = [dict(r, run="b", step=r["step"] + 50) for r in _records(t0, startup=25.0, sec=0.3)
           if r.get("type") == "train"]
    now = new[-1]["time"] + 5.0
    max_steps, why = plan_max_steps(old + new, t0, budget_s=600.0, now=now)
    assert "0.300 s/step" in why and "start-up 25 s" in why and "after 210 steps" in why
    assert max_steps == 210 + int((600.0 - (now - t0) - 25.0) / 0.3 * 0.88)


def test_plan_when_the_budget_is_already_spent_still_moves_on():
    recs = _records(0.0, startup=10.0, sec=1.0)
    max_steps, _ = plan_max_steps(recs, 0.0, budget_s=60.0, now=500.0)
    assert max_steps == 161


def test_plan_refuses_a_phase_too_short_to_measure():
    with pytest.raises(ValueError, match="CALIB_S"):
        plan_max_steps([{"type": "train", "step": 10, "time": 5.0}], 0.0, 600.0)


def test_cli(tmp_path, capsys):
    t0 = 1_000_000.0
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in _records(t0, 20.0, 0.25)) + "\n")
    # A budget far in the past: the CLI still prints a schedule longer than the steps done.
    assert main([str(tmp_path), str(t0), "600"]) == 0
    out = capsys.readouterr()
    assert int(out.out.strip()) == 161 and "max_steps 161" in out.err
    assert main([str(tmp_path / "missing"), "0", "600"]) == 2
    assert "log.jsonl" in capsys.readouterr().err
    assert main(["only-one-arg"]) == 2
    assert main([str(tmp_path), "yesterday", "600"]) == 2 and "error" in capsys.readouterr().err


_STAND_IN = """#!/usr/bin/env bash
# Records what scripts/train_on_gpu.sh passes to train.fit / train.export; anything else goes to Python.
if [ "$1" = -m ] && [ "$2" = train.fit ]; then
  shift 2
  "{py}" -c 'import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], "w"))' "{rec}" "$@"
  printf '%s\\n' '{{"type": "train", "step": 10, "samples_per_sec": 3.0}}' > "{out}/log.jsonl"
  exit 0
fi
if [ "$1" = -m ] && [ "$2" = train.export ]; then exit 0; fi
exec "{py}" "$@"
"""


def _run_script(tmp_path, extra: str):
    out, rec = tmp_path / "run", tmp_path / "argv.json"
    out.mkdir()
    stand_in = tmp_path / "python"
    stand_in.write_text(_STAND_IN.format(py=sys.executable, rec=rec, out=out))
    stand_in.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_on_gpu.sh"
    env = dict(os.environ, PYTHON=str(stand_in), DEVICE="cpu", MAX_STEPS="10", MINUTES="0.5", OUT=str(out), EXTRA=extra)
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    return proc, (json.loads(rec.read_text()) if rec.exists() else None)


def test_train_on_gpu_keeps_a_quoted_extra_override_whole(tmp_path):
    # EXTRA is split by shell quoting rules: a YAML list with spaces stays one key=value (it was once
    # word-split by bash into three broken overrides).
    proc, argv = _run_script(tmp_path, "train.seed=10 'optim.freeze=[backbone.backbone.stem, backbone.backbone.bn0]'")
    assert proc.returncode == 0, proc.stderr
    assert argv[-2:] == ["train.seed=10", "optim.freeze=[backbone.backbone.stem, backbone.backbone.bn0]"]
    assert "schedule.max_steps=10" in argv and "train.device=cpu" in argv
    # No EXTRA: nothing extra is passed (not an empty-string argument).
    (tmp_path / "none").mkdir()
    proc, argv = _run_script(tmp_path / "none", "")
    assert proc.returncode == 0, proc.stderr
    assert argv[-1] == "train.ckpt_every=200"


def test_train_on_gpu_refuses_unbalanced_quotes_in_extra(tmp_path):
    proc, argv = _run_script(tmp_path, "train.seed=10 'optim.freeze=[a, b]")
    assert proc.returncode == 2 and argv is None
    assert "EXTRA is not a valid shell-quoted list" in proc.stderr
