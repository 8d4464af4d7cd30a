#!/usr/bin/env bash
# The six SynthGRES evaluations of the shipped checkpoint's report (assets/checkpoints/*-eval/REPORT.md):
# mixed val, photo val / testA / testB, shapes val / testA, first N expressions of each, official protocol.
#   bash scripts/evaluate_shipped.sh CHECKPOINT OUT_DIR [THREADS]
# Writes OUT_DIR/<split>/{results.json,report.md,per_sample.jsonl} and prints one summary line per split.
# ~3.5 min on 2 CPU cores for the lite model at 256² (6.5 min at 320²); LIMIT=N evaluates the first N of every
# split instead. The same pass also scores the no-target thresholds in NT_GRID (default 0.25 … 0.5, the
# official argmax among them; results.json "per_nt_threshold"); the summary line adds the figures at 0.5,
# and, for a checkpoint that refines its masks (inference.refine), the same pass without refinement.
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
    --limit "${LIMIT:-$limit}" --threads "$threads" --no-progress \
    --nt-thresholds ${NT_GRID:-0.25 0.3 0.35 0.4 0.45 0.5} --out "$out/$name" < /dev/null > "$log" 2>&1 || {
      tail -20 "$log" >&2; echo "error: the $name evaluation failed (its last lines above)" >&2; exit 1; }
  "$py" - "$out/$name/results.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
f = lambda v: "-" if v is None else f"{v:.2f}"
line = f"{sys.argv[2]:13s} n={d['n']:4d}  " + "  ".join(f"{k} {f(d['metrics'].get(k))}"
                                                   for k in ("cIoU", "gIoU", "N-acc", "T-acc"))
a = d.get("per_nt_threshold", {}).get("0.5")  # JSON keys: the thresholds as str(float)
if a:
    line += f"  | at 0.5: gIoU {f(a['gIoU'])} N-acc {f(a['N-acc'])}"
r = d.get("per_refine", {}).get("none")  # a checkpoint that refines its masks: the same pass unrefined
if r:
    line += f"  | unrefined masks: cIoU {f(r['cIoU'])} gIoU {f(r['gIoU'])}"
print(line)
PY
done <<'LIST'
val mixed val 500
photo-val photo val 500
photo-testA photo testA 500
photo-testB photo testB 300
shapes-val shapes val 500
shapes-testA shapes testA 300
LIST
