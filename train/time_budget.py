"""Fit a whole lr schedule into a wall-clock budget (scripts/train_on_gpu.sh, MAX_STEPS=auto).

A run first trains for a short measuring phase with an open-ended schedule (the lr is constant there:
warm-up, then the constant phase that lasts 62.5 % of any schedule), is stopped, and resumes with the
`max_steps` this module computes from the phase's log, so the constant phase, the cosine decay and the
final evaluation all end inside the budget.

    python -m train.time_budget RUN_DIR T_START BUDGET_S     # prints max_steps (stdout), the reasoning (stderr)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# The in-training evaluations (every 500 steps), checkpoint writes and the final evaluation come out of
# the same minutes: on the H200 run (2026-11-30) the measuring phase ran at 0.275 s/step by wall clock and
# the rest at 0.311, so 0.88 of the estimate would have ended on time.
SAFETY = 0.88


def plan_max_steps(records: Sequence[Dict], t_start: float, budget_s: float, now: Optional[float] = None,
                   safety: float = SAFETY) -> Tuple[int, str]:
    """The schedule length that ends the run inside `budget_s`.

    Args:
        records: the run's log.jsonl records (dicts); the "train" ones need "step" and "time" (epoch s).
        t_start: epoch seconds when the measuring phase was launched (its start-up counts).
        budget_s: the whole wall-clock budget in seconds, measured from `t_start`.
        now: epoch seconds now (default time.time()).
        safety: the share of the remaining time's estimated steps that is planned.
    Returns:
        (max_steps, a one-line explanation). max_steps > the last logged step.
    Raises:
        ValueError: fewer than two train records (the phase was too short to measure).
    The rate is wall clock between the first and the last train record (checkpoint writes and data waits
    count); the engine's own per-window sec_per_step leaves some of that out (on the H200 run's main phase:
    median 0.22 s per window, 0.31 s by wall clock).
    The resume is assumed to pay the same start-up as the measuring phase.
    """
    train: List[Dict] = [r for r in records if r.get("type") == "train" and "time" in r and "step" in r]
    if train and train[-1].get("run") is not None:  # this phase only: a resumed folder holds older runs too
        train = [r for r in train if r.get("run") == train[-1]["run"]]
    if len(train) < 2 or train[-1]["step"] <= train[0]["step"]:
        raise ValueError(f"the measuring phase logged {len(train)} train record(s); give it more time (CALIB_S)")
    now = time.time() if now is None else now
    sec = (train[-1]["time"] - train[0]["time"]) / (train[-1]["step"] - train[0]["step"])
    step = int(train[-1]["step"])
    # the steps before the first record: one logging interval (a fresh run logs step 10 first)
    before = train[1]["step"] - train[0]["step"]
    startup = max(0.0, train[0]["time"] - t_start - before * sec)
    left = budget_s - (now - t_start) - startup
    more = max(int(max(left, 0.0) / sec * safety), 1)
    why = (f"measured {sec:.3f} s/step (wall clock) after {step} steps, start-up {startup:.0f} s, {left:.0f} s left: "
           f"max_steps {step + more}")
    return step + more, why


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python -m train.time_budget RUN_DIR T_START BUDGET_S", file=sys.stderr)
        return 2
    log = Path(args[0], "log.jsonl")
    if not log.is_file():
        print(f"error: {log} does not exist: did the measuring phase start?", file=sys.stderr)
        return 2
    try:
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        max_steps, why = plan_max_steps(records, float(args[1]), float(args[2]))
    except ValueError as exc:  # an unreadable log line, a non-number, or too few records
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(max_steps)
    print(why, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
