"""Deterministic, rank-sharded batch sampling.

The order of an epoch is a pure function of (seed, epoch): a permutation of the dataset indices. The
permutation is cut into *global* batches of `batch_size x world_size` (the incomplete tail is dropped,
as the official loader does), and rank r takes slice [r*B, (r+1)*B) of each global batch. So the union
over ranks of step t is exactly what a single process with batch B x world_size sees at step t — the
property the DDP equivalence test relies on — and resuming at step t of an epoch only needs the step.
"""
from __future__ import annotations

from typing import Iterator, List

import numpy as np


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch (independent of rank, world size and worker count)."""
    if not shuffle:
        return np.arange(num_samples)
    # A fresh generator per (seed, epoch): no hidden state to save for an exact resume.
    return np.random.default_rng((int(seed), int(epoch))).permutation(num_samples)


class ShardedBatchSampler:
    """Yields this rank's index lists for the steps [start_step, steps_per_epoch) of one epoch.

    Args:
        num_samples: dataset length.
        batch_size: per-rank batch size B.
        rank, world_size: this process's shard.
        seed, epoch: define the permutation.
        epoch_length: use only the first `epoch_length` entries of the permutation (None = all).
        start_step: first step to yield (resume in the middle of an epoch).
        shuffle: False = dataset order (for debugging).
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 epoch: int = 0, epoch_length: int | None = None, start_step: int = 0, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.epoch = int(seed), int(epoch)
        self.epoch_length = self.num_samples if epoch_length is None else min(int(epoch_length), self.num_samples)
        self.shuffle = shuffle
        self.start_step = int(start_step)
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch of {self.epoch_length} samples holds no complete global batch of "
                             f"{self.global_batch} (batch_size {batch_size} x world size {world_size})")
        if not 0 <= self.start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside the epoch's {self.steps_per_epoch} steps")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.epoch_length // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[List[int]]:
        order = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)[: self.epoch_length]
        g, b = self.global_batch, self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = order[step * g: (step + 1) * g]
            yield chunk[self.rank * b: (self.rank + 1) * b].tolist()


def eval_shard(num_samples: int, rank: int = 0, world_size: int = 1) -> List[int]:
    """Indices rank r evaluates: r, r + W, r + 2W, ... (every sample exactly once over the ranks)."""
    return list(range(rank, num_samples, world_size))


__all__ = ["ShardedBatchSampler", "epoch_permutation", "eval_shard"]
