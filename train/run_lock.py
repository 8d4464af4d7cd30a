"""One training run per run folder: an exclusive lock on `<output_dir>/run.lock`.

Two `train.fit` processes writing the same folder interleave `log.jsonl`, race on `last.pt.tmp` and can
leave a corrupt `last.pt`. The first run takes an exclusive `flock` on `run.lock` for its whole life and
writes who it is into the file (run id, pid, host, start time, command); a second run finds the lock
taken and refuses, naming the holder. The kernel drops a `flock` when its process dies -- kill -9
included -- so a lock file left behind by a dead run is detected as stale and simply taken over (the
old holder is reported). Under DDP only rank 0 takes the lock.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live run holds the run folder. One-line message naming the holder."""


def new_run_id() -> str:
    """A short random id that tags every log record of one run."""
    return uuid.uuid4().hex[:8]


def _describe(info: Dict[str, Any]) -> str:
    if not info:
        return "an unknown process"
    return (f"run {info.get('run_id', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


class RunLock:
    """Exclusive lock of one run folder.

    Usage: `lock = RunLock(folder, run_id).acquire()` ... `lock.release()` (also a context manager).
    Raises RunLockedError from `acquire` when a live process holds it. `stale` is the info of a dead
    previous holder whose lock file was taken over (None when there was none).
    """

    def __init__(self, folder: os.PathLike, run_id: Optional[str] = None, name: str = LOCK_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name  # another name for another kind of claim (train.ablate's)
        self.run_id = run_id or new_run_id()
        self.stale: Optional[Dict[str, Any]] = None
        self._fd: Optional[int] = None

    @staticmethod
    def read_info(path: os.PathLike) -> Dict[str, Any]:
        try:
            return json.loads(Path(path).read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = self.read_info(self.path)
                    raise RunLockedError(
                        f"the run folder {self.folder} is in use by {_describe(holder)}: wait for it to finish, "
                        f"stop it, or choose another train.output_dir") from None
            previous = self.read_info(self.path)
            if previous:
                self.stale = previous  # its process is gone (the kernel released its flock)
            info = {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and drop the lock (idempotent). The file stays: unlinking it could let a
        process that opened it just before lock a file that no longer has a name."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["RunLock", "RunLockedError", "new_run_id", "LOCK_NAME"]
