"""`paper` at 480x480, batch 1: today's full forward against the code as it was when the speed-up work
began (issue 11's reference time), measured in the same window on this machine.

    python benchmarks/paper_speedup.py                       # 3 interleaved rounds, 6 timed passes each
    python benchmarks/paper_speedup.py --rounds 5 --baseline-commit e90ed76

Each round runs three child processes one after the other (2 threads each, one warm-up pass first):
  baseline  the full eager forward `model(images, input_ids, attention_mask)` of the baseline commit's code,
            checked out into a temporary git worktree (needs git and this repository's history);
  eager     the same full forward with today's code;
  fast      today's predictor with the ONNX Runtime fast path: `set_image` + `predict` on a 640x480 image
            (the two exported graphs, i.e. a full forward; mabp/fast_path.py).
It prints the median ms of each, per round and over all rounds, and fast / baseline. Weights are random
(the preset's init): the time does not depend on their values. The authors' code cannot run here (it
needs detectron2 and a compiled CUDA op); the baseline commit is the stand-in the issue names ("it is about
equal today").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "e90ed76"  # the last commit before the speed-up work (2026-11-24)
TOKENS = [101, 1996, 2417, 4418, 2006, 1996, 2187, 102]  # "[CLS] the red circle on the left [SEP]"


def child(kind: str, repo: str, repeats: int, threads: int) -> dict:
    sys.path.insert(0, repo)
    import numpy as np
    import torch

    from mabp import build_mabp

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_mabp("paper").eval()
    times = []
    if kind == "fast":
        from mabp.fast_path import build_fast_path
        from mabp.predictor import MABPPredictor

        fast, note = build_fast_path(model)
        if fast is None:
            raise SystemExit(f"fast path unavailable: {note}")
        pred = MABPPredictor(model, fast_path=fast)
        image = np.random.RandomState(0).randint(0, 255, (480, 640, 3)).astype(np.uint8)
        pred.set_image(image)
        pred.predict("the red circle on the left")
        for i in range(repeats):
            t = time.perf_counter()
            pred.set_image(image)
            pred.predict(f"the red circle on the left {i}")  # a new text: no cached answer
            times.append((time.perf_counter() - t) * 1000)
    else:
        ids = torch.zeros(1, 20, dtype=torch.long)  # paper's fixed 20 language tokens
        ids[0, :len(TOKENS)] = torch.tensor(TOKENS)
        mask = (ids > 0).long()
        images = torch.randn(1, 3, 480, 480)
        with torch.no_grad():
            model(images, ids, mask)
            for _ in range(repeats):
                t = time.perf_counter()
                model(images, ids, mask)
                times.append((time.perf_counter() - t) * 1000)
    return {"kind": kind, "median_ms": statistics.median(times), "times": [round(t, 1) for t in times]}


def run_child(kind: str, repo: Path, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--repo", str(repo),
           "--repeats", str(repeats), "--threads", str(threads)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(repo))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(repo))
    if out.returncode:
        raise SystemExit(f"{kind} child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6, help="timed passes per child (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repo", default=str(ROOT), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repo, args.repeats, args.threads)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="mabp-baseline-"))
    worktree = tmp / "baseline"
    made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline_commit],
                          capture_output=True, text=True)
    if made.returncode:
        raise SystemExit(f"cannot check out {args.baseline_commit} (a clone with history is needed): "
                         f"{made.stderr.strip()}")
    rows = {"baseline": [], "eager": [], "fast": []}
    try:
        for r in range(args.rounds):
            for kind, repo in (("baseline", worktree), ("eager", ROOT), ("fast", ROOT)):
                res = run_child(kind, repo, args.repeats, args.threads)
                rows[kind].append(res["median_ms"])
                print(f"round {r + 1}: {kind:8s} median {res['median_ms']:7.1f} ms  {res['times']}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n| code | what is timed | median of the round medians (ms) | rounds |")
    print("|---|---|---|---|")
    print(f"| {args.baseline_commit} (baseline) | eager full forward | {med['baseline']:.0f} | "
          f"{', '.join(f'{x:.0f}' for x in rows['baseline'])} |")
    print(f"| today | eager full forward | {med['eager']:.0f} | {', '.join(f'{x:.0f}' for x in rows['eager'])} |")
    print(f"| today | ONNX Runtime set_image + predict | {med['fast']:.0f} | "
          f"{', '.join(f'{x:.0f}' for x in rows['fast'])} |")
    ratios = [f / b for f, b in zip(rows["fast"], rows["baseline"])]
    per_round = ", ".join(f"{x:.3f}" for x in ratios)
    print(f"\nfast / baseline: {med['fast'] / med['baseline']:.3f} (per round: {per_round}); "
          f"eager / baseline: {med['eager'] / med['baseline']:.3f}")


if __name__ == "__main__":
    main()
