#!/usr/bin/env bash
# The photo-world ablation sweep (issue 16): every Table V / VI row and ReLA at 4,000 steps x 8, resumable.
# Run it twice at once on a 2-core machine (two 1-thread runners share the work through run locks):
#   bash scripts/ablate_photo.sh > runner1.log 2>&1 &  sleep 60; bash scripts/ablate_photo.sh > runner2.log 2>&1 &
# Or one runner on both cores (THREADS=2 bash scripts/ablate_photo.sh): the same throughput, and a session that
# ends mid-run loses one partial run instead of two.
# OUT (default ../mabp-runs/ablate_lite_photo_4k) keeps the run folders; re-running continues where it stopped.
# Every finished run's result is also written to docs/ablation-lite-photo-runs/<variant>/seed<k>.json:
# commit those, and a new machine (whose run folders are gone) continues with the runs still missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-../mabp-runs/ablate_lite_photo_4k}"
exec "$PYTHON" -m train.ablate --config train/configs/lite_synthgres.yaml --world photo --steps 4000 --seeds 0 1 \
    --seeds-for table5_naive=0,1,2 table5_full=0,1,2 rela=0,1,2 \
    --variants table5_full table5_naive rela table5_rsh table5_mmd table6_main_last table6_nt_none table6_nt_last table6_full \
    --eval-every 500 --val-samples 1000 --set train.batch_size=8 data.val_samples=500 train.num_threads=${THREADS:-1} \
    --out "$OUT" --results "${RESULTS:-docs/ablation-lite-photo-runs}" "$@"
