#!/usr/bin/env bash
# Device call 3 of scripts/gpu_lease/stage.sh (runs on the lent GPU machine): the shipped recipe for MINUTES
# through scripts/train_on_gpu.sh (MAX_STEPS=auto), warm-started from .gpu/c/start.pt, with 25 % close-up
# photo scenes; puts the log, config, curves and the export (in two parts: 16 MiB per returned file) in $OUT.
#   MINUTES=8.5 [BATCH=64 WORKERS=10 AMP=fp16 CALIB_S=70 SEED=5 XTRA="key=value ..."] bash scripts/gpu_lease/device_c.sh
# Calling it again on the same (warm) machine resumes the run with its stored schedule.
set -uo pipefail
RES=${OUT:?run this through the device tool: OUT is where files come back}
REPO=$PWD
[ -d /tmp/site ] || { echo "FATAL: /tmp/site missing (machine was reset: run calls 1 and 2 again)"; exit 3; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15
export MABP_TUXPAINT_STAMPS=$REPO/.gpu/c/stamps MABP_BACKGROUNDS=$REPO/.gpu/c/backgrounds
RUN=runs/gpu_ship
mkdir -p $RUN
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 > $RES/smi.csv 2>&1 &
SMI=$!
MINUTES=${MINUTES:-8} BATCH=${BATCH:-64} WORKERS=${WORKERS:-10} AMP=${AMP:-fp16} CALIB_S=${CALIB_S:-70} \
  OUT=$RUN PYTHON=python3 START=.gpu/c/start.pt EXTRA="train.seed=${SEED:-5} data.kwargs.closeup_share=0.25 ${XTRA:-}" \
  bash scripts/train_on_gpu.sh > $RES/train.log 2>&1
rc=$?
kill $SMI 2>/dev/null
grep -v "it/s\]\|s/it\]" $RES/train.log | grep -v "^eval:" | tail -30
echo "train_on_gpu rc=$rc"
cp $RUN/log.jsonl $RUN/config.yaml $RUN/curves.png $RES/ 2>/dev/null
if [ -f $RUN/export.pt ]; then
  split -b 15000000 -d -a 1 $RUN/export.pt $RES/export.pt.part && sha256sum $RUN/export.pt
  echo "here: cat <files_at>/export.pt.part0 <files_at>/export.pt.part1 > export.pt; sha256sum export.pt"
fi
ls -la $RES
