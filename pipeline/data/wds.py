"""The `wds` backend: WebDataset shards (DST/{train,val}/imagenet-*.tar + manifest.json) + DataLoader.

    python -m pipeline.train --config configs/alexnet.yaml data.backend=wds \
        data.train_dir=DST/train data.val_dir=DST/val

How the samples are split, so every rank yields the same number of train batches and val
visits every sample exactly once (the two classic WebDataset-under-DDP bugs):

  1. The epoch's sample sequence is the shards' samples, shards in a per-epoch permutation
     drawn from (seed, epoch) for train, in manifest order for val; train also rotates the
     sequence to a per-epoch start, so the few samples an epoch drops differ per epoch even
     with one shard. The manifest gives each shard's count, so every rank computes the whole
     plan without reading a tar.
  2. Rank r reads the contiguous block [N*r//W, N*(r+1)//W) of that sequence (the formula
     DALI's readers use, so `wds` and `dali` put the same samples on the same rank). Train
     keeps the first (N//W rounded down to whole batches) of it: the minimum over ranks, so
     every rank plans the same count (checked by an all-gather before each epoch); val keeps
     all of it, with a partial last batch. A block may start or end inside a shard; the
     reader then seeks to its first sample with the offsets in the shard's DALI index.
  3. Inside a rank, batch j comes from DataLoader worker j % num_workers (the order in which
     the DataLoader polls its workers), and each worker reads one contiguous sub-block.
  4. Train streams go through webdataset's shuffle buffer (data.shuffle_buffer) seeded from
     (seed, epoch, rank, worker); shards were also globally shuffled when written.

The per-epoch order therefore depends on (seed, epoch, world size, batch size, num_workers)
(pipeline.train finishes an epoch interrupted under another num_workers with the checkpoint's);
resuming at batch k (`set_epoch(epoch, k)`) rebuilds the same streams and drops the samples
of the first k batches before decoding, so the rest is identical to the uninterrupted epoch.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipeline.config import Config
from pipeline.data.base import (
    Loader,
    LoaderError,
    check_same_classes,
    decode_error,
    rank_range,
    train_classes,
)
from pipeline.data.transforms import (
    Augmentation,
    collate_uint8,
    decode_train,
    decode_val,
    sample_rng,
)
from pipeline.distributed import DistInfo
from preprocess.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    check_files,
    dali_index_name,
    read_manifest,
)
from preprocess.synsets import find_class_names

logger = logging.getLogger(__name__)


def open_manifest(directory: Path, split: str) -> tuple[Manifest, list[Path]]:
    """The manifest and tar paths of a shard directory, with the loader's one-line errors."""
    if not (directory / MANIFEST_NAME).is_file():
        raise LoaderError(
            f"{directory} has no {MANIFEST_NAME}, so it is not a shard directory: for class folders use "
            f"data.backend=folder (or dali); to make shards run `python -m preprocess shard SRC DST --split {split}`"
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


@dataclasses.dataclass(frozen=True)
class WorkerBlock:
    """What one logical worker reads in one epoch."""

    segments: tuple[Segment, ...]
    first_position: int  # position of the block's first sample in the epoch sequence
    num_batches: int
    size: int  # samples


@dataclasses.dataclass(frozen=True)
class ShardPlan:
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
        cls, paths, manifest, cfg, split: str, dist, batch_size: int, num_workers: int
    ) -> ShardPlan:
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

    def shard_order(self, epoch: int) -> np.ndarray:
        if self.train:
            return np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.paths))
        return np.arange(len(self.paths))

    def rotation(self, epoch: int) -> int:
        """Train: where the epoch sequence starts, drawn from (seed, epoch). The sequence is
        rotated by it before rank blocks are cut, so the few samples a train epoch drops (to
        give every rank whole, equal batches) differ per epoch even with one shard. Val: 0."""
        if not self.train or self.num_samples == 0:
            return 0
        return int(np.random.default_rng([self.seed, epoch, 11]).integers(self.num_samples))

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
        """Logical worker `worker`'s contiguous sub-block: the rank batches j with j % workers == worker."""
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
        for shard in self.shard_order(epoch):
            count = self.counts[shard]
            low, high = max(first, position), min(stop, position + count)
            if low < high:
                yield Segment(self.paths[shard], low - position, high - low)
            position += count
            if position >= stop:
                break


TAR_BLOCK = 512  # bytes of a tar member header


def sample_offset(tar_path: str, sample: int) -> int:
    """Byte offset of the first tar header of sample number `sample`, from the DALI index next
    to the tar; 0 (read from the start) when the index is missing or disagrees with the tar."""
    path = Path(tar_path)
    try:
        lines = path.with_name(dali_index_name(path.name)).read_text().splitlines()
        version, fields = lines[0].split()[0], lines[1 + sample].split()
        width = (
            4 if version >= "v1.2" else 3
        )  # v1.2 lines are (ext, offset, size, file name) per member
        members = [fields[start : start + width] for start in range(0, len(fields), width)]
        first = min(members, key=lambda member: int(member[1]))
        offset = int(first[1]) - TAR_BLOCK  # a member's data follows its 512-byte header
        with open(path, "rb") as handle:
            handle.seek(offset)
            header = tarfile.TarInfo.frombuf(handle.read(TAR_BLOCK), "utf-8", "surrogateescape")
    except (OSError, IndexError, ValueError, tarfile.TarError):
        return 0
    name_matches = header.name == first[3] if width == 4 else header.name.endswith("." + first[0])
    return offset if offset > 0 and name_matches and header.size == int(first[2]) else 0


def read_segments(segments: Iterator[Segment]) -> Iterator[dict]:
    """Pipeline stage: tar slices → raw samples (bytes only; nothing is decoded here).

    A slice that starts inside a tar seeks straight to its first sample (offsets from the DALI
    index), so rank and worker blocks and resumed epochs read only their own bytes.
    """
    for segment in segments:
        offset = sample_offset(segment.path, segment.skip) if segment.skip else 0
        skip = 0 if offset else segment.skip
        with open(segment.path, "rb") as stream:
            stream.seek(offset)
            samples = group_by_keys(tar_file_expander([{"url": segment.path, "stream": stream}]))
            yield from itertools.islice(samples, skip, skip + segment.take)


class ShardStream(IterableDataset):
    """One rank's batches for the epoch held in shared memory (persistent workers see updates)."""

    def __init__(self, plan: ShardPlan, aug: Augmentation, shuffle_buffer: int, split: str) -> None:
        self.plan = plan
        self.aug = aug
        self.shuffle_buffer = shuffle_buffer
        self.split = split
        # (epoch, start_batch), shared with forked workers; read at the start of every iteration
        self.state = multiprocessing.RawArray("q", 2)

    def __len__(self) -> int:
        return self.plan.num_batches() - self.state[1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start_batch = int(self.state[0]), int(self.state[1])
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        assert workers == self.plan.num_workers, (
            f"plan for {self.plan.num_workers} workers, running {workers}"
        )
        # resuming at batch k: physical worker 0 must produce rank batch k (the DataLoader polls it first)
        logical = (physical + start_batch) % workers
        skip_batches = max(0, (start_batch - logical + workers - 1) // workers)
        block = self.plan.worker_block(epoch, logical)
        if skip_batches >= block.num_batches:
            return
        stages = [lambda: iter(block.segments), read_segments]
        if self.split == "train":
            rng = random.Random(f"{self.plan.seed}-{epoch}-{self.plan.rank}-{logical}")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages.append(
            self._decoder(epoch, block.first_position, skip_batches * self.plan.batch_size)
        )
        stages.append(wds.batched(self.plan.batch_size, collation_fn=collate_uint8, partial=True))
        # now: uint8 [B, H, W, 3] batches of this worker's block, from batch skip_batches on
        yield from wds.DataPipeline(*stages)

    def _decoder(self, epoch: int, first_position: int, skip_samples: int):
        aug, train, seed = self.aug, self.split == "train", self.plan.seed

        def decode(samples: Iterator[dict]) -> Iterator[tuple[np.ndarray, int]]:
            for position, sample in enumerate(samples):
                if position < skip_samples:
                    continue  # before the resume point: dropped undecoded
                try:
                    if train:
                        pixels = decode_train(
                            sample["jpg"], aug, sample_rng(seed, epoch, first_position + position)
                        )
                    else:
                        pixels = decode_val(sample["jpg"], aug)
                    label = int(sample["cls"])
                except (KeyError, OSError, ValueError) as err:
                    url = str(sample.get("__url__"))
                    raise decode_error(
                        f"{url}: sample {sample.get('__key__')!r}", err, str(Path(url).parent)
                    ) from err
                yield pixels, label

        return decode


class WdsLoader(Loader):
    backend = "wds"

    def __init__(
        self, cfg: Config, split: str, dist: DistInfo, directory: Path, batch_size: int
    ) -> None:
        manifest, paths = open_manifest(directory, split)
        check_same_classes(directory, manifest.classes, train_classes(cfg, split))
        super().__init__(
            split=split,
            classes=manifest.classes,
            class_names=manifest.class_names or find_class_names(directory),
            num_samples=manifest.num_samples,
            batch_size=batch_size,
            dist=dist,
            channels_last=cfg.train.channels_last,
        )
        self.directory = directory
        self.manifest = manifest
        workers = cfg.data.num_workers
        self.plan = ShardPlan.for_split(paths, manifest, cfg, split, dist, batch_size, workers)
        self.check_planned_batches(directory)
        self.stream = ShardStream(
            self.plan, Augmentation.from_config(cfg.data), cfg.data.shuffle_buffer, split
        )
        self.dataloader = DataLoader(
            self.stream,
            batch_size=None,  # the stream yields whole batches
            num_workers=workers,
            pin_memory=cfg.data.pin_memory and self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        )
        logger.info(
            "wds %s: %d samples in %d shards from %s",
            split,
            manifest.num_samples,
            len(paths),
            directory,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        self.stream.state[0], self.stream.state[1] = epoch, start_batch

    def _planned_batches(self, epoch: int) -> int:
        return self.plan.num_batches()

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.dataloader)
