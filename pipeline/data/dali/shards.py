"""`DaliShardLoader`: shards through fn.readers.webdataset, following per-rank DALI indexes cut
from each tar's index to this rank's `ShardReadPlan` block, each tar slice shuffled per epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from core.shard_format import DaliIndex, ManifestError, format_dali_index
from pipeline.config import Config
from pipeline.data.base import ClassList, check_same_classes
from pipeline.data.dali.loader import DaliLoader
from pipeline.data.plans import ShardReadPlan, open_manifest
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError

logger = logging.getLogger(__name__)


class DaliShardLoader(DaliLoader):
    def __init__(
        self,
        cfg: Config,
        split: str,
        dist: DistInfo,
        location: Path | str,
        batch_size: int,
        classes: ClassList,
        decode: str,
    ) -> None:
        self.source = open_manifest(location, split, cfg.data)
        manifest = self.source.manifest
        directory = self.source.location  # a URL without credentials, for messages
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
        self.indexes: dict[str, DaliIndex] = {}
        if not self.source.is_remote:  # a local index that disagrees fails here, not mid-run
            for shard in manifest.shards:
                self.index(shard.name)
        self.pinned: list[str] = []  # remote: this epoch's shards, in the node cache
        self.plan = ShardReadPlan.for_split(manifest, cfg, split, dist, batch_size, num_workers=1)
        self.check_planned_batches(directory)
        logger.info(
            "dali (%s) shards %s: %d samples in %d tars from %s",
            decode,
            split,
            manifest.num_samples,
            len(manifest.shards),
            directory,
        )

    def index(self, name: str) -> DaliIndex:
        """A tar's DALI index (core.shard_format's one reader, checked against the manifest's
        count; fetched from the store once for a URL); a LoaderError naming it when wrong."""
        if name not in self.indexes:
            try:
                self.indexes[name] = self.source.index(name)
            except ManifestError as err:
                raise LoaderError(str(err)) from None
        return self.indexes[name]

    def local_tars(self, names: list[str]) -> list[str]:
        """Files DALI can open for these shards: a local directory's own, or (a URL) the node
        cache's, fetched now and pinned until the next epoch's are."""
        for name in self.pinned:
            self.source.release(name)
        self.pinned = list(dict.fromkeys(names)) if self.source.is_remote else []
        return [str(self.source.local_path(name)) for name in names]

    def _planned_batches(self, epoch: int) -> int:
        return self.plan.num_batches()

    def epoch_order(self, epoch: int) -> list[tuple[str, int]]:
        """(tar, sample number in the tar) for this rank's epoch, in reading order."""
        return self.plan.permuted_rank_order(epoch)

    def _sample_keys(self, epoch: int, start_batch: int) -> np.ndarray:
        starts = dict(zip(self.plan.paths, self.plan.shard_starts()))
        order = self.epoch_order(epoch)[start_batch * self.batch_size :]
        return np.array([starts[tar] + sample for tar, sample in order], dtype=np.int64)

    def _reader(self, keys: np.ndarray):
        starts = np.asarray(self.plan.shard_starts(), dtype=np.int64)
        shards = np.searchsorted(starts, keys, side="right") - 1
        order = [(self.plan.paths[s], int(k - starts[s])) for s, k in zip(shards, keys)]
        epoch, start_batch = self.epoch, self.start_batch
        for stale in self.workdir.glob("*.idx"):  # the previous epoch's plan (~80 bytes per sample)
            stale.unlink()
        tars, indexes = [], []
        run_start = 0
        for position in range(1, len(order) + 1):
            if position == len(order) or order[position][0] != order[run_start][0]:
                tar = order[run_start][0]
                source = self.index(tar)
                samples = [source.samples[sample] for _, sample in order[run_start:position]]
                index = self.workdir / f"e{epoch}-b{start_batch}-{len(tars):06d}.idx"
                index.write_text(format_dali_index(samples, source.version))
                tars.append(tar)
                indexes.append(str(index))
                run_start = position
        jpegs, labels = self.fn.readers.webdataset(
            paths=self.local_tars(tars),
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
