"""Training-step throughput on CPU: samples/s of forward + loss + backward + AdamW step, and peak memory.

    python benchmarks/train_throughput.py                         # tiny, lite, paper; 2 threads
    python benchmarks/train_throughput.py --presets lite --batch 8 --steps 5 --freeze backbone.backbone.

Each preset runs in its own subprocess (peak RSS is that preset's alone) on synthetic batches of the
preset's input size, with the official optimizer rules (BERT embeddings + last 2 layers frozen). The
first step is a warm-up and is not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(preset: str, batch: int, steps: int, threads: int, freeze: list) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from mabp import build_mabp
    from mabp.criterion import build_criterion
    from mabp.tokenizer import TextTokenizer
    from train.optim import build_param_groups, freeze_bert_parts, freeze_prefixes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_mabp(preset).train()
    freeze_bert_parts(model, 2)
    if freeze:
        freeze_prefixes(model, freeze)
    criterion = build_criterion(model.cfg)
    opt = torch.optim.AdamW(build_param_groups(model, 0.05), lr=1e-4)
    s = model.cfg.image_size
    tok = TextTokenizer(model.cfg.text)(["the two red circles left of the blue star"] * batch)
    images = torch.rand(batch, 3, s, s) * 255
    gt = torch.zeros(batch, s, s)
    gt[:, s // 4: s // 2, s // 4: s // 2] = 1
    nt = torch.zeros(batch, dtype=torch.bool)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = criterion(model(images, tok.input_ids, tok.attention_mask), gt, nt)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"preset": preset, "size": s, "batch": batch, "threads": threads, "steps": steps, "freeze": freeze,
            "s_per_step": round(step_s, 3), "samples_per_s": round(batch / step_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "trainable_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "lite", "paper"])
    ap.add_argument("--batch", type=int, default=None, help="default: tiny 8, lite 8, paper 1")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--freeze", nargs="*", default=[], help="parameter-name prefixes kept fixed")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.batch, args.steps, args.threads, args.freeze)))
        return
    rows = []
    for preset in args.presets:
        batch = args.batch or {"paper": 1}.get(preset, 8)
        cmd = [sys.executable, __file__, "--child", preset, "--batch", str(batch), "--steps", str(args.steps),
               "--threads", str(args.threads)]
        if args.freeze and preset == "lite":
            cmd += ["--freeze", *args.freeze]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| preset | input | batch | threads | frozen | s/step | samples/s | peak RSS (MB) | trainable (M) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['size']}² | {r['batch']} | {r['threads']} | {', '.join(r['freeze']) or '–'} | "
              f"{r['s_per_step']} | {r['samples_per_s']} | {r['peak_rss_mb']} | {r['trainable_m']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
