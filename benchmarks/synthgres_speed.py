"""SynthGRES generation speed on ONE core (spec target: >= 300 samples/s at 320x320).

    .venv/bin/python benchmarks/synthgres_speed.py [--num 3000] [--size 320] [--split train] [--world photo]

Measures, after a short warm-up, with the process pinned to a single CPU and cv2 single-threaded:
  * sequential access  ds[0], ds[1], ...   (the intended train stream: consecutive samples share a
                                            scene, so each scene is rendered once for 4-8 samples)
  * random access      ds[random k]        (worst case: a fresh scene for nearly every sample)
  * scene-only         generation + rendering of one scene
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pin_one_core() -> str:
    """Restrict this process to one CPU and one thread so the number is a per-core figure."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2

    cv2.setNumThreads(1)
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return "affinity not supported; single-threaded"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=3000, help="samples per measurement")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--split", default="train", choices=("train", "val", "testA", "testB"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--world", default="shapes", choices=("shapes", "photo", "mixed"),
                    help="photo / mixed need the Debian packages; their stamp / background caches are warmed "
                         "first (decoding ~300 stamps once per process takes a few seconds)")
    args = ap.parse_args()
    where = _pin_one_core()

    import numpy as np

    from train.data.synthgres import SynthGRES, generate_scene

    fixed = args.split != "train"
    n_total = 2000 if fixed else 40 * args.num
    num = min(args.num, 2000) if fixed else args.num

    def fresh() -> SynthGRES:
        return SynthGRES(args.split, size=args.size, length=None if fixed else n_total, world=args.world)

    warm = fresh()
    for k in range(50):  # warm-up (imports, lru caches, allocator)
        warm[len(warm) - 1 - k]
    if args.world != "shapes":  # per-process caches of decoded stamps and backgrounds
        for i in range(len(warm.assets.stamps)):
            warm.assets.levels(i)
        for i in range(len(warm.assets.background_files)):
            warm.assets.background(i)

    # The machine may be shared, so each figure is measured `repeats` times on disjoint data and
    # reported as best / median (best = least disturbed by other processes).
    seq, rand, scene_ms = [], [], []
    rs = np.random.default_rng(0)
    for rep in range(args.repeats):
        ds = fresh()
        start = 0 if fixed else rep * num
        t0 = time.perf_counter()
        for k in range(start, start + num):
            ds[k]
        seq.append(num / (time.perf_counter() - t0))

        ds = fresh()
        n_rand = max(num // 4, 200)
        order = rs.integers(0, n_total, size=n_rand)
        t0 = time.perf_counter()
        for k in order:
            ds[int(k)]
        rand.append(n_rand / (time.perf_counter() - t0))

        t0 = time.perf_counter()
        for i in range(200):
            if args.world == "shapes":
                generate_scene(np.random.default_rng([9, rep, i]), args.size, args.split)
            else:
                ds.scene(10_000 + rep * 1000 + i)  # a fresh scene (cache miss), photo or mixed
        scene_ms.append(1000 * (time.perf_counter() - t0) / 200)

    def fmt(v: list[float]) -> str:
        return f"best {max(v):8.1f}   median {float(np.median(v)):8.1f}"

    print(f"SynthGRES {args.world} world, {args.split} {args.size}x{args.size}, one core ({where}), "
          f"{args.repeats} repeats")
    print(f"  sequential access  samples/s: {fmt(seq)}   (target >= 300)")
    print(f"  random access      samples/s: {fmt(rand)}   (a new scene per sample)")
    print(f"  scene + render     ms/scene : best {min(scene_ms):8.2f}   median {float(np.median(scene_ms)):8.2f}")


if __name__ == "__main__":
    main()
