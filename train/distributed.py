"""torch.distributed helpers: init from the torchrun environment, rank queries, reductions.

Every helper also works without an initialised process group (single process), returning the
single-process answer, so the engine has one code path.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from mabp.metrics import GRESMeter


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None  # None = not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" = this process's GPU when CUDA is available, else the CPU."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1 in the environment).

    Backend: nccl on CUDA, gloo on CPU. Returns the rank/world/device of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    if is_dist():  # already initialised by the caller
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, dev, backend)


def cleanup() -> None:
    """Destroy the process group (if any)."""
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_max_flag(flag: bool, device: torch.device) -> bool:
    """True if `flag` is True on any rank (the same answer on every rank)."""
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sums(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Sum every entry over ranks (keys must be the same, in the same order, on every rank)."""
    if not is_dist() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_gather_object(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a one-element list without a group)."""
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_meter(meter: GRESMeter) -> GRESMeter:
    """A meter holding every rank's samples (rank order), identical on every rank."""
    if not is_dist():
        return meter
    merged = GRESMeter()
    for state in all_gather_object(meter.state_dict()):
        merged.merge(state)
    return merged


__all__ = ["DistInfo", "init_distributed", "cleanup", "barrier", "is_dist", "get_rank", "get_world_size",
           "is_main_process", "pick_device", "all_reduce_max_flag", "all_reduce_sums", "all_gather_object",
           "gather_meter"]
