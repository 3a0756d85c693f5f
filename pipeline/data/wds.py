"""The `wds` backend: WebDataset shards (DST/{train,val}/imagenet-*.tar + manifest.json) +
DataLoader.

    python -m pipeline.train --config configs/alexnet.yaml data.backend=wds \
        data.train_dir=DST/train data.val_dir=DST/val

How the samples are split, so every rank yields the same number of train batches and val
visits every sample exactly once (the two classic WebDataset-under-DDP bugs), is
pipeline/data/plans.py's ShardReadPlan: a per-epoch sample sequence over the manifest's shards,
cut into rank blocks and, inside a rank, into one contiguous sub-block per DataLoader worker
(batch j comes from worker j % num_workers). What this module adds:
  * a block that starts inside a shard seeks straight to its first sample with the offsets in
    the shard's DALI index, so ranks, workers and resumed epochs read only their own bytes;
  * train streams go through webdataset's shuffle buffer (data.shuffle_buffer) seeded from
    (seed, epoch, rank, worker) (`Purpose.SHUFFLE_BUFFER`, sub: the logical worker); shards
    were also globally shuffled when written.

The per-epoch order therefore depends on (seed, epoch, world size, batch size, num_workers)
(pipeline.train finishes an epoch interrupted under another num_workers with the checkpoint's);
resuming at batch k (`set_epoch(epoch, k)`) rebuilds the same streams and drops the samples
of the first k batches before decoding, so the rest is identical to the uninterrupted epoch.
What each sample becomes does not depend on the order: its crop, flip and auto-augment draws
come from `sample_rng(seed, epoch, its index in the split)` (the manifest-order index that
`read_segments` tags it with), and its size from `train_resolution(data, epoch)`, the epoch
being read from the shared state at the start of every pass.
"""

from __future__ import annotations

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

from core.seeds import Purpose, stream_seed
from core.shard_format import TAR_BLOCK, ManifestError, read_dali_index
from pipeline.config import Config, DataConfig
from pipeline.data.base import ClassList, Loader, check_same_classes, decode_error
from pipeline.data.batches import BatchBuffers, ring_slots
from pipeline.data.plans import Segment, ShardReadPlan, open_manifest
from pipeline.data.transforms import (
    Augmentation,
    build_auto_augment,
    decode_train,
    decode_val,
    sample_rng,
    train_resolution,
)
from pipeline.distributed import DistInfo

logger = logging.getLogger(__name__)


def sample_offset(tar_path: str, sample: int) -> int:
    """Byte offset of the first tar header of sample number `sample`, from the DALI index next
    to the tar; 0 (read from the start) when the index is missing or disagrees with the tar."""
    path = Path(tar_path)
    try:
        index = read_dali_index(path)
        first = min(index.samples[sample], key=lambda member: member.offset)
        with open(path, "rb") as handle:
            handle.seek(first.header_offset)
            header = tarfile.TarInfo.frombuf(handle.read(TAR_BLOCK), "utf-8", "surrogateescape")
    except (ManifestError, OSError, IndexError, ValueError, tarfile.TarError):
        return 0
    if first.name is not None:
        name_matches = header.name == first.name
    else:
        name_matches = header.name.endswith("." + first.extension)
    return (
        first.header_offset
        if first.header_offset > 0 and name_matches and header.size == first.size
        else 0
    )


def read_segments(segments: Iterator[Segment]) -> Iterator[dict]:
    """Pipeline stage: tar slices → raw samples (bytes only; nothing is decoded here), each
    tagged with "__index__", its index in the split (manifest order).

    A slice that starts inside a tar seeks straight to its first sample (offsets from the DALI
    index), so rank and worker blocks and resumed epochs read only their own bytes.
    """
    for segment in segments:
        offset = sample_offset(segment.path, segment.skip) if segment.skip else 0
        skip = 0 if offset else segment.skip
        with open(segment.path, "rb") as stream:
            stream.seek(offset)
            samples = group_by_keys(tar_file_expander([{"url": segment.path, "stream": stream}]))
            for number, sample in enumerate(itertools.islice(samples, skip, skip + segment.take)):
                sample["__index__"] = segment.shard_start + segment.skip + number
                yield sample


class ShardStream(IterableDataset):
    """One rank's batches for the epoch held in shared memory (persistent workers see updates)."""

    def __init__(
        self,
        plan: ShardReadPlan,
        data: DataConfig,
        shuffle_buffer: int,
        split: str,
        buffers: BatchBuffers | None = None,
    ) -> None:
        self.plan = plan
        self.data = data  # for train_resolution(data, epoch)
        self.aug = Augmentation.from_config(data)
        self.shuffle_buffer = shuffle_buffer
        self.split = split
        # (epoch, start_batch), shared with forked workers; read at the start of every iteration
        self.state = multiprocessing.RawArray("q", 2)
        # each worker process reuses its own ring of batch buffers (pipeline/data/batches.py)
        self.buffers = buffers if buffers is not None else BatchBuffers(slots=2)

    def __len__(self) -> int:
        return self.plan.num_batches() - self.state[1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start_batch = int(self.state[0]), int(self.state[1])
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        assert workers == self.plan.num_workers, (
            f"plan for {self.plan.num_workers} workers, running {workers}"
        )
        # resuming at batch k: physical worker 0 must produce rank batch k (the DataLoader polls it
        # first)
        logical = (physical + start_batch) % workers
        skip_batches = max(0, (start_batch - logical + workers - 1) // workers)
        block = self.plan.worker_block(epoch, logical)
        if skip_batches >= block.num_batches:
            return
        stages = [lambda: iter(block.segments), read_segments]
        if self.split == "train":
            seed = stream_seed(
                self.plan.seed, Purpose.SHUFFLE_BUFFER, epoch, rank=self.plan.rank, sub=logical
            )
            rng = random.Random(seed)
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages.append(self._batcher(epoch, skip_batches * self.plan.batch_size))
        # now: uint8 [B, size, size, 3] batches of this worker's block, from batch skip_batches on
        yield from wds.DataPipeline(*stages)

    def _batcher(self, epoch: int, skip_samples: int):
        """Pipeline stage: raw samples → decoded batches, each sample decoded straight into a
        reused batch buffer (pipeline/data/batches.py); the last batch may be short."""
        batch_size = self.plan.batch_size
        size = train_resolution(self.data, epoch) if self.split == "train" else self.aug.val_crop

        def batches(samples: Iterator[dict]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            kept = itertools.islice(samples, skip_samples, None)  # before the resume point:
            # dropped undecoded
            while chunk := list(itertools.islice(kept, batch_size)):
                images, labels = self.buffers.next(len(chunk), size)
                pixels = images.numpy()  # [B, size, size, 3] uint8
                for position, sample in enumerate(chunk):
                    labels[position] = self._decode(sample, epoch, size, pixels[position])
                yield images, labels

        return batches

    def _decode(self, sample: dict, epoch: int, size: int, out: np.ndarray) -> int:
        """One raw sample decoded into `out`; returns its label."""
        try:
            if self.split == "train":
                rng = sample_rng(self.plan.seed, epoch, sample["__index__"])
                decode_train(sample["jpg"], self.aug, rng, size, out=out)
            else:
                decode_val(sample["jpg"], self.aug, out=out)
            return int(sample["cls"])
        except (KeyError, OSError, ValueError) as err:
            url = str(sample.get("__url__"))
            raise decode_error(
                f"{url}: sample {sample.get('__key__')!r}", err, str(Path(url).parent)
            ) from err


class WdsLoader(Loader):
    backend = "wds"

    def __init__(
        self,
        cfg: Config,
        split: str,
        dist: DistInfo,
        directory: Path,
        batch_size: int,
        classes: ClassList,
    ) -> None:
        manifest, paths = open_manifest(directory, split)
        check_same_classes(directory, manifest.classes, classes.wnids)
        super().__init__(
            split=split,
            classes=classes,
            num_samples=manifest.num_samples,
            batch_size=batch_size,
            dist=dist,
            channels_last=cfg.train.channels_last,
        )
        self.directory = directory
        self.manifest = manifest
        workers = cfg.data.num_workers
        self.plan = ShardReadPlan.for_split(paths, manifest, cfg, split, dist, batch_size, workers)
        self.check_planned_batches(directory)
        if split == "train" and cfg.data.auto_augment != "none":
            build_auto_augment(cfg.data.auto_augment)  # a missing op fails here, not in a worker
        buffers = BatchBuffers(ring_slots(workers, cfg.data.prefetch_factor))
        self.stream = ShardStream(self.plan, cfg.data, cfg.data.shuffle_buffer, split, buffers)
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
