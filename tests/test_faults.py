"""Checkpoints and training under faults (issue 14 §3, §4), on the tiny preset (seconds each).

Bad checkpoints give one line naming the file (exit 2) in train.predict, app.py and train.fit's resume;
one flipped byte fails the checksum; a full disk keeps the previous checkpoint and removes the partial
file; two Ctrl-C presses save the state of one step boundary; a SIGTERM to the whole process group
with DataLoader workers saves last.pt; a second run in the same folder is refused; a dead run's lock is
taken over; log.jsonl is rewritten atomically and every record carries the run id.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mabp.registry as registry
from mabp.registry import (CheckpointError, CheckpointWriteError, build_mabp, load_checkpoint,
                           save_checkpoint)
from train.checkpointing import previous_path
from train.fit import fit, main as fit_main
from train.run_lock import RunLock, RunLockedError
from tests.test_train import tiny_extra as _tiny_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "configs" / "tiny_synthgres.yaml"

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_extra(out: Path, **sections) -> dict:
    """test_train's few-step tiny run, without evaluations and with a checkpoint every 2 steps."""
    return _tiny_run(out, **{**sections, "train": {"eval_every": 0, "ckpt_every": 2, **sections.get("train", {})}})


def cli_args(out: Path, *more: str) -> list:
    return ["--config", str(TINY), f"train.output_dir={out}", "train.batch_size=2", "data.epoch_length=8",
            "data.val_samples=2", "train.eval_every=0", "train.tensorboard=false", "train.log_every=1", *more]


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_mabp("tiny"), tmp_path_factory.mktemp("ck") / "tiny.pt")


def _truncated(good: Path, dst: Path) -> Path:
    data = good.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _one_error_line(stderr: str, needle: str) -> None:
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1 and needle in errors[0], stderr


# --------------------------------------------------------------------------------------- §3 one clean error
def test_flipped_byte_fails_the_checksum(good_ckpt, tmp_path):
    data = bytearray(good_ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a tensor: torch.load alone would not notice
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: its content does not match the checksum") as e:
        load_checkpoint(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert load_checkpoint(good_ckpt)["checksum"]["sha256"]


def test_predict_cli_bad_checkpoint_is_one_line_exit_2(good_ckpt, tmp_path, capsys):
    from train import predict

    bad = _truncated(good_ckpt, tmp_path / "trunc.pt")
    code = predict.main(["--checkpoint", str(bad), "--image", str(ROOT / "assets/examples/scene.png"),
                         "--text", "x", "--out", str(tmp_path / "o")])
    assert code == 2
    _one_error_line(capsys.readouterr().err, str(bad))
    with pytest.raises(CheckpointError):  # the shared loader, for any other caller
        build_mabp(checkpoint=bad)


@pytest.mark.slow
def test_app_bad_checkpoint_is_one_line_exit_2(good_ckpt, tmp_path):
    bad = _truncated(good_ckpt, tmp_path / "trunc.pt")
    proc = subprocess.run([sys.executable, "app.py", "--checkpoint", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, str(bad))


def test_resume_from_bad_last_pt_falls_back_to_previous(tmp_path):
    out = tmp_path / "run"
    fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 4}))
    assert load_checkpoint(out / "last.pt")["step"] == 4
    assert load_checkpoint(previous_path(out / "last.pt"))["step"] == 2  # kept when last.pt was replaced
    _truncated(out / "last.pt", out / "last.pt")  # a corrupt last.pt (e.g. a paused concurrent write)
    with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
        result = fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 6}))
    assert result["step"] == 6
    # Neither readable: one line with what to do, exit 2.
    _truncated(out / "last.pt", out / "last.pt")
    _truncated(out / "last.pt", previous_path(out / "last.pt"))
    err_out = subprocess.run([sys.executable, "-m", "train.fit", *cli_args(out, "schedule.max_steps=8")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert err_out.returncode == 2
    _one_error_line(err_out.stderr, "train.resume=false")


# ---------------------------------------------------------------------------------------------- disk full
def test_disk_full_keeps_previous_checkpoint_and_removes_partial(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 2}))
    before = (out / "last.pt").read_bytes()
    real_write = registry._RecordingFile.write
    written = {"n": 0}

    def enospc(self, data):
        written["n"] += len(memoryview(data).cast("B"))
        if written["n"] > 4096:  # some bytes go out, then the disk is full
            exc = OSError(errno.ENOSPC, "No space left on device")
            self.error = self.error or exc
            raise exc
        return real_write(self, data)

    monkeypatch.setattr(registry._RecordingFile, "write", enospc)
    code = fit_main(cli_args(out, "schedule.max_steps=4"))
    err = capsys.readouterr().err
    assert code == 1
    _one_error_line(err, "no space left on device")
    assert str(out / "last.pt") in err and "previous last.pt is unchanged" in err
    assert not (out / "last.pt.tmp").exists()
    assert (out / "last.pt").read_bytes() == before and load_checkpoint(out / "last.pt")["step"] == 2


# ------------------------------------------------------------------------------------------- two Ctrl-C
def test_double_ctrl_c_saves_the_step_boundary_state(tmp_path, monkeypatch):
    """Ctrl-C twice, the second inside the next step's forward (after its dropout masks were drawn):
    last.pt must hold the RNG of the step boundary, so the resumed run equals the straight one."""
    from train.engine import Trainer

    straight = fit(str(TINY), extra=tiny_extra(tmp_path / "a", schedule={"max_steps": 4}))
    assert straight["step"] == 4

    original = Trainer.train_step
    state = {"armed": False}

    def train_step(self, batch):
        if self.step == 2 and not state["armed"]:
            state["armed"] = True
            torch.rand(1000)  # what the forward's dropout does to the global RNG...
            os.kill(os.getpid(), signal.SIGINT)  # ...then Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)  # and again, 50 ms later: KeyboardInterrupt right here
            time.sleep(0.05)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    part = fit(str(TINY), extra=tiny_extra(tmp_path / "b", schedule={"max_steps": 4}))
    assert part["interrupted"] and part["step"] == 2
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = fit(str(TINY), extra=tiny_extra(tmp_path / "b", schedule={"max_steps": 4}))
    assert resumed["step"] == 4
    wa, wb = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].numel())
    assert worst <= 1e-6, f"resumed run differs from the straight one by {worst}"


# ------------------------------------------------------------------------------------- SIGTERM to the group
def test_sigterm_to_process_group_with_workers_saves_last_pt(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "train.fit",
                             *cli_args(out, "schedule.max_steps=400", "data.num_workers=2", "train.ckpt_every=1000",
                                       "data.epoch_length=800", "train.num_threads=1")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        log = out / "log.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if log.is_file() and sum(1 for l in log.read_text().splitlines() if '"train"' in l) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group: main process and DataLoader workers
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "killed by signal" not in err
    step = load_checkpoint(out / "last.pt")["step"]
    assert 2 <= step < 400


# ------------------------------------------------------------------------------------------------- lock
def test_second_run_in_same_folder_is_refused_and_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunLock(out, "abcd1234").acquire()
    try:
        with pytest.raises(RunLockedError, match=r"in use by run abcd1234 \(pid %d" % os.getpid()):
            fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 1}))
        code = fit_main(cli_args(out, "schedule.max_steps=1"))
        assert code == 2
        _one_error_line(capsys.readouterr().err, "abcd1234")
        assert not (out / "last.pt").exists()
    finally:
        holder.release()
    # A lock file left by a run killed with -9 (its flock died with it): detected as stale, taken over.
    script = ("import os, sys; from train.run_lock import RunLock; RunLock(sys.argv[1], 'deadbeef').acquire(); "
              "os._exit(0)")
    subprocess.run([sys.executable, "-c", script, str(out)], cwd=ROOT, check=True)
    assert RunLock.read_info(out / "run.lock")["run_id"] == "deadbeef"
    result = fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 1}))
    assert result["step"] == 1 and "took over the lock" in capsys.readouterr().out
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert records and all(len(r["run"]) == 8 for r in records)  # every record names its run


def test_log_is_rewritten_atomically_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 2}))
    log = out / "log.jsonl"
    log.write_text(log.read_text() + '{"type": "train", "step": 3}\n{"type": "tr')  # a run that died later
    before = log.read_text()

    def killed(*a, **k):
        raise KeyboardInterrupt  # "kill at that moment": the replacement never lands

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 4}))
    monkeypatch.undo()
    assert log.read_text() == before  # old content intact, never emptied
    fit(str(TINY), extra=tiny_extra(out, schedule={"max_steps": 4}))
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines() if '"train"' in l]
    assert steps == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------- §6 structure
def test_weights_module_does_not_pull_in_the_model():
    """The circle swin -> convert -> registry -> mabp -> swin is gone: weight-file reading and key maps
    live in mabp.weights, which imports no model, registry or converter code."""
    code = ("import sys, mabp.weights; bad = [m for m in sys.modules if m.startswith(('mabp.modeling', "
            "'mabp.convert'))]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    import ast

    for path in [ROOT / "mabp" / "weights.py", *(ROOT / "mabp" / "modeling").glob("*.py")]:
        tree = ast.parse(path.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in mods if m.endswith(("convert", "registry")) or
                    (path.name == "weights.py" and "modeling" in m)}, (path.name, mods)


def test_fit_with_malformed_annotations_is_one_line_exit_2(tmp_path, capsys):
    from tests.test_annotations import ann, make_root

    root = make_root(tmp_path / "d", [ann({"size": [48, 64], "counts": [100, 50]})])
    code = fit_main(cli_args(tmp_path / "run", "data.dataset=grefcoco", f"data.root={root}", "data.train_split=val",
                             "schedule.max_steps=1", "data.epoch_length=null"))
    assert code == 2
    _one_error_line(capsys.readouterr().err, "add up to 150 pixels")
