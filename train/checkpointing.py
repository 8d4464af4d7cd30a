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

Faults (the files are written by `mabp.registry.write_checkpoint_file`: tmp + fsync + rename, checksum):
- before `last.pt` is replaced, the current one is kept as `last.prev.pt` (a hard link: no copy), so a
  `last.pt` that turns out unreadable on resume falls back to the previous good one
  (`load_resume_checkpoint`) instead of ending the run's history;
- `atomic_write_text` rewrites text files (log.jsonl on resume) the same way, so a kill at that moment
  leaves the old or the new file, never an empty one.
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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


PREVIOUS_SUFFIX = ".prev"


def previous_path(path: os.PathLike) -> Path:
    """`last.pt` -> `last.prev.pt`: where the checkpoint before the current one is kept."""
    p = Path(path)
    return p.with_name(p.stem + PREVIOUS_SUFFIX + p.suffix)


def keep_previous(path: os.PathLike) -> None:
    """Before `path` is replaced: keep its current content as `previous_path(path)` (a hard link, so no
    copy and no extra disk until the new file replaces `path`; a copy where links are unsupported)."""
    p = Path(path)
    if not p.is_file():
        return
    prev = previous_path(p)
    tmp = prev.with_name(prev.name + ".tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(p, tmp)
        except OSError:
            import shutil

            shutil.copyfile(p, tmp)
        os.replace(tmp, prev)
    except OSError as exc:  # never fatal: the new checkpoint is still written atomically
        warnings.warn(f"could not keep {p.name} as {prev.name}: {exc}")


def load_resume_checkpoint(path: os.PathLike, loader) -> Tuple[dict, Path]:
    """`loader(path)`, or -- when `path` is unreadable (CheckpointError) and `previous_path(path)` loads --
    the previous checkpoint, with a warning. Returns (checkpoint, the path it came from).

    Raises CheckpointError with what to do when neither loads.
    """
    from mabp.registry import CheckpointError

    path = Path(path)
    try:
        return loader(path), path
    except CheckpointError as exc:
        first = exc
    prev = previous_path(path)
    if prev.is_file():
        try:
            ckpt = loader(prev)
        except CheckpointError:
            pass
        else:
            warnings.warn(f"{first}; resuming from the previous checkpoint {prev} (step {ckpt.get('step')}) instead")
            return ckpt, prev
    tried = f" (and {prev.name} is unusable too)" if prev.is_file() else ""
    raise CheckpointError(f"{first}{tried}. To start this run again from step 0, move {path.name} and "
                          f"{prev.name} out of {path.parent}, or set train.resume=false") from None


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Replace a text file atomically and durably (tmp + fsync + rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


__all__ = ["capture_rng", "restore_rng", "seed_all", "pick_rng_for_rank", "previous_path", "keep_previous",
           "load_resume_checkpoint", "atomic_write_text"]
