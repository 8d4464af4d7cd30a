"""Training throughput on CPU: samples/s of whole training steps (data -> forward -> losses -> backward ->
clip -> AdamW) with the real training engine and recipe, and peak memory.

    python benchmarks/train_throughput.py                          # lite (the shipped recipe), 2 threads
    python benchmarks/train_throughput.py --allocator both         # glibc malloc and tcmalloc, one row each
    python benchmarks/train_throughput.py --presets tiny lite paper --steps 6
    python benchmarks/train_throughput.py --repo ../old-checkout   # the same measurement on another checkout
    python benchmarks/train_throughput.py --set model.overrides.image_size=320 ...   # any config override

Each preset runs in its own subprocess (peak RSS is that preset's alone) through `train.engine.Trainer`
on real SynthGRES batches: lite with train/configs/lite_synthgres.yaml (frozen ImageNet stages, the
visual-pass cache when that checkout has one), tiny with tiny_synthgres.yaml, paper with the lite recipe
on the paper preset (nothing frozen but the official BERT parts). The first `--warmup` steps are not
counted; the figure is the median step over the next `--steps`. The visual cache hits 5 of 6 images
over a whole epoch (each image has 4-8 expressions spread over it, the first one misses) but fewer in
the first steps, which is all a benchmark sees: the table prints the hits it saw, and the training log
(`log.jsonl`, samples_per_sec) gives the long-run rate.
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
CONFIGS = {"tiny": ("train/configs/tiny_synthgres.yaml", []),
           "lite": ("train/configs/lite_synthgres.yaml", []),
           "paper": ("train/configs/lite_synthgres.yaml",
                     ["model.preset=paper", "optim.freeze=[]", "optim.lr_multipliers={}"])}


def run_one(repo: Path, preset: str, batch: int, steps: int, warmup: int, threads: int, overrides: list) -> dict:
    import torch

    sys.path.insert(0, str(repo))
    from train.config import load_config
    from train.engine import Trainer

    torch.set_num_threads(threads)
    config, extra = CONFIGS[preset]
    cfg = load_config(repo / config, [f"train.batch_size={batch}", "train.output_dir=/tmp/mabp-throughput",
                                      "train.resume=null", "data.val_samples=8", "data.epoch_length=8000",
                                      *extra, *overrides])
    trainer = Trainer(cfg)
    loader = iter(trainer._make_loader(0, 0))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch_data = next(loader)
        trainer.train_step(batch_data)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    cache = getattr(trainer, "visual_cache", None)
    return {"preset": preset, "size": trainer.image_size, "batch": batch, "threads": threads, "steps": steps,
            "s_per_step": round(step_s, 3), "samples_per_s": round(batch / step_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "trainable_m": round(sum(p.numel() for p in trainer.params) / 1e6, 1),
            "visual_cache": None if cache is None else f"{cache.hits}/{cache.hits + cache.misses} hits",
            "deform": f"{trainer.model_cfg.pixel_decoder.num_layers}x{trainer.model_cfg.pixel_decoder.num_points}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["lite"], choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=None, help="default: tiny 8, lite 8, paper 1")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=None, help="uncounted steps first (default: lite 40, else 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repo", default=str(ROOT), help="the checkout whose code and configs are measured")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--allocator", choices=("tcmalloc", "system", "both"), default="tcmalloc",
                    help="malloc of the measured process: tcmalloc (what train.fit uses when installed, "
                         "train/allocator.py), the system's glibc malloc, or both (one row each)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    if args.child:
        print(json.dumps(run_one(repo, args.child, args.batch, args.steps, args.warmup, args.threads, args.set)))
        return
    sys.path.insert(0, str(ROOT))
    from train.allocator import tcmalloc_path

    allocators = ["system", "tcmalloc"] if args.allocator == "both" else [args.allocator]
    if "tcmalloc" in allocators and tcmalloc_path() is None:
        print("note: tcmalloc is not installed (apt-get install libtcmalloc-minimal4); measuring the system "
              "allocator", file=sys.stderr)
        allocators = ["system"]
    rows = []
    for preset, allocator in [(p, a) for p in args.presets for a in allocators]:
        batch = args.batch or {"paper": 1}.get(preset, 8)
        warmup = args.warmup if args.warmup is not None else (40 if preset == "lite" else 1)
        cmd = [sys.executable, __file__, "--child", preset, "--batch", str(batch), "--steps", str(args.steps),
               "--warmup", str(warmup), "--threads", str(args.threads), "--repo", str(repo), "--set", *args.set]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # OpenMP as train.fit runs it
        env["LD_PRELOAD"] = ":".join(x for x in env.get("LD_PRELOAD", "").split(":") if x and "tcmalloc" not in x)
        if allocator == "tcmalloc":
            env["LD_PRELOAD"] = ":".join(x for x in (tcmalloc_path(), env["LD_PRELOAD"]) if x)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), allocator=allocator))
    print(f"code: {repo}")
    print("| preset | input | deformable layers x points | batch | threads | malloc | s/step | samples/s | visual cache | "
          "peak RSS (MB) | trainable (M) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['size']}² | {r['deform']} | {r['batch']} | {r['threads']} | {r['allocator']} | "
              f"{r['s_per_step']} | "
              f"{r['samples_per_s']} | {r['visual_cache'] or '–'} | {r['peak_rss_mb']} | {r['trainable_m']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
