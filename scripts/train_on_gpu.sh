#!/usr/bin/env bash
# Train the shipped model's recipe (train/configs/lite_mixed_ship.yaml) on a CUDA GPU for a fixed number
# of minutes, then stop cleanly and export a shippable checkpoint.
#
#   bash scripts/train_on_gpu.sh                       # 9 minutes on cuda, batch 32, fp16, 8 data workers
#   MINUTES=3 DEVICE=cpu BATCH=2 WORKERS=0 AMP=off CALIB_S=60 bash scripts/train_on_gpu.sh   # CPU smoke test
#
# Environment (all optional): MINUTES (wall-clock training budget, decimals allowed), DEVICE (cuda | cpu),
# BATCH (per GPU), WORKERS (DataLoader processes generating SynthGRES), AMP (fp16 | bf16 | off; the pixel
# decoder stays fp32), COMPILE (true | false: torch.compile, eager fallback), OUT (run folder), MAX_STEPS
# (schedule length, or `auto`, the default: see below), CALIB_S (auto only: seconds of the measuring
# phase, default 75), START (the warm start, default the shipped checkpoint: a further stage of it; the
# recipe's own start, stage 3's, is the first shipped checkpoint: see lite_mixed_ship.yaml), EXTRA (more
# key=value overrides, split like a shell line, so quote a value with spaces, e.g.
# EXTRA="train.seed=10 'optim.freeze=[backbone.backbone.stem, backbone.backbone.bn0]'").
#
# MAX_STEPS=auto fits the whole lr schedule (warm-up, constant, cosine decay) into MINUTES: the run first
# trains CALIB_S seconds at the constant lr with an open-ended schedule, is stopped (SIGINT: last.pt), and
# resumes with max_steps = steps done + (time left - restart time) / wall-clock s per step x 0.88
# (train/time_budget.py). The constant phase ends at 62.5 % of max_steps, so the first phase's steps
# follow exactly the lr they would have had.
# A fixed MAX_STEPS trains MINUTES with that schedule (stopping early if the time runs out first).
# The run folder is resumable: running the script again continues from OUT/last.pt.
# Prints samples/s from the run's log at the end; the checkpoint lands in OUT/export.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-9}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-32}
WORKERS=${WORKERS:-8}
AMP=${AMP:-fp16}
COMPILE=${COMPILE:-false}
OUT=${OUT:-runs/gpu_lite_mixed}
MAX_STEPS=${MAX_STEPS:-auto}
CALIB_S=${CALIB_S:-75}
START=${START:-assets/checkpoints/mabp-lite-synthgres.pt}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# EXTRA is split with Python's shlex (shell quoting rules), not bash word splitting: an override whose
# value holds spaces (a YAML list) stays one argument when quoted.
EXTRA_ARGS=()
if [ -n "${EXTRA:-}" ]; then
  extra_lines=$("$PY" -c 'import shlex, sys; print("\n".join(shlex.split(sys.argv[1])))' "$EXTRA" 2>/dev/null) || {
    echo "error: EXTRA is not a valid shell-quoted list of key=value overrides (unbalanced quotes?): $EXTRA" >&2
    exit 2
  }
  if [ -n "$extra_lines" ]; then mapfile -t EXTRA_ARGS <<< "$extra_lines"; fi  # EXTRA="  " adds nothing
fi

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "error: DEVICE=cuda but torch sees no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__)')); use DEVICE=cpu for a smoke test" >&2
  exit 2
fi
echo "training ${MINUTES} min on ${DEVICE}: batch ${BATCH}, amp ${AMP}, compile ${COMPILE}, ${WORKERS} workers, max_steps ${MAX_STEPS} -> ${OUT}"
t_start=$(date +%s.%N)
budget_s=$("$PY" -c "print(round(float('$MINUTES') * 60, 1))")

fit() {  # fit <seconds> <max_steps>: SIGINT after <seconds>; the engine finishes the step and writes last.pt
  set +e
  timeout --signal=INT --kill-after=120 "$1" "$PY" -m train.fit --config train/configs/lite_mixed_ship.yaml \
    train.device="$DEVICE" train.batch_size="$BATCH" train.amp="$AMP" train.compile="$COMPILE" \
    model.checkpoint="$START" data.num_workers="$WORKERS" schedule.max_steps="$2" train.output_dir="$OUT" \
    train.eval_every=500 train.ckpt_every=200 "${EXTRA_ARGS[@]}"
  local rc=$?
  set -e
  # 124 = timeout (SIGINT delivered), 130 = interrupted: last.pt is there either way.
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 130 ]; then
    echo "error: training failed (exit $rc); see the output above" >&2
    exit "$rc"
  fi
}

if [ "$MAX_STEPS" = auto ]; then
  # The open-ended schedule of the measuring phase; a run folder stopped inside that phase measures again.
  OPEN=100000000
  prev=""
  if [ -f "$OUT/last.pt" ] && [ -f "$OUT/config.yaml" ]; then
    prev=$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['schedule']['max_steps'])" "$OUT/config.yaml")
  fi
  if [ -f "$OUT/last.pt" ] && [ -f "$OUT/max_steps.auto" ]; then
    # A resumed auto run keeps the schedule it was given (the lr is a function of max_steps).
    MAX_STEPS=$(cat "$OUT/max_steps.auto")
    echo "resuming the auto schedule: max_steps ${MAX_STEPS}"
    fit "${budget_s}s" "$MAX_STEPS"
  elif [ -n "$prev" ] && [ "$prev" != "$OPEN" ]; then
    # A run started with a fixed MAX_STEPS: measuring at the constant lr would undo its decay.
    MAX_STEPS=$prev
    echo "resuming the run's own schedule: max_steps ${MAX_STEPS} (from $OUT/config.yaml)"
    fit "${budget_s}s" "$MAX_STEPS"
  else
    fit "${CALIB_S}s" "$OPEN"
    MAX_STEPS=$("$PY" -m train.time_budget "$OUT" "$t_start" "$budget_s")  # train/time_budget.py
    echo "$MAX_STEPS" > "$OUT/max_steps.auto"
    now=$(date +%s.%N)
    left=$("$PY" -c "print(max(30, round($budget_s - ($now - $t_start) + 30)))")  # +30 s: let the final eval finish
    fit "${left}s" "$MAX_STEPS"
  fi
else
  fit "${budget_s}s" "$MAX_STEPS"
fi

"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
recs = [json.loads(l) for l in Path(sys.argv[1], "log.jsonl").read_text().splitlines() if l.strip()]
train = [r for r in recs if r.get("type") == "train" and r.get("samples_per_sec")]
if train:
    rates = [r["samples_per_sec"] for r in train[1:]] or [train[0]["samples_per_sec"]]
    print(f"steps {train[-1]['step']}, samples/s median {sorted(rates)[len(rates) // 2]:.1f} (log.jsonl)")
evals = [r for r in recs if r.get("type") == "eval"]
if evals:
    print("last eval:", {k: evals[-1].get(k) for k in ("step", "gIoU", "cIoU", "N-acc", "T-acc")})
PY
"$PY" -m train.export "$OUT/last.pt" "$OUT/export.pt"
