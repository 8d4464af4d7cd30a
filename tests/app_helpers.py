"""Shared by the app tests (tests/test_app.py and the browser tests): a tiny-model app, awkward input
files, a forced no-target switch, a server on a free loopback port, and the headless-Chromium setup."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Dict, Iterator

import cv2
import numpy as np
import torch

from mabp import build_mabp
from mabp.predictor import MABPPredictor

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "assets" / "examples" / "scene.png"

# Headless Chromium for the browser tests: Debian's binary (scripts/setup_browser.sh), driven by playwright.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
BROWSER_TIMEOUT_MS = 90_000  # generous: CI shares 2 cores with whatever else runs
try:
    from playwright.sync_api import expect, sync_playwright  # noqa: F401 - re-exported for the browser tests
except ImportError:  # pragma: no cover - depends on the machine
    expect = sync_playwright = None


def browser_skips() -> list:
    """pytest marks that skip a browser test module when Chromium or playwright is missing."""
    import pytest

    return [
        pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
                           reason=f"{CHROMIUM} is missing: run scripts/setup_browser.sh (apt-get install chromium)"),
        pytest.mark.skipif(sync_playwright is None,
                           reason="the playwright package is missing: run scripts/setup_browser.sh (pip install playwright)"),
    ]


def tiny_predictor(seed: int = 0) -> MABPPredictor:
    torch.manual_seed(seed)
    return MABPPredictor(build_mabp("tiny"))


def force_no_target(model: torch.nn.Module, no_target: bool) -> None:
    """Make every NT head answer one class whatever the input: zero the last layer's weights and
    put the decision in its bias (class 1 = no target). Lets an untrained tiny model show both the
    overlay and the "No target" banner deterministically."""
    with torch.no_grad():
        for head in model.decoder.heads:
            nt = getattr(head, "nt_embed", None)
            if nt is None:
                continue
            last = nt.layers[-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([-8.0, 8.0] if no_target else [8.0, -8.0]))


def write_inputs(folder: Path) -> Dict[str, Path]:
    """Every awkward kind of upload the issue lists, written as real files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 255, (120, 90, 3)).astype(np.uint8)
    files = {}
    files["rgb"] = folder / "rgb.png"
    cv2.imwrite(str(files["rgb"]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    files["gray"] = folder / "gray.png"
    cv2.imwrite(str(files["gray"]), rgb[:, :, 0])
    rgba = np.dstack([rgb, np.full((120, 90), 128, np.uint8)])
    files["rgba"] = folder / "rgba.png"
    cv2.imwrite(str(files["rgba"]), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    files["png16"] = folder / "deep16.png"
    cv2.imwrite(str(files["png16"]), (rgb.astype(np.uint16) * 257)[:, :, ::-1].copy())
    files["gray16"] = folder / "gray16.png"
    cv2.imwrite(str(files["gray16"]), rgb[:, :, 1].astype(np.uint16) * 257)
    data = files["rgb"].read_bytes()
    files["corrupted"] = folder / "corrupted.png"
    files["corrupted"].write_bytes(data[:200] + bytes(rng.randint(0, 255, 300).astype(np.uint8)))
    files["truncated"] = folder / "truncated.png"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not_image"] = folder / "notes.png"
    files["not_image"].write_text("this is a text file, not a picture\n" * 20)
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    # 12000 x 12000: a 1-bit PNG is ~18 MB in memory to write and a few KB on disk; the app must refuse
    # it from the header, without decoding 144 MP.
    files["huge"] = folder / "huge.png"
    Image.new("1", (12000, 12000)).save(files["huge"], optimize=False)
    return files


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(demo, port: int | None = None) -> Iterator[str]:
    """Launch on 127.0.0.1 without blocking; always close."""
    from app.ui import launch_options

    port = port or free_port()
    opts = launch_options("127.0.0.1", port)
    opts.update(prevent_thread_lock=True, quiet=True)
    _app, url, _ = demo.launch(**opts)
    try:
        yield url if url.endswith("/") else url + "/"
    finally:
        demo.close()
        time.sleep(0.2)
