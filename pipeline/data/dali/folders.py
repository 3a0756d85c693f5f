"""`DaliFolderLoader`: class folders through fn.readers.file, the file list of this rank's
`IndexPlan` (the `folder` backend's), unshuffled."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data.base import ClassList
from pipeline.data.dali.loader import DaliLoader
from pipeline.data.files import PathTable, list_class_folders
from pipeline.data.plans import IndexPlan
from pipeline.distributed import DistInfo

logger = logging.getLogger(__name__)


class DaliFolderLoader(DaliLoader):
    def __init__(
        self,
        cfg: Config,
        split: str,
        dist: DistInfo,
        directory: Path,
        batch_size: int,
        classes: ClassList,
        decode: str,
    ) -> None:
        _, paths, labels = list_class_folders(directory, list(classes.wnids))
        super().__init__(
            cfg,
            split,
            dist,
            decode,
            classes=classes,
            num_samples=len(paths),
            batch_size=batch_size,
        )
        self.paths = PathTable(paths)
        self.labels = labels
        self.plan = IndexPlan(
            len(paths), batch_size, dist.rank, dist.world_size, split == "train", cfg.train.seed
        )
        self.check_planned_batches(directory)
        logger.info("dali (%s) folder %s: %d images from %s", decode, split, len(paths), directory)

    def _planned_batches(self, epoch: int) -> int:
        return self.plan.num_batches(epoch)

    def _remaining_samples(self, epoch: int, start_batch: int) -> int:
        return len(self.plan.rank_indices(epoch)) - start_batch * self.batch_size

    def _sample_keys(self, epoch: int, start_batch: int) -> np.ndarray:
        return self.plan.rank_indices(epoch)[start_batch * self.batch_size :]  # file indices

    def _reader(self, epoch: int, start_batch: int):
        indices = self.plan.rank_indices(epoch)[start_batch * self.batch_size :]
        jpegs, labels = self.fn.readers.file(
            files=[self.paths[index] for index in indices],
            labels=[int(self.labels[index]) for index in indices],
            random_shuffle=False,
            pad_last_batch=True,
            name="Reader",
        )
        return jpegs, labels

    def _labels(self, tensor_list) -> torch.Tensor:
        return torch.from_numpy(np.array(tensor_list.as_tensor()).reshape(-1).astype(np.int64))
