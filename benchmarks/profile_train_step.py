"""Where the time of one training step goes: forward and backward per module, the criterion, the
optimizer and the data, measured with torch.profiler on real SynthGRES batches.

    python benchmarks/profile_train_step.py                      # lite, the shipped recipe, batch 8
    python benchmarks/profile_train_step.py --batch 8 --threads 2 --repeats 3
    python benchmarks/profile_train_step.py --repo ../old-checkout   # the same table for another checkout

Method. One whole step (data -> forward -> criterion -> backward -> AdamW) runs under torch.profiler
with a `record_function` range around every module listed in PARTS, entered and left by forward hooks,
so the forward time of a module is its range's wall time. Backward ops run on the autograd thread
outside those ranges; each backward op is attributed to the module whose forward range holds the
forward op with the same autograd sequence number (the link the profiler records). The table is the
median over `--repeats` profiled steps after one warm-up step. Times are wall-clock milliseconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]


def parts_of(model) -> List[Tuple[str, object]]:
    """(label, module) pairs in forward order; nested ranges are reported under the innermost label."""
    parts = [("text encoder (MiniLM)", model.text_encoder)]
    bb = model.backbone
    if hasattr(bb, "fusions"):
        parts.append(("visual: PWAM fusions", bb.fusions))
    if hasattr(bb, "backbone"):
        parts.append(("visual: CNN/Swin stages", bb.backbone))
    pd = model.pixel_decoder
    parts.append(("pixel decoder: deformable encoder", pd.transformer))
    parts.append(("pixel decoder: FPN + projections", pd))
    dec = model.decoder
    parts.append(("decoder: query generator", dec.query_generator))
    per = dec.layers_per_scale
    for s in range(dec.num_scales):
        for i in range(s * per, (s + 1) * per):
            parts.append((f"decoder: scale {s} layers", dec.layers[i]))
    for s, head in enumerate(dec.heads):
        parts.append((f"decoder: head {s}" + (" (final)" if s == len(dec.heads) - 1 else ""), head))
    parts.append(("decoder: query FPN", dec.query_fpn))
    parts.append(("decoder: masks, flatten, other", dec))
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=str(ROOT), help="the checkout whose code is profiled")
    ap.add_argument("--config", default="train/configs/lite_synthgres.yaml", help="relative to --repo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))

    import torch
    from torch.profiler import ProfilerActivity, profile

    from train.config import load_config
    from train.engine import Trainer

    torch.set_num_threads(args.threads)
    cfg = load_config(repo / args.config, [f"train.batch_size={args.batch}", "train.output_dir=/tmp/mabp-profile",
                                    "train.resume=null", "data.val_samples=8", *args.set])
    trainer = Trainer(cfg)
    model = trainer.bare_model
    labels: Dict[int, str] = {}
    handles = []
    parts = parts_of(model) + [("criterion (losses)", trainer.criterion)]
    for label, module in parts:
        labels.setdefault(id(module), label)

    def pre(mod, _inp):
        mod._prof_handle = torch.ops.profiler._record_function_enter_new("P:" + labels[id(mod)], None)

    def post(mod, _inp, _out):
        torch.ops.profiler._record_function_exit._RecordFunction(mod._prof_handle)

    seen = set()
    for _, module in parts:
        if id(module) in seen:
            continue
        seen.add(id(module))
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    loader = iter(trainer._make_loader(0, 0))
    times: Dict[str, List[float]] = defaultdict(list)
    step_ms: List[float] = []
    for rep in range(args.repeats + 1):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            with torch.profiler.record_function("P:data (generate + collate)"):
                batch = next(loader)
            t1 = time.perf_counter()
            trainer.train_step(batch)
            t2 = time.perf_counter()
        if rep == 0:
            continue  # warm-up
        step_ms.append((t2 - t0) * 1e3)
        fwd, bwd, other = attribute(prof)
        for k, v in fwd.items():
            times[("forward", k)].append(v)
        for k, v in bwd.items():
            times[("backward", k)].append(v)
        for k, v in other.items():
            times[("other", k)].append(v)
        times[("other", "data (generate + collate)")].append((t1 - t0) * 1e3)
    for h in handles:
        h.remove()

    total = statistics.median(step_ms)
    rows = defaultdict(lambda: [0.0, 0.0])
    for (kind, label), vals in times.items():
        m = statistics.median(vals) if len(vals) == args.repeats else sum(vals) / args.repeats
        if kind == "forward":
            rows[label][0] += m
        elif kind == "backward":
            rows[label][1] += m
        else:
            rows[label][0] += m
    print(f"preset {trainer.model_cfg.preset}, batch {args.batch}, {args.threads} threads, "
          f"median step {total:.0f} ms = {args.batch / total * 1e3:.2f} samples/s (profiler on)")
    print("| part | forward ms | backward ms | total ms | share |")
    print("|---|---|---|---|---|")
    accounted = 0.0
    for label, (f, b) in sorted(rows.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        accounted += f + b
        print(f"| {label} | {f:.1f} | {b:.1f} | {f + b:.1f} | {100 * (f + b) / total:.1f} % |")
    print(f"| unattributed (python, hooks, glue) | | | {total - accounted:.1f} | {100 * (total - accounted) / total:.1f} % |")


def attribute(prof) -> Tuple[Dict[str, float], Dict[str, float], Dict[str, float]]:
    """Forward ms per innermost "P:" range (self time of the range, i.e. minus nested "P:" ranges),
    backward ms per range (through sequence numbers), and the criterion / optimizer / backward glue."""
    events = prof.events()
    # Innermost "P:" range of each event (by CPU parent chain) and forward range self times.
    fwd: Dict[str, float] = defaultdict(float)
    seq_label: Dict[int, str] = {}

    def enclosing(ev):
        p = ev.cpu_parent
        while p is not None:
            if p.name.startswith("P:"):
                return p.name[2:]
            p = p.cpu_parent
        return None

    for ev in events:
        if ev.name.startswith("P:"):
            child = sum(d.time_range.elapsed_us() for d in _nested_ranges(ev))
            fwd[ev.name[2:]] += (ev.time_range.elapsed_us() - child) / 1e3
        elif ev.sequence_nr is not None and ev.sequence_nr >= 0 and not ev.name.startswith("autograd::"):
            lab = enclosing(ev)
            if lab is not None and ev.sequence_nr not in seq_label:
                seq_label[ev.sequence_nr] = lab
    bwd: Dict[str, float] = defaultdict(float)
    other: Dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.name.startswith("autograd::engine::evaluate_function"):
            lab = seq_label.get(ev.sequence_nr)
            ms = ev.time_range.elapsed_us() / 1e3
            if lab is None:
                other["backward: criterion + glue"] += ms
            else:
                bwd[lab] += ms
        elif ev.name.startswith("Optimizer.step"):
            other["optimizer (AdamW step)"] += ev.time_range.elapsed_us() / 1e3
    return fwd, bwd, other


def _nested_ranges(ev):
    """The outermost "P:" ranges strictly inside `ev`."""
    out = []
    stack = list(ev.cpu_children)
    while stack:
        c = stack.pop()
        if c.name.startswith("P:"):
            out.append(c)
        else:
            stack.extend(c.cpu_children)
    return out


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    main()
