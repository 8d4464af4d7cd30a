"""Does a fast path answer like eager fp32 PyTorch? And how much faster is it?

Two candidates (`--path`):
- onnxruntime (default): the app's fast path (mabp/fast_path.py): the visual pass and the expression pass
  (text encoder, fusion, both decoders) exported to ONNX and run by ONNX Runtime's CPU provider in fp32;
  the app serves it (`--fast-path on`, the default).
- int8: dynamic quantization (`torch.ao.quantization.quantize_dynamic` of every nn.Linear; weights int8
  per channel, activations quantized on the fly, FBGEMM/VNNI kernels). It did not agree on the shipped
  checkpoints (docs/performance.md) and is not used.

    python benchmarks/fast_path_agreement.py --n 300
    python benchmarks/fast_path_agreement.py --path int8 --checkpoint assets/checkpoints/x.pt --n 300

On the first N SynthGRES val expressions (each image set once, then its expressions): the mask IoU
between the fp32 and the fast masks (both empty = 1), the share of identical no-target decisions, and
the median model time of a new expression (GRESResult.latency_ms) of each path. Pass criteria (issue
11): mean IoU >= 0.99 and the same decision on >= 99 % of the expressions; exit status 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def quantize_linear_int8(model):
    """An eval copy of `model` with every nn.Linear dynamically quantized to int8 (nn.MultiheadAttention's
    packed in-projection is not an nn.Linear and stays fp32)."""
    import copy
    import warnings

    import torch

    fast = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        torch.ao.quantization.quantize_dynamic(fast, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return fast


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--path", choices=("onnxruntime", "int8"), default="onnxruntime")
    ap.add_argument("--world", default=None, help="SynthGRES world (shapes | photo | mixed) when supported")
    args = ap.parse_args()

    import numpy as np
    import torch
    from tqdm import tqdm

    from mabp import build_mabp
    from mabp.predictor import MABPPredictor
    from mabp.registry import SHIPPED_CHECKPOINT
    from train.data import build_dataset

    torch.set_num_threads(args.threads)
    model = build_mabp(checkpoint=args.checkpoint or SHIPPED_CHECKPOINT).eval()
    if args.path == "int8":
        fast = MABPPredictor(quantize_linear_int8(model))
    else:
        from mabp.fast_path import build_fast_path

        path, note = build_fast_path(model)
        print(note)
        if path is None:
            return 1
        fast = MABPPredictor(model, fast_path=path)
    ref = MABPPredictor(model)
    kw = {"world": args.world} if args.world else {}
    ds = build_dataset("synthgres", "val", **kw)
    n = min(args.n, len(ds))
    ious, same, t_ref, t_fast = [], [], [], []
    last_image = None
    for i in tqdm(range(n), desc=f"fp32 vs {args.path}", unit="expr"):
        s = ds[i]
        if last_image is None or s["image_id"] != last_image:
            ref.set_image(s["image"])
            fast.set_image(s["image"])
            last_image = s["image_id"]
        a, b = ref.predict(s["sentence"]), fast.predict(s["sentence"])
        inter = np.logical_and(a.mask, b.mask).sum()
        union = np.logical_or(a.mask, b.mask).sum()
        ious.append(1.0 if union == 0 else inter / union)
        same.append(a.no_target == b.no_target)
        t_ref.append(a.latency_ms)
        t_fast.append(b.latency_ms)
    result = {"n": n, "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)),
              "same_no_target": float(np.mean(same)), "fp32_ms_median": statistics.median(t_ref),
              "fast_ms_median": statistics.median(t_fast), "path": args.path, "threads": args.threads}
    result["agrees"] = result["mean_iou"] >= 0.99 and result["same_no_target"] >= 0.99
    print(f"{n} expressions: mean mask IoU fp32 vs {args.path} {result['mean_iou']:.4f} (min {result['min_iou']:.3f}), "
          f"same no-target decision {100 * result['same_no_target']:.1f} %; model time median "
          f"fp32 {result['fp32_ms_median']:.1f} ms, {args.path} {result['fast_ms_median']:.1f} ms "
          f"({args.threads} threads)")
    print("agrees" if result["agrees"] else "DOES NOT AGREE (criteria: mean IoU >= 0.99, same decision >= 99 %)")
    print(json.dumps(result))
    return 0 if result["agrees"] else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
