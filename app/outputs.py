"""Image outputs written as unique PNG files, handed to Gradio as paths.

Why not return numpy arrays: Gradio 6.31 saves an output array to `<cache>/<hash of its bytes>/image.png`
with a plain truncate-and-write. Two requests producing the SAME picture (two empty masks of the same
size: every "no target" answer on one image) rewrite that one file while the first is being sent, and
the download fails ("Too little data for declared Content-Length" on the server, RemoteProtocolError in
gradio_client). Seen under benchmarks/app_load.py. A path is instead copied into the cache by
`save_file_to_cache`, which stages and renames atomically. So every picture is written here under a
unique name first.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import cv2
import numpy as np


class PngWriter:
    """Writes arrays to unique PNG files in a private folder and prunes the old ones."""

    def __init__(self, folder: Optional[Path] = None, max_age_s: float = 900.0, compression: int = 1):
        # Beside Gradio's cache when GRADIO_TEMP_DIR is set (tests, Spaces), else in the system temp dir.
        base = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
        self.folder = Path(folder or base / f"mabp-app-{os.getpid()}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self.compression = compression  # zlib level: 1 is ~3x faster than 6 on a big overlay, files ~10% larger
        self._lock = threading.Lock()
        self._last_prune = time.time()

    def write(self, image: np.ndarray, stem: str = "img") -> str:
        """(H, W) or (H, W, 3) uint8 RGB -> path of a new PNG file."""
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = arr.astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, self.compression])
        if not ok:
            raise ValueError(f"could not encode an image of shape {arr.shape} as PNG")
        path = self.folder / f"{stem}-{uuid.uuid4().hex}.png"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)  # never visible half-written
        self._maybe_prune()
        return str(path)

    def _maybe_prune(self) -> None:
        now = time.time()
        if now - self._last_prune < 60:
            return
        with self._lock:
            if now - self._last_prune < 60:
                return
            self._last_prune = now
        for p in self.folder.glob("*.png"):
            try:
                if now - p.stat().st_mtime > self.max_age_s:
                    p.unlink()
            except OSError:  # another thread pruned it first
                pass
