"""Run the long CPU jobs (train.fit, train.ablate) on tcmalloc instead of glibc malloc.

A training step allocates and frees thousands of tensors. On tcmalloc a `lite` step on 2 cores gained
6-7.5 % samples/s over glibc's malloc (`python benchmarks/train_throughput.py --allocator both`: four
12-step pairs, mean 7.02 -> 7.55; a 60-step pair, 6.77 -> 7.20; the run-to-run spread is about as large)
and used ~100 MB less peak memory; jemalloc was slower (5.53 vs 6.85). The allocator must be chosen
before the process starts (LD_PRELOAD), so `reexec_with_tcmalloc` re-executes the command once with it
preloaded.

The library is Debian's `libtcmalloc-minimal4` (scripts/setup.sh installs it when it can). Without it, or
with MABP_ALLOCATOR=system, or on a non-Linux system, the job runs unchanged on the system allocator.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
              "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")
GUARD = "MABP_ALLOCATOR_REEXEC"  # set in the re-executed process: never re-exec twice


def tcmalloc_path() -> Optional[str]:
    """The first installed tcmalloc library, or None."""
    return next((p for p in CANDIDATES if Path(p).is_file()), None)


def reexec_command(module: str, argv: Sequence[str], env: Optional[dict] = None) -> Optional[List[str]]:
    """The command line to re-execute `python -m module argv...` with tcmalloc, or None when it should run
    as it is (already preloaded or re-executed, MABP_ALLOCATOR=system, not Linux, no library)."""
    env = os.environ if env is None else env
    if env.get(GUARD) or "tcmalloc" in env.get("LD_PRELOAD", "") or not sys.platform.startswith("linux"):
        return None
    if env.get("MABP_ALLOCATOR", "tcmalloc").strip().lower() in ("system", "glibc", "off", "0"):
        return None
    if tcmalloc_path() is None:
        return None
    return [sys.executable, "-m", module, *argv]


def reexec_with_tcmalloc(module: str, argv: Sequence[str]) -> None:
    """Replace this process by the same command with tcmalloc preloaded (see the module docstring); a
    no-op when `reexec_command` says so. Call it first thing in a CLI's main, before any work."""
    cmd = reexec_command(module, argv)
    if cmd is None:
        return
    env = dict(os.environ)
    env[GUARD] = "1"
    env["LD_PRELOAD"] = ":".join(x for x in (tcmalloc_path(), env.get("LD_PRELOAD", "")) if x)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, cmd, env)
    except OSError as exc:  # cannot re-exec (odd sandbox): run on as we are
        print(f"note: could not restart with tcmalloc ({exc}); using the system allocator", file=sys.stderr)


if __name__ == "__main__":  # python -m train.allocator: which malloc a training command would run on
    reexec_with_tcmalloc("train.allocator", sys.argv[1:])
    lib = next((x for x in os.environ.get("LD_PRELOAD", "").split(":") if "tcmalloc" in x), None)
    print(f"tcmalloc ({lib})" if lib else "system malloc" + ("" if tcmalloc_path() else
                                                             " (install libtcmalloc-minimal4 for ~7 % faster training)"))
