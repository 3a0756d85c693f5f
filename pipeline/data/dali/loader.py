"""`DaliLoader`: what the folder and shard loaders share, one DALI pipeline per epoch, its seed,
the host's draws fed in, `len(self)` runs, batches copied out to torch."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from core.seeds import Purpose, stream_seed
from pipeline.config import Config
from pipeline.data.base import Loader, sample_record
from pipeline.data.dali.autoaugment import DaliAutoAugment
from pipeline.data.dali.draws import TrainDraws
from pipeline.data.dali.graph import PREFETCH_QUEUE_DEPTH, augment_train, augment_val
from pipeline.data.dali.probe import import_dali
from pipeline.data.transforms import Augmentation, train_resolution
from pipeline.distributed import DistInfo


def pipeline_seed(seed: int, epoch: int, rank: int, start_batch: int) -> int:
    """The DALI pipeline's own seed (`Purpose.DALI_PIPELINE`, index: the first batch it reads),
    kept to 31 bits so that any DALI version's C++ seed type holds it."""
    return stream_seed(seed, Purpose.DALI_PIPELINE, epoch, start_batch, rank) & 0x7FFFFFFF


def images_to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A dense DALI batch → a torch uint8 tensor (copied: DALI reuses its buffers)."""
    # deferred, as every DALI import here: DALI is optional (probe.import_dali says how to get it)
    from nvidia.dali.backend import TensorListGPU

    if isinstance(tensor_list, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()  # [N, H, W, 3] on the pipeline's GPU
        out = torch.empty(dense.shape(), dtype=torch.uint8, device=device)
        feed_ndarray(
            dense, out, cuda_stream=torch.cuda.current_stream(device)
        )  # ordered before later kernels
        return out
    return torch.from_numpy(np.array(tensor_list.as_tensor()))


def pipeline_outputs(pipe, count: int, depth: int) -> Iterator[tuple]:
    """`pipe`'s next `count` outputs, run exactly `count` times: `pipe.run()` schedules one run
    ahead of each output after its first `depth`, so it would decode `depth - 1` batches past
    the last, thrown away (one batch per epoch at depth 2, 3 % of a 32-batch epoch)."""
    pipe.schedule_run()  # the first schedule runs `depth` iterations (the prefetch)
    for index in range(count):
        if 0 < index <= count - depth:
            pipe.schedule_run()
        yield pipe.outputs()


class DaliLoader(Loader):
    """Shared driving: one pipeline per epoch, `len(self)` runs, the partial last val batch
    trimmed."""

    backend = "dali"
    # images_to_torch copies every batch out of DALI's buffers into a tensor of its own, which
    # nothing writes again: base.Loader need not copy it a second time
    lends = True

    def __init__(self, cfg: Config, split: str, dist: DistInfo, decode: str, **kwargs) -> None:
        super().__init__(
            split=split,
            dist=dist,
            channels_last=cfg.train.channels_last,
            record=sample_record(cfg, split, dist),
            **kwargs,
        )
        self.dali, self.fn, self.types = import_dali()
        self.decode = decode
        self.data = cfg.data  # for train_resolution(data, epoch)
        self.aug = Augmentation.from_config(cfg.data)
        self.auto_aug = (
            DaliAutoAugment(cfg.data.auto_augment)
            if split == "train" and cfg.data.auto_augment != "none"
            else None
        )
        self.num_threads = max(1, cfg.data.num_workers)
        self.seed = cfg.train.seed
        self.device_id = (torch.device(dist.device).index or 0) if decode == "mixed" else None
        self.workdir = Path(tempfile.mkdtemp(prefix="dali-plan-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.workdir), True)

    def _reader(self, keys: np.ndarray):
        """The reader of these sample keys, in this order: (encoded images, labels) graph
        nodes."""
        raise NotImplementedError

    def _sample_keys(self, epoch: int, start_batch: int) -> np.ndarray:
        """The (seed, epoch, sample) key of each remaining sample of the rank's plan, in reading
        order."""
        raise NotImplementedError

    def _batches(self, epoch: int, start_batch: int) -> list[np.ndarray]:
        """The keys of each batch still to read: the rank's plan from `start_batch`, or the rest
        of an interrupted epoch (`epoch_remainder()`)."""
        remainder = self.epoch_remainder()
        if remainder is not None:
            first = start_batch - remainder.first_batch
            return [remainder.batch_keys(batch) for batch in range(first, remainder.num_batches)]
        keys = self._sample_keys(epoch, start_batch)
        size = self.batch_size
        return [keys[start : start + size] for start in range(0, len(keys), size)][: len(self)]

    def _labels(self, tensor_list) -> torch.Tensor:
        raise NotImplementedError

    def _draw_source(self, epoch: int, keys: np.ndarray, width: int):
        """external_source callable: iteration i → the draws of the i-th batch of `keys` (padded
        batches of `width`)."""
        draws = TrainDraws(self.aug, self.seed, epoch, self.auto_aug)
        batches = max(1, len(keys) // width)

        def source(iteration: int) -> list[np.ndarray]:
            # the executor may prefetch past the last batch; those runs are never read
            batch = iteration % batches
            return draws.columns(keys[batch * width : (batch + 1) * width])

        return draws.names, source

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start_batch = self.epoch, self.start_batch
        batches = self._batches(epoch, start_batch)
        if not batches:
            return
        dali, fn, types = self.dali, self.fn, self.types
        train = self.split == "train"
        # every batch padded to the widest with its last sample (DALI's pad_last_batch), trimmed
        # after: a remainder's last step may be short, a val rank's last batch is
        width = max(len(batch) for batch in batches)
        keys = np.concatenate([np.pad(batch, (0, width - len(batch)), "edge") for batch in batches])
        depth = min(PREFETCH_QUEUE_DEPTH, len(batches))

        @dali.pipeline_def(
            batch_size=width,
            num_threads=self.num_threads,
            device_id=self.device_id,
            # no random operator is left in the graph (TrainDraws feeds every choice): the seed
            # only keeps whatever DALI draws internally reproducible
            seed=pipeline_seed(self.seed, epoch, self.dist.rank, start_batch),
            exec_dynamic=True,
            prefetch_queue_depth=depth,
            # auto_aug's `select` splits the batch with DALI conditionals
            enable_conditionals=self.auto_aug is not None,
        )
        def build():
            jpegs, labels = self._reader(keys)
            if not train:
                return augment_val(
                    jpegs, aug=self.aug, decode=self.decode, fn=fn, types=types
                ), labels
            names, source = self._draw_source(epoch, keys, width)
            nodes = dict(zip(names, fn.external_source(source=source, num_outputs=len(names))))
            images = augment_train(
                jpegs,
                nodes,
                aug=self.aug,
                size=train_resolution(self.data, epoch),
                decode=self.decode,
                auto_aug=self.auto_aug,
                fn=fn,
                types=types,
            )
            return images, labels

        pipe = build()
        pipe.build()
        try:
            for batch, (images, labels) in zip(
                batches, pipeline_outputs(pipe, len(batches), depth)
            ):
                take = len(batch)
                images = images_to_torch(images, self.device)[:take]
                # now: uint8 [take, H, W, 3], on the GPU for mixed decoding
                yield images, self._labels(labels)[:take], torch.as_tensor(batch)
        finally:
            del pipe
