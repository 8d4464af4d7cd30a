#!/usr/bin/env bash
# Train the shipped model's recipe (train/configs/lite_mixed_ship.yaml) on a CUDA GPU for a fixed number
# of minutes, then stop cleanly (SIGINT: last.pt is written) and export a shippable checkpoint.
#
#   bash scripts/train_on_gpu.sh                       # 9 minutes on cuda, batch 32, bf16, 8 data workers
#   MINUTES=2 DEVICE=cpu BATCH=2 WORKERS=0 AMP=off MAX_STEPS=3 bash scripts/train_on_gpu.sh   # CPU smoke test
#
# Environment (all optional): MINUTES (wall-clock training budget), DEVICE (cuda | cpu), BATCH (per GPU),
# WORKERS (DataLoader processes generating SynthGRES), AMP (bf16 | fp16 | off; the pixel decoder stays fp32),
# COMPILE (true | false: torch.compile, eager fallback), OUT (run folder), MAX_STEPS (schedule length;
# the lr schedule is a function of it, so keep it fixed across resumes), EXTRA (more key=value overrides).
# The run folder is resumable: running the script again continues from OUT/last.pt.
# Prints samples/s from the run's log at the end; the checkpoint lands in OUT/export.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-9}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-32}
WORKERS=${WORKERS:-8}
AMP=${AMP:-bf16}
COMPILE=${COMPILE:-false}
OUT=${OUT:-runs/gpu_lite_mixed}
MAX_STEPS=${MAX_STEPS:-6000}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "error: DEVICE=cuda but torch sees no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__)')); use DEVICE=cpu for a smoke test" >&2
  exit 2
fi
echo "training ${MINUTES} min on ${DEVICE}: batch ${BATCH}, amp ${AMP}, compile ${COMPILE}, ${WORKERS} workers -> ${OUT}"
set +e
# SIGINT after MINUTES: the engine finishes the current step and writes last.pt (exit 130 = interrupted).
timeout --signal=INT --kill-after=120 "${MINUTES}m" "$PY" -m train.fit --config train/configs/lite_mixed_ship.yaml \
  train.device="$DEVICE" train.batch_size="$BATCH" train.amp="$AMP" train.compile="$COMPILE" \
  data.num_workers="$WORKERS" schedule.max_steps="$MAX_STEPS" train.output_dir="$OUT" \
  train.eval_every=500 train.ckpt_every=100 ${EXTRA:-}
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 130 ]; then
  echo "error: training failed (exit $rc); see the output above" >&2
  exit "$rc"
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
