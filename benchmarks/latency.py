"""Predictor latency on CPU: median ms of `set_image + predict`, of `predict` alone (a new
expression on an already-set image) and of its model time (`GRESResult.latency_ms`, what the app
reports), and the peak resident memory, per preset, with the app's ONNX Runtime fast path for new
expressions (mabp/fast_path.py) off and on.

    python benchmarks/latency.py                     # lite at 256, paper at 480, 2 threads, fast path off / on
    python benchmarks/latency.py --checkpoint assets/checkpoints/mabp-lite-synthgres.pt --repeats 30
    python benchmarks/latency.py --presets lite --repeats 20 --checkpoint assets/checkpoints/x.pt
    python benchmarks/latency.py --spincount passive # OMP_WAIT_POLICY=PASSIVE instead of app.py's setting
    python benchmarks/latency.py --checkpoint X.pt --flip-tta both   # flip TTA (mabp/flip_tta.py) off / on
    python benchmarks/latency.py --checkpoint X.pt --refine both     # mask refinement (mabp/mask_refine.py) off / on

The children run with app.py's OpenMP setting (GOMP_SPINCOUNT=3000) unless --spincount says otherwise.

Each preset runs in its own subprocess so that peak memory is that preset's alone. Weights are the
preset's (pretrained encoders where the preset has them, random elsewhere): latency does not depend on
the weight values, except that a late-fusion or closed-gate model caches the visual pass per image.
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
TEXTS = ["the red circle", "all the squares on the left", "the big blue star and the small green heart",
         "every shape but the triangles", "the purple elephant", "the circle next to the yellow cross"]


def run_one(preset: str, repeats: int, threads: int, checkpoint: str | None, fast_path: bool = False,
            flip_tta: bool | None = None, refine: bool | None = None) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from mabp import build_mabp
    from mabp.predictor import MABPPredictor

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = build_mabp(checkpoint=checkpoint) if checkpoint else build_mabp(preset)
    build_s = time.perf_counter() - t0
    fast, note = (None, "off")
    if fast_path:  # as app.py builds it (mabp/fast_path.py): export + load + probe check
        from mabp.fast_path import build_fast_path

        t0 = time.perf_counter()
        fast, note = build_fast_path(model)
        fast_build_s = time.perf_counter() - t0
    pred = MABPPredictor(model, fast_path=fast, flip_tta=flip_tta, refine=refine)
    rng = np.random.RandomState(0)
    image = rng.randint(0, 255, (480, 640, 3)).astype(np.uint8)
    # warm-up (first calls allocate and pick kernels)
    pred.set_image(image)
    pred.predict(TEXTS[0])
    full, only, model_ms, set_ms = [], [], [], []
    for i in range(repeats):
        t = time.perf_counter()
        pred.set_image(image)
        set_ms.append(pred.set_image_ms)
        pred.predict(TEXTS[i % len(TEXTS)])
        full.append((time.perf_counter() - t) * 1000)
        # a new expression on the already-set image (cache cleared per text by using distinct texts)
        t = time.perf_counter()
        result = pred.predict(f"{TEXTS[(i + 1) % len(TEXTS)]} {i}")
        only.append((time.perf_counter() - t) * 1000)
        model_ms.append(result.latency_ms)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "preset": model.cfg.preset, "size": model.cfg.image_size, "threads": threads, "repeats": repeats,
        "visual_cached": model.visual_cacheable(), "build_s": round(build_s, 2),
        "set_image_ms": round(statistics.median(set_ms), 1),
        "set_image_plus_predict_ms": round(statistics.median(full), 1),
        "predict_ms": round(statistics.median(only), 1),
        "model_ms": round(statistics.median(model_ms), 1),
        "model_ms_p10": round(sorted(model_ms)[int(0.1 * (len(model_ms) - 1))], 1),
        "model_ms_p90": round(sorted(model_ms)[int(0.9 * (len(model_ms) - 1))], 1),
        "peak_rss_mb": round(peak_mb, 0),
        "engine": result.extras["engine"], "fast_path_note": note, "flip_tta": pred.flip_tta,
        "refine": result.extras["refine"],
        "fast_path_build_s": round(fast_build_s, 2) if fast_path else None,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["lite", "paper"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="benchmark this checkpoint instead of a preset")
    ap.add_argument("--spincount", default="3000",
                    help="GOMP_SPINCOUNT for the children (app.py's default 3000), 'passive' for "
                         "OMP_WAIT_POLICY=PASSIVE, 'env' to keep the caller's environment")
    ap.add_argument("--fast-path", choices=("on", "off", "both"), default="both",
                    help="the app's ONNX Runtime path for new expressions (mabp/fast_path.py); both: one row each")
    ap.add_argument("--flip-tta", choices=("model", "on", "off", "both"), default="model",
                    help="flip test-time augmentation: the model's own setting (inference.flip_tta), on, off, "
                         "or both (one row each)")
    ap.add_argument("--refine", choices=("model", "on", "off", "both"), default="model",
                    help="mask refinement (guided filter at the image's size): the model's own setting "
                         "(inference.refine), on (the model's radius / eps), off, or both (one row each)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        flip = {"model": None, "on": True, "off": False}[args.flip_tta]
        refine = {"model": None, "on": True, "off": False}[args.refine]
        print(json.dumps(run_one(args.child, args.repeats, args.threads, args.checkpoint, args.fast_path == "on", flip,
                                 refine)))
        return
    rows = []
    targets = ["checkpoint"] if args.checkpoint else args.presets
    switches = ["off", "on"] if args.fast_path == "both" else [args.fast_path]
    flips = ["off", "on"] if args.flip_tta == "both" else [args.flip_tta]
    refines = ["off", "on"] if args.refine == "both" else [args.refine]
    for preset, switch, flip, ref in [(p, s, f, r) for p in targets for s in switches for f in flips for r in refines]:
        cmd = [sys.executable, __file__, "--child", preset, "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--fast-path", switch, "--flip-tta", flip, "--refine", ref]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if args.spincount == "passive":
            env.pop("GOMP_SPINCOUNT", None)
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        elif args.spincount != "env":
            env.pop("OMP_WAIT_POLICY", None)
            env["GOMP_SPINCOUNT"] = args.spincount
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"OpenMP: {args.spincount if args.spincount in ('passive', 'env') else 'GOMP_SPINCOUNT=' + args.spincount}")
    print("| preset | input | engine | flip TTA | mask refinement | threads | visual pass cached | set_image + predict (ms) "
          "| predict alone (ms) | model time (ms, median / p90) | peak RSS (MB) | params (M) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['size']}² | {r['engine']} | {'on' if r['flip_tta'] else 'off'} | {r['refine']} | {r['threads']} | "
              f"{r['visual_cached']} | "
              f"{r['set_image_plus_predict_ms']} | {r['predict_ms']} | {r['model_ms']} / {r['model_ms_p90']} | "
              f"{r['peak_rss_mb']:.0f} | {r['params_m']} |")
    for r in rows:
        if r["fast_path_note"] != "off":
            print(f"{r['preset']}: {r['fast_path_note']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
