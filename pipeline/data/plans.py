"""Reading plans: which samples each rank (and each loader worker) reads, batch by batch.

Every backend reads through one of two plans, so the same samples land on the same rank in the
same order whichever backend reads them:

  * `IndexPlan`, over a flat, sorted list of files (class folders: the `folder` backend and DALI
    over folders):
      - train: a permutation of all samples drawn from (seed, epoch), cut into world-size
        contiguous blocks of `num_samples // world_size` (the few left over are dropped), each
        cut into whole batches (drop_last). Every rank has the same number of batches.
      - val: no shuffle; rank r reads the contiguous block [N*r//W, N*(r+1)//W) with a partial
        last batch. Every sample is read exactly once across ranks, with no padding.
  * `ShardReadPlan`, over a manifest's shards (the `wds` backend and DALI over shards):
      1. The epoch's sample sequence is the shards' samples, shards in a per-epoch permutation
         drawn from (seed, epoch) for train, in manifest order for val; train also rotates the
         sequence to a per-epoch start, so the few samples an epoch drops differ per epoch even
         with one shard. The manifest gives each shard's count, so every rank computes the
         whole plan without reading a tar.
      2. Rank r reads the contiguous block [N*r//W, N*(r+1)//W) of that sequence (the formula
         DALI's readers use). Train keeps the first (N//W rounded down to whole batches) of it:
         the minimum over ranks, so every rank plans the same count; val keeps all of it, with
         a partial last batch. A block may start or end inside a shard (a `Segment`).
      3. Inside a rank, batch j comes from loader worker j % num_workers (the order in which
         the DataLoader polls its workers), and each worker reads one contiguous sub-block
         (a `WorkerBlock`).

Resuming at batch k of an epoch skips the first k batches of the same plan. Every draw here
comes from the one seed rule (core.seeds): the sample permutation is `Purpose.SAMPLE_ORDER`, the
shard permutation `SHARD_ORDER` and the rotation `SHARD_START`, each a function of (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.seeds import Purpose, stream_seed
from core.shard_format import MANIFEST_NAME, Manifest, ManifestError, check_files, read_manifest
from pipeline.config import Config
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous block of `num_samples` (DALI's reader sharding
    formula)."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


@dataclasses.dataclass(frozen=True)
class IndexPlan:
    num_samples: int  # the whole split
    batch_size: int  # per rank
    rank: int
    world_size: int
    train: bool  # shuffle + drop to equal batch counts; otherwise exact, in order
    seed: int

    def rank_indices(self, epoch: int) -> np.ndarray:
        """Dataset indices this rank reads in `epoch`, in reading order (train: trimmed to whole
        batches)."""
        if self.train:
            rng = np.random.default_rng(stream_seed(self.seed, Purpose.SAMPLE_ORDER, epoch))
            order = rng.permutation(self.num_samples)
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


def open_manifest(directory: Path, split: str) -> tuple[Manifest, list[Path]]:
    """The manifest and tar paths of a shard directory, with the loader's one-line errors."""
    if not (directory / MANIFEST_NAME).is_file():
        raise LoaderError(
            f"{directory} has no {MANIFEST_NAME}, so it is not a shard directory: for class "
            "folders use data.backend=folder (or dali); to make shards run "
            f"`python -m preprocess shard SRC DST --split {split}`"
        )
    try:
        manifest = read_manifest(directory)
        paths = check_files(directory, manifest, split)
    except ManifestError as err:
        raise LoaderError(str(err)) from err
    return manifest, paths


@dataclasses.dataclass(frozen=True)
class Segment:
    """Samples [skip, skip + take) of one tar, in tar order."""

    path: str
    skip: int
    take: int
    shard_start: int = 0  # split-wide index of the tar's first sample (manifest order)


@dataclasses.dataclass(frozen=True)
class WorkerBlock:
    """What one logical worker reads in one epoch."""

    segments: tuple[Segment, ...]
    first_position: int  # position of the block's first sample in the epoch sequence
    num_batches: int
    size: int  # samples


@dataclasses.dataclass(frozen=True)
class ShardReadPlan:
    """The whole per-epoch split of a shard directory over ranks and workers (see module doc)."""

    paths: tuple[str, ...]
    counts: tuple[int, ...]
    batch_size: int
    rank: int
    world_size: int
    num_workers: int  # logical workers, >= 1
    train: bool
    seed: int

    @classmethod
    def for_split(
        cls,
        paths: list[Path],
        manifest: Manifest,
        cfg: Config,
        split: str,
        dist: DistInfo,
        batch_size: int,
        num_workers: int,
    ) -> ShardReadPlan:
        """The plan of one rank over a manifest's shards (what the wds and dali backends read)."""
        return cls(
            paths=tuple(str(path) for path in paths),
            counts=tuple(shard.count for shard in manifest.shards),
            batch_size=batch_size,
            rank=dist.rank,
            world_size=dist.world_size,
            num_workers=max(1, num_workers),
            train=split == "train",
            seed=cfg.train.seed,
        )

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def shard_starts(self) -> tuple[int, ...]:
        """Split-wide index of each shard's first sample, shards in manifest order: sample k of
        shard s is sample shard_starts()[s] + k of the split, whatever the epoch's order."""
        return (0, *itertools.accumulate(self.counts))[: len(self.counts)]

    def shard_order(self, epoch: int) -> np.ndarray:
        if self.train:
            rng = np.random.default_rng(stream_seed(self.seed, Purpose.SHARD_ORDER, epoch))
            return rng.permutation(len(self.paths))
        return np.arange(len(self.paths))

    def rotation(self, epoch: int) -> int:
        """Train: where the epoch sequence starts, drawn from (seed, epoch). The sequence is
        rotated by it before rank blocks are cut, so the few samples a train epoch drops (to
        give every rank whole, equal batches) differ per epoch even with one shard. Val: 0."""
        if not self.train or self.num_samples == 0:
            return 0
        rng = np.random.default_rng(stream_seed(self.seed, Purpose.SHARD_START, epoch))
        return int(rng.integers(self.num_samples))

    def rank_samples(self) -> tuple[int, int]:
        """(first position, sample count) of this rank's part of the epoch sequence."""
        start, stop = rank_range(self.num_samples, self.rank, self.world_size)
        if self.train:
            per_rank = self.num_samples // self.world_size
            return start, per_rank - per_rank % self.batch_size
        return start, stop - start

    def num_batches(self) -> int:
        _, count = self.rank_samples()
        return count // self.batch_size if self.train else -(-count // self.batch_size)

    def worker_block(self, epoch: int, worker: int) -> WorkerBlock:
        """Logical worker `worker`'s contiguous sub-block:
        the rank batches j with j % workers == worker."""
        start, count = self.rank_samples()
        total_batches = self.num_batches()
        sizes = []
        for logical in range(self.num_workers):
            batches = range(logical, total_batches, self.num_workers)
            sizes.append(sum(min(self.batch_size, count - j * self.batch_size) for j in batches))
        first = start + sum(sizes[:worker])
        size = sizes[worker]
        return WorkerBlock(
            segments=tuple(self.segments(epoch, first, size)),
            first_position=first,
            num_batches=len(range(worker, total_batches, self.num_workers)),
            size=size,
        )

    def segments(self, epoch: int, first: int, size: int) -> Iterator[Segment]:
        """The tar slices covering positions [first, first + size) of the epoch sequence
        (shards in `shard_order`, rotated by `rotation`: a block may wrap around its end)."""
        total = self.num_samples
        start = (first + self.rotation(epoch)) % total if total else 0
        head = min(size, total - start)
        yield from self._unrotated_segments(epoch, start, head)
        if size > head:
            yield from self._unrotated_segments(epoch, 0, size - head)

    def _unrotated_segments(self, epoch: int, first: int, size: int) -> Iterator[Segment]:
        position = 0
        stop = first + size
        starts = self.shard_starts()
        for shard in self.shard_order(epoch):
            count = self.counts[shard]
            low, high = max(first, position), min(stop, position + count)
            if low < high:
                yield Segment(self.paths[shard], low - position, high - low, starts[shard])
            position += count
            if position >= stop:
                break
