"""Training checkpoints: everything an exact resume needs, in a `weights_only`-loadable dict.

A training checkpoint is an MABP checkpoint (`mabp.registry.save_checkpoint`: "format", "config" = the
model config, "model") plus:

    train_config   the resolved training config (train/config.py)
    step           finished iterations; the data position follows from it (see train.sampler)
    epoch          step // steps_per_epoch (informative)
    optimizer      AdamW state_dict            (last.pt only)
    scheduler      WarmupConstantCosine state  (last.pt only)
    scaler         GradScaler state_dict       (last.pt only; {} when AMP is off)
    rng            one RNG snapshot per rank: python, numpy, torch (+ cuda)   (last.pt only)
    data           {"seed", "global_batch", "steps_per_epoch", "epoch_length"} to detect a changed order
    best           {"metric": "gIoU", "value", "step"}
    nonfinite_streak
    world_size
    metrics        the evaluation that produced this checkpoint (best.pt) or the last one

Everything is tensors, numbers, strings, lists and dicts, so `torch.load(..., weights_only=True)` reads it
(numpy arrays inside RNG states are converted to tensors; python's tuples to lists).
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch


def capture_rng() -> Dict[str, Any]:
    """A snapshot of the python, numpy and torch (CPU and CUDA) global generators."""
    py_version, py_state, py_gauss = random.getstate()
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: Dict[str, Any] = {
        "python": {"version": int(py_version), "state": [int(x) for x in py_state], "gauss": py_gauss},
        "numpy": {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"]))
    npy = state["numpy"]
    key = npy["key"].numpy().astype(np.uint32) if isinstance(npy["key"], torch.Tensor) else np.asarray(npy["key"], np.uint32)
    np.random.set_state((npy["name"], key, int(npy["pos"]), int(npy["has_gauss"]), float(npy["gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def pick_rng_for_rank(states: Optional[List[Optional[Dict[str, Any]]]], rank: int) -> Optional[Dict[str, Any]]:
    """This rank's stored RNG snapshot, or None when the checkpoint has none for it (e.g. a different
    world size, or an emergency save that could only record rank 0)."""
    if not states or rank >= len(states):
        return None
    return states[rank]


__all__ = ["capture_rng", "restore_rng", "seed_all", "pick_rng_for_rank"]
