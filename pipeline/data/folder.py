"""The `folder` backend: class folders (DIR/nXXXXXXXX/*.JPEG) + a DataLoader of uint8 batches.

    python -m pipeline.train --config configs/alexnet.yaml data.backend=folder \
        data.train_dir=DST/folders/train data.val_dir=DST/folders/val

What makes it faster than torchvision's ImageFolder + Compose (docs/BENCHMARKS.md):
  * the crop box is drawn before decoding, and only its window is decoded (pipeline/data/jpeg.py),
    at 1/2, 1/4 or 1/8 scale when the crop will be downscaled anyway (transforms.decode_train);
  * samples stay uint8 (no ToTensor/Normalize on the CPU; normalization runs on the device);
  * each worker decodes a whole batch straight into a reused uint8 buffer (batch-level
    __getitem__, no per-sample array or collate). Workers are threads of the training process
    (up to 6 under `auto`; pipeline/data/threads.py: the batch is lent to the loop, no copy), or
    DataLoader processes (`data.worker_kind=processes`: a ring per worker in shared memory,
    persistent across epochs, pinned in the main process); pipeline/data/batches.py.
Which rank reads which files is pipeline/data/plans.py's IndexPlan. Each item the sampler hands
a worker carries its epoch, so the epoch's train size (`transforms.train_resolution`) and every
per-sample draw (`sample_rng(seed, epoch, file index)`) are fixed by the item alone: a resumed
epoch, whatever its batch or size, decodes the same pixels with any number of workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.config import Config, DataConfig
from pipeline.data.base import ClassList, Loader, decode_error, sample_record
from pipeline.data.batches import BatchBuffers
from pipeline.data.files import PathTable, list_class_folders
from pipeline.data.plans import IndexPlan
from pipeline.data.threads import Workers
from pipeline.data.transforms import (
    Augmentation,
    build_auto_augment,
    decode_train,
    decode_train_batch,
    decode_val,
    sample_rng,
    train_resolution,
)
from pipeline.distributed import DistInfo

logger = logging.getLogger(__name__)


class FolderBatches(Dataset):
    """Item = (epoch, sample indices) → one decoded, augmented uint8 batch at the epoch's size,
    its labels and the indices (the sample keys)."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        split: str,
        data: DataConfig,
        seed: int,
        buffers: BatchBuffers | None = None,
    ) -> None:
        self.paths = paths if isinstance(paths, PathTable) else PathTable(paths)
        self.labels = labels
        self.split = split
        self.data = data  # for train_resolution(data, epoch)
        self.aug = Augmentation.from_config(data)
        self.seed = seed
        # each worker process reuses its own ring of batch buffers (pipeline/data/batches.py)
        self.buffers = buffers if buffers is not None else BatchBuffers(slots=2)

    def __len__(self) -> int:
        return len(self.paths)

    def size(self, epoch: int) -> int:
        """The side of this split's images in `epoch`, pixels."""
        return train_resolution(self.data, epoch) if self.split == "train" else self.aug.val_crop

    def load(self, index: int, epoch: int, out: np.ndarray | None = None) -> np.ndarray:
        """Sample `index` of `epoch`, decoded into `out` (uint8 [size, size, 3]; None
        allocates)."""
        path = self.paths[index]
        try:
            if self.split == "train":
                rng = sample_rng(self.seed, epoch, index)
                return decode_train(path, self.aug, rng, self.size(epoch), out=out)
            return decode_val(path, self.aug, out=out)
        except (OSError, ValueError) as err:
            raise decode_error(path, err, os.path.dirname(os.path.dirname(path))) from err

    def __getitem__(self, item: tuple[int, np.ndarray]) -> tuple[torch.Tensor, ...]:
        epoch, indices = item
        images, labels = self.buffers.next(len(indices), self.size(epoch))
        pixels = images.numpy()  # [B, size, size, 3] uint8, decoded into slot by slot
        keys = np.asarray(indices, dtype=np.int64)
        left = range(len(keys))
        if self.split == "train":  # read, drawn and decoded in one C call; the rest one by one
            paths = [self.paths[index] for index in keys.tolist()]
            left = decode_train_batch(
                paths, self.aug, self.seed, epoch, keys, self.size(epoch), pixels
            )
        for position in left:
            self.load(int(keys[position]), epoch, out=pixels[position])
        labels.numpy()[:] = self.labels[keys]  # one copy, no per-sample tensor write
        return images, labels, torch.from_numpy(keys)


class EpochState:
    """The epoch and resume batch the sampler reads at the start of each pass (set by set_epoch),
    and the rest of an interrupted epoch when one is planned (set_remainder)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.start_batch = 0
        self.remainder = None  # EpochRemainder | None


class _EpochSampler(Sampler):
    """Yields (epoch, indices) per batch for the current epoch and start batch.

    It holds the plan and a small state object, not the loader: a loader ↔ sampler cycle would
    keep a dropped loader (and its persistent workers) alive until the garbage collector runs,
    possibly inside a forked worker of a later loader."""

    def __init__(self, plan: IndexPlan, state: EpochState) -> None:
        self.plan = plan
        self.state = state

    def __iter__(self):
        epoch, remainder = self.state.epoch, self.state.remainder
        if remainder is not None and remainder.epoch == epoch:
            for batch in range(
                self.state.start_batch - remainder.first_batch, len(remainder.sizes)
            ):
                yield epoch, remainder.batch_keys(batch)
            return
        for indices in self.plan.batches(epoch, self.state.start_batch):
            yield epoch, indices


class FolderLoader(Loader):
    backend = "folder"

    def __init__(
        self,
        cfg: Config,
        split: str,
        dist: DistInfo,
        directory: Path,
        batch_size: int,
        classes: ClassList,
    ) -> None:
        _, paths, labels = list_class_folders(directory, list(classes.wnids))
        super().__init__(
            split=split,
            classes=classes,
            num_samples=len(paths),
            batch_size=batch_size,
            dist=dist,
            channels_last=cfg.train.channels_last,
            record=sample_record(cfg, split, dist),
        )
        self.directory = directory
        self.plan = IndexPlan(
            len(paths), batch_size, dist.rank, dist.world_size, split == "train", cfg.train.seed
        )
        self.check_planned_batches(directory)
        self.epoch_state = EpochState()
        if split == "train" and cfg.data.auto_augment != "none":
            build_auto_augment(cfg.data.auto_augment)  # a missing op fails here, not in a worker
        self.workers = Workers.from_config(cfg.data, self.device)
        self.lends = self.workers.threads  # a thread's slot is lent, never overwritten while held
        self.dataset = FolderBatches(
            paths, labels, split, cfg.data, cfg.train.seed, self.workers.buffers
        )
        self.sampler = _EpochSampler(self.plan, self.epoch_state)
        self.dataloader = self.workers.dataloader(self.dataset, self.sampler)
        logger.info(
            "folder %s: %d images, %d classes from %s", split, len(paths), len(classes), directory
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        self.epoch_state.epoch, self.epoch_state.start_batch = epoch, start_batch

    def set_remainder(self, remainder) -> None:
        super().set_remainder(remainder)
        self.epoch_state.remainder = remainder

    def _planned_batches(self, epoch: int) -> int:
        return self.plan.num_batches(epoch)

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.workers.threads:
            return iter(self.dataloader)
        items = list(self.sampler)  # this pass's (epoch, indices), batch j to worker j % N
        workers = max(1, self.workers.count)
        streams = [
            lambda first=first: (self.dataset[item] for item in items[first::workers])
            for first in range(workers)
        ]
        return self.workers.run(streams, name=f"folder-{self.split}")
