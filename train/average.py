"""Average the weights of checkpoints from one training trajectory (a uniform or weighted "soup").

    python -m train.average runs/stage6/last.pt runs/stage7/last.pt --out runs/avg/export.pt
    python -m train.average A.pt B.pt C.pt --weights 0.25 0.25 0.5 --out runs/avg/export.pt --max-mb 50

Checkpoints taken along one fine-tuning trajectory (the same model, later stages started from earlier
ones) sit in one basin of the loss, and the average of their weights is often better than any one of
them: stochastic weight averaging (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
Generalization", UAI 2018) and uniform model soups (Wortsman et al., "Model soups", ICML 2022). It is
not meant for unrelated models: averaging two independently trained networks gives noise.

Every input is rebuilt with `mabp.build_mabp` (training checkpoints and exported ones alike, weights
left out of an export re-read from the packages), so the inputs must have the same model config, apart
from `inference` (the no-target threshold is an operating point of one weight set). Floating tensors
are averaged in fp32; a tensor bit-identical in every input (frozen encoder weights) is kept as it is,
so an export still leaves the package weights out. Integer and boolean tensors must be equal in all
inputs. The output is written like `train.export`'s (fp16 storage unless --fp32, package weights left
out), with `inference.nt_threshold` reset to 0.5 (the official argmax: choose it again with
`train.calibrate`), the first input's training config and vocabulary (`train.export.vocabulary_entry`),
and an `averaged_from` record (path as given, step, normalised weight and checksum of each input).
Errors (unreadable file, another model, bad weights) print one line and exit 2; a failed write exits 1.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

import torch


def normalised_weights(weights: Optional[Sequence[float]], n: int) -> List[float]:
    """`weights` (default uniform) scaled to sum 1. Raises ValueError when there are not `n` of them or
    one is not a positive finite number."""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} checkpoints")
    if not all(0 < w < float("inf") for w in weights):
        raise ValueError(f"weights must be positive finite numbers, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def average_state_dicts(states: Sequence[Dict[str, torch.Tensor]],
                        weights: Optional[Sequence[float]] = None) -> Dict[str, torch.Tensor]:
    """The weighted average of state dicts with the same keys, shapes and dtypes.

    Args:
        states: N >= 1 state dicts {name: tensor}.
        weights: N positive numbers (normalised to sum 1); default uniform.
    Returns:
        {name: tensor}: floating tensors averaged in fp32 and cast back to the first input's dtype;
        a tensor equal (bit for bit) in every input is returned unchanged (the first input's object);
        integer / bool tensors are returned unchanged.
    Raises:
        ValueError: no states; a weight count that differs from the state count; a weight that is not
            a positive finite number; keys, shapes or dtypes that differ; an integer / bool tensor whose
            values differ between inputs (nothing sensible to average).
    """
    if not states:
        raise ValueError("nothing to average: no state dicts given")
    weights = normalised_weights(weights, len(states))
    keys = list(states[0].keys())
    for i, s in enumerate(states[1:], start=2):
        if set(s.keys()) != set(keys):
            extra, missing = sorted(set(s) - set(keys)), sorted(set(keys) - set(s))
            raise ValueError(f"checkpoint {i} has other tensors than checkpoint 1 "
                             f"(extra: {extra[:3]}, missing: {missing[:3]}): not the same model")
    out: Dict[str, torch.Tensor] = {}
    for k in keys:
        ts = [s[k] for s in states]
        first = ts[0]
        for i, t in enumerate(ts[1:], start=2):
            if t.shape != first.shape or t.dtype != first.dtype:
                raise ValueError(f"{k}: checkpoint {i} has {tuple(t.shape)} {t.dtype}, checkpoint 1 has "
                                 f"{tuple(first.shape)} {first.dtype}: not the same model")
        if all(torch.equal(t, first) for t in ts[1:]):
            out[k] = first  # frozen weights stay bit-identical (an export keeps leaving them out)
            continue
        if not torch.is_floating_point(first):
            raise ValueError(f"{k}: a {first.dtype} tensor that differs between checkpoints cannot be averaged")
        acc = torch.zeros(first.shape, dtype=torch.float32)
        for w, t in zip(weights, ts):
            acc.add_(t.detach().to(torch.float32), alpha=w)
        out[k] = acc.to(first.dtype)
    return out


def _model_config_without_inference(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "inference"}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.average", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one model (training or exported)")
    ap.add_argument("--out", required=True, help="where to write the averaged checkpoint")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="one positive weight per checkpoint (normalised to sum 1; default uniform)")
    ap.add_argument("--fp32", action="store_true", help="store fp32 tensors (default fp16, as train.export)")
    ap.add_argument("--max-mb", type=float, default=None, help="fail if the result is larger")
    args = ap.parse_args(argv)
    if len(args.checkpoints) < 2:
        ap.error("give at least two checkpoints to average")
    if args.weights is not None and len(args.weights) != len(args.checkpoints):
        ap.error(f"--weights has {len(args.weights)} values for {len(args.checkpoints)} checkpoints")

    from mabp.registry import CheckpointError, build_mabp, load_checkpoint, save_checkpoint

    models, ckpts = [], []
    for path in args.checkpoints:
        try:
            ckpt = load_checkpoint(path)
            models.append(build_mabp(checkpoint=ckpt))
        except (FileNotFoundError, ValueError) as exc:  # CheckpointError is a ValueError
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        ckpts.append(ckpt)
    base = _model_config_without_inference(models[0].cfg.to_dict())
    for path, m in zip(args.checkpoints[1:], models[1:]):
        other = _model_config_without_inference(m.cfg.to_dict())
        if other != base:
            diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
            print(f"error: {path} is another model than {args.checkpoints[0]} (config differs in {diff}); "
                  "only checkpoints of one model can be averaged", file=sys.stderr)
            return 2
    try:
        state = average_state_dicts([m.state_dict() for m in models], args.weights)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = models[0]
    model.load_state_dict(state)
    # A no-target threshold was chosen for one weight set; the average starts from the official argmax.
    model.cfg.inference.nt_threshold = 0.5
    weights = normalised_weights(args.weights, len(models))  # checked above by average_state_dicts
    record = [{"file": str(p), "step": c.get("step"), "weight": w,
               "sha256": (c.get("checksum") or {}).get("sha256")}
              for p, c, w in zip(args.checkpoints, ckpts, weights)]
    first = ckpts[0]
    extra = {k: first[k] for k in ("train_config",) if k in first}
    from train.export import size_limit_status, vocabulary_entry

    extra.update(vocabulary_entry(first))
    extra["averaged_from"] = record
    try:
        dst = save_checkpoint(model, args.out, extra=extra, half=not args.fp32, skip_external=True)
    except (OSError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size_mb = dst.stat().st_size / 2**20
    print(f"wrote {dst}: {size_mb:.1f} MB, the average of "
          + ", ".join(f"{r['file']} (step {r['step']}) x {r['weight']:.3g}" for r in record)
          + "; inference.nt_threshold = 0.5: choose it with python -m train.calibrate")
    return size_limit_status(dst, args.max_mb)


if __name__ == "__main__":
    sys.exit(main())
