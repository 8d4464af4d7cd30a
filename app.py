"""MABP demo: `python app.py` serves the Gradio app on http://127.0.0.1:7860.

    python app.py                                   # shipped lite checkpoint, CPU, 127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --threads 2
    python app.py --checkpoint runs/paper-converted.pt   # a converted `paper` checkpoint loads the same way
    MABP_CHECKPOINT=... GRADIO_SERVER_NAME=... GRADIO_SERVER_PORT=... python app.py

The model is built ONCE, at import time (Hugging Face Spaces imports/runs this file and expects a
module-level `demo`); the server starts only under `if __name__ == "__main__"`. Nothing is
downloaded: the lite encoders come from installed packages, the decoder from the checkpoint. Without
the shipped checkpoint the app still starts on the lite preset (untrained decoder) and says so in
the log and in a banner on the page.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home at start
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# How long idle OpenMP threads spin before they sleep (libgomp, which torch uses). A forward pass is
# hundreds of small parallel regions (~9,500 profiled aten calls, views included), so sleeping at once
# (OMP_WAIT_POLICY=PASSIVE) pays a wake-up per op, while libgomp's default (300,000 spins) burns a whole
# core whenever another process shares the box. Measured on 2 cores with the shipped lite checkpoint at
# 320² (benchmarks/latency.py --spincount 3000|passive, 30 repeats, runs alternating: four with 3,000
# spins, three with PASSIVE): a new expression takes 102-135 ms with 3,000 spins against 149-183 ms with
# PASSIVE (256², an earlier machine: ~110-140 against ~170-210 ms), and beside a busy process its CPU time
# stays within ~20 % of PASSIVE's (the default policy once cost 20x). Set OMP_WAIT_POLICY or
# GOMP_SPINCOUNT to override. Must be set before torch is imported.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Flags win over the environment; the environment wins over the defaults."""
    env = os.environ
    ap = argparse.ArgumentParser(description="MABP Gradio demo")
    ap.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="interface to bind (env GRADIO_SERVER_NAME; default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", "7860")),
                    help="port (env GRADIO_SERVER_PORT; default 7860)")
    ap.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    ap.add_argument("--checkpoint", default=env.get("MABP_CHECKPOINT"),
                    help="MABP checkpoint (env MABP_CHECKPOINT; default assets/checkpoints/mabp-lite-synthgres.pt)")
    ap.add_argument("--preset", default=None, help="serve an untrained preset instead (e.g. tiny for a smoke run)")
    ap.add_argument("--threads", type=int, default=int(env["MABP_THREADS"]) if env.get("MABP_THREADS") else None,
                    help="torch CPU threads (env MABP_THREADS; default min(2, cores))")
    ap.add_argument("--fast-path", default=env.get("MABP_FAST_PATH", "on"), metavar="on|off",
                    help="answer new expressions with ONNX Runtime (same maths, checked against PyTorch at start; "
                         "env MABP_FAST_PATH; default on)")
    ap.add_argument("--concurrency", type=int, default=2, help="events processed at once (queue limit)")
    ap.add_argument("--parallel", type=int, default=int(env["MABP_PARALLEL"]) if env.get("MABP_PARALLEL") else None,
                    help="expressions answered at once on the fast path, each on one core (env MABP_PARALLEL; "
                         "default: the torch threads; 1 serves one at a time on all threads)")
    args = ap.parse_args(argv)
    switch = {"on": "on", "1": "on", "true": "on", "yes": "on", "off": "off", "0": "off", "false": "off", "no": "off"}
    if str(args.fast_path).strip().lower() not in switch:
        ap.error(f"--fast-path / MABP_FAST_PATH must be on or off, got {args.fast_path!r}")
    args.fast_path = switch[str(args.fast_path).strip().lower()]
    return args


# Only the real command line is parsed: imported by Spaces, pytest or `gradio app.py`, sys.argv is theirs.
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks log every request at INFO
log = logging.getLogger("mabp.app")

from mabp.registry import CheckpointError  # noqa: E402
from app.service import ModelThread, load_model  # noqa: E402  (torch is imported after the environment above)
from app.ui import create_app, launch_options  # noqa: E402

# Every torch call (loading included) runs on this one thread: see app/service.py (ModelThread).
THREADS = ARGS.threads or max(1, min(2, os.cpu_count() or 1))
MODEL_THREAD = ModelThread(THREADS)
PARALLEL = max(1, ARGS.parallel if ARGS.parallel is not None else THREADS)
try:
    LOADED = MODEL_THREAD.run(load_model, ARGS.checkpoint, preset=ARGS.preset, fast_path=ARGS.fast_path == "on",
                              concurrent=PARALLEL > 1)
except (CheckpointError, FileNotFoundError) as _exc:  # a bad --checkpoint: one line naming the file, exit 2
    if __name__ != "__main__":
        raise
    print(f"error: {_exc}", file=sys.stderr)
    sys.exit(2)
if LOADED.notice:
    log.warning("%s — serving %s", LOADED.notice, LOADED.source)
demo = create_app(LOADED.predictor, notice=LOADED.notice, source=LOADED.source,
                  concurrency_limit=max(ARGS.concurrency, PARALLEL), runner=MODEL_THREAD, card=LOADED.card,
                  parallel=PARALLEL)

if __name__ == "__main__":
    demo.launch(**launch_options(ARGS.host, ARGS.port, ARGS.share))
