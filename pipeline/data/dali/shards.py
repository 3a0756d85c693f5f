"""`DaliShardLoader`: shards through fn.readers.webdataset, following per-rank DALI indexes cut
from each tar's index to this rank's `ShardReadPlan` block, each tar slice shuffled per epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from core.seeds import Purpose, stream_seed
from core.shard_format import DaliIndex, Manifest, ManifestError, format_dali_index, read_dali_index
from pipeline.config import Config
from pipeline.data.base import ClassList, check_same_classes
from pipeline.data.dali.loader import DaliLoader
from pipeline.data.plans import ShardReadPlan, open_manifest
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError

logger = logging.getLogger(__name__)


def read_indexes(paths: list[Path], manifest: Manifest) -> dict[str, DaliIndex]:
    """Each tar's DALI index (core.shard_format's one reader), checked against the manifest's
    counts; a LoaderError naming the index when one is missing or wrong."""
    try:
        return {
            str(path): read_dali_index(path, shard.count)
            for path, shard in zip(paths, manifest.shards)
        }
    except ManifestError as err:
        raise LoaderError(str(err)) from None


class DaliShardLoader(DaliLoader):
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
        manifest, paths = open_manifest(directory, split)
        check_same_classes(directory, manifest.classes, classes.wnids)
        super().__init__(
            cfg,
            split,
            dist,
            decode,
            classes=classes,
            num_samples=manifest.num_samples,
            batch_size=batch_size,
        )
        self.indexes = read_indexes(paths, manifest)
        self.plan = ShardReadPlan.for_split(
            paths, manifest, cfg, split, dist, batch_size, num_workers=1
        )
        self.check_planned_batches(directory)
        logger.info(
            "dali (%s) shards %s: %d samples in %d tars from %s",
            decode,
            split,
            manifest.num_samples,
            len(paths),
            directory,
        )

    def _planned_batches(self, epoch: int) -> int:
        return self.plan.num_batches()

    def _remaining_samples(self, epoch: int, start_batch: int) -> int:
        return self.plan.rank_samples()[1] - start_batch * self.batch_size

    def epoch_order(self, epoch: int) -> list[tuple[str, int]]:
        """(tar, sample number in the tar) for this rank's epoch, in reading order."""
        start, count = self.plan.rank_samples()
        order = []
        for number, segment in enumerate(self.plan.segments(epoch, start, count)):
            samples = np.arange(segment.skip, segment.skip + segment.take)
            if self.plan.train:
                seed = stream_seed(
                    self.seed, Purpose.DALI_FILE_ORDER, epoch, rank=self.dist.rank, sub=number
                )
                samples = np.random.default_rng(seed).permutation(samples)
            order.extend((segment.path, int(sample)) for sample in samples)
        return order

    def _sample_keys(self, epoch: int, start_batch: int) -> np.ndarray:
        starts = dict(zip(self.plan.paths, self.plan.shard_starts()))
        order = self.epoch_order(epoch)[start_batch * self.batch_size :]
        return np.array([starts[tar] + sample for tar, sample in order], dtype=np.int64)

    def _reader(self, epoch: int, start_batch: int):
        order = self.epoch_order(epoch)[start_batch * self.batch_size :]
        for stale in self.workdir.glob("*.idx"):  # the previous epoch's plan (~80 bytes per sample)
            stale.unlink()
        tars, indexes = [], []
        run_start = 0
        for position in range(1, len(order) + 1):
            if position == len(order) or order[position][0] != order[run_start][0]:
                tar = order[run_start][0]
                source = self.indexes[tar]
                samples = [source.samples[sample] for _, sample in order[run_start:position]]
                index = self.workdir / f"e{epoch}-b{start_batch}-{len(tars):06d}.idx"
                index.write_text(format_dali_index(samples, source.version))
                tars.append(tar)
                indexes.append(str(index))
                run_start = position
        jpegs, labels = self.fn.readers.webdataset(
            paths=tars,
            index_paths=indexes,
            ext=["jpg", "cls"],
            missing_component_behavior="error",
            random_shuffle=False,
            pad_last_batch=True,
            name="Reader",
        )
        return jpegs, labels

    def _labels(self, tensor_list) -> torch.Tensor:
        # fn.readers.webdataset hands .cls over as its raw bytes: b"417" → 417
        return torch.tensor(
            [int(bytes(np.array(sample))) for sample in tensor_list], dtype=torch.int64
        )
