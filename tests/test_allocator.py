"""train/allocator.py: training commands re-execute once on tcmalloc when it is installed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train import allocator

ROOT = Path(__file__).resolve().parents[1]


def test_reexec_command_rules(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: "/x/libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    assert allocator.reexec_command("train.fit", ["--config", "c.yaml"], env={}) == \
        [sys.executable, "-m", "train.fit", "--config", "c.yaml"]
    for env in ({allocator.GUARD: "1"}, {"LD_PRELOAD": "/y/libtcmalloc.so"}, {"MABP_ALLOCATOR": "system"}):
        assert allocator.reexec_command("train.fit", [], env=env) is None
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: None)
    assert allocator.reexec_command("train.fit", [], env={}) is None  # not installed: run as is


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.GUARD)}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-m", "train.allocator"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_cli_runs_on_tcmalloc_when_installed_and_on_request_not():
    assert _run({"MABP_ALLOCATOR": "system"}).startswith("system malloc")
    if allocator.tcmalloc_path() is None:
        pytest.skip("libtcmalloc-minimal4 is not installed here")
    assert _run({}).startswith("tcmalloc (")
