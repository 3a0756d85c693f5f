"""Which sample indices each rank reads, batch by batch: the plan of the index-based backends.

The `folder` backend and DALI over class folders both read a flat, sorted list of files, so
both use this one plan and visit the same samples on the same rank in the same order:

  * train: a permutation of all samples drawn from (seed, epoch), cut into world-size
    contiguous blocks of `num_samples // world_size` (the few left over are dropped), each
    cut into whole batches (drop_last). Every rank has the same number of batches.
  * val: no shuffle; rank r reads the contiguous block [N*r//W, N*(r+1)//W) with a partial
    last batch. Every sample is read exactly once across ranks, with no padding.

Resuming at batch k of an epoch skips the first k batches of the same plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from pipeline.data.base import rank_range


@dataclasses.dataclass(frozen=True)
class IndexPlan:
    num_samples: int  # the whole split
    batch_size: int  # per rank
    rank: int
    world_size: int
    train: bool  # shuffle + drop to equal batch counts; otherwise exact, in order
    seed: int

    def rank_indices(self, epoch: int) -> np.ndarray:
        """Dataset indices this rank reads in `epoch`, in reading order (train: trimmed to whole batches)."""
        if self.train:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            per_rank = self.num_samples // self.world_size
            per_rank -= per_rank % self.batch_size
            start = self.rank * (self.num_samples // self.world_size)
            return order[start : start + per_rank]
        start, stop = rank_range(self.num_samples, self.rank, self.world_size)
        return np.arange(start, stop)

    def num_batches(self, epoch: int = 0) -> int:
        if self.train:
            return (self.num_samples // self.world_size) // self.batch_size
        start, stop = rank_range(self.num_samples, self.rank, self.world_size)
        return -(-(stop - start) // self.batch_size)

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[np.ndarray]:
        """Index arrays of this rank's batches in `epoch`, from `start_batch` on."""
        indices = self.rank_indices(epoch)
        for batch in range(start_batch, self.num_batches(epoch)):
            yield indices[batch * self.batch_size : (batch + 1) * self.batch_size]
