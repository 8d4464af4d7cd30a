#!/usr/bin/env bash
# The six SynthGRES evaluations of the shipped checkpoint's report (assets/checkpoints/*-eval/REPORT.md):
# mixed val, photo val / testA / testB, shapes val / testA, first N expressions of each, official protocol.
#   bash scripts/evaluate_shipped.sh CHECKPOINT OUT_DIR [THREADS]
# Writes OUT_DIR/<split>/{results.json,report.md,per_sample.jsonl} and prints one summary line per split.
# ~3.5 min on 2 CPU cores for the lite model; LIMIT=N evaluates the first N of every split instead.
# The photo world needs its Debian packages (scripts/setup.sh).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash scripts/evaluate_shipped.sh CHECKPOINT OUT_DIR [THREADS]" >&2
  exit 2
fi
ckpt=$1; out=$2; threads=${3:-2}
if [[ ! -f "$ckpt" ]]; then
  echo "error: checkpoint '$ckpt' not found" >&2
  exit 2
fi
py=${PYTHON:-python}
mkdir -p "$out"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# name world split limit
while read -r name world split limit; do
  "$py" -m train.evaluate --checkpoint "$ckpt" --dataset synthgres --world "$world" --split "$split" \
    --limit "${LIMIT:-$limit}" --threads "$threads" --no-progress --out "$out/$name" < /dev/null > "$log" 2>&1 || {
      tail -20 "$log" >&2; echo "error: the $name evaluation failed (its last lines above)" >&2; exit 1; }
  "$py" - "$out/$name/results.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
m = d["metrics"]
print(f"{sys.argv[2]:13s} n={d['n']:4d}  " + "  ".join(f"{k} {m[k]:.2f}" if m.get(k) is not None else f"{k} -"
                                             for k in ("cIoU", "gIoU", "N-acc", "T-acc")))
PY
done <<'LIST'
val mixed val 500
photo-val photo val 500
photo-testA photo testA 500
photo-testB photo testB 300
shapes-val shapes val 500
shapes-testA shapes testA 300
LIST
