"""The `dali` backend: NVIDIA DALI over class folders (fn.readers.file) or shards
(fn.readers.webdataset).

    python -m pipeline.train --config configs/alexnet.yaml data.backend=dali \
        data.dali_decode=mixed data.train_dir=DST/train data.val_dir=DST/val

A directory with manifest.json is read as shards, any other as class folders. Decoding is
`mixed` (nvJPEG on the GPU) or `cpu` (a CPU-only pipeline, `device_id=None`: how CI runs it);
`auto` picks mixed when the training device is a GPU. Threads: data.num_workers.

DALI's own examples shard by local rank and shuffle inside the reader; here the reading plan is
ours, so `dali` visits exactly the samples the other backends visit on each rank:
  * folders: the file list of pipeline/data/plans.py's IndexPlan (the `folder` backend's),
    passed to fn.readers.file as files + labels, unshuffled;
  * shards: the rank's block of the epoch sequence of pipeline/data/plans.py's ShardReadPlan, each
    tar slice shuffled per epoch, written as per-rank DALI index files (the .idx next to each
    tar, cut to the chosen samples in the chosen order) that fn.readers.webdataset follows.
    Nothing outside the rank's block is read.
The pipeline is rebuilt per epoch with a seed from (seed, epoch, rank, start_batch). A resumed
epoch reads the same remaining samples in the same order; its random crops and flips are
drawn afresh (DALI's random operators cannot be fast-forwarded without decoding).

The augmentation is the contract of pipeline/data/transforms.py with DALI operators:
image_random_crop (area scale, log-uniform ratio, 10 attempts) → resize → coin-flip mirror;
val: resize_shorter → center crop. Outputs are uint8 HWC batches, normalized on the device.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data.base import ClassList, Loader, check_same_classes
from pipeline.data.files import PathTable, list_class_folders
from pipeline.data.plans import IndexPlan, ShardReadPlan, open_manifest
from pipeline.data.transforms import Augmentation
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError
from preprocess.manifest import MANIFEST_NAME, dali_index_name

logger = logging.getLogger(__name__)


def import_dali():
    """The DALI modules, or a LoaderError saying how to get them."""
    try:
        from nvidia import dali
        from nvidia.dali import fn, types
    except ImportError as err:
        raise LoaderError(
            f"data.backend=dali needs NVIDIA DALI, which is not importable here ({err}): install "
            f"nvidia-dali-cuda130 (uv sync installs it on Linux) or use data.backend=folder or wds"
        ) from err
    return dali, fn, types


def resolve_decode(requested: str, dist: DistInfo) -> str:
    """'mixed' or 'cpu' from data.dali_decode and the training device."""
    on_gpu = dist.device.startswith("cuda") and torch.cuda.is_available()
    if requested == "auto":
        return "mixed" if on_gpu else "cpu"
    if requested == "mixed" and not on_gpu:
        raise LoaderError(
            "data.dali_decode=mixed decodes on the GPU (nvJPEG) but the training device is "
            f"{dist.device} (CUDA available: {torch.cuda.is_available()}): use "
            "data.dali_decode=cpu or auto"
        )
    return requested


def pipeline_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def augment(jpegs, *, split: str, aug: Augmentation, decode: str, fn, types):
    """The augmentation contract in DALI operators; returns uint8 HWC images."""
    decoder_device = "mixed" if decode == "mixed" else "cpu"
    if split == "train":
        images = fn.decoders.image_random_crop(
            jpegs,
            device=decoder_device,
            output_type=types.RGB,
            random_area=list(aug.scale),
            random_aspect_ratio=list(aug.ratio),
            num_attempts=10,
        )
        images = fn.resize(
            images,
            resize_x=aug.train_crop,
            resize_y=aug.train_crop,
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
        mirror = fn.random.coin_flip(probability=aug.flip_prob)
        return fn.crop_mirror_normalize(
            images, dtype=types.UINT8, output_layout="HWC", mirror=mirror
        )
    # val, with torchvision's rounding (resize_shorter would round the long side, not truncate it,
    # and center crops round half away from zero): the same pixels as Resize + CenterCrop ±1
    import nvidia.dali.math as dali_math

    images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
    shape = fn.peek_image_shape(jpegs, dtype=types.FLOAT)  # [H, W, C] of the encoded image
    short_side = dali_math.min(shape[0], shape[1])
    resized_height = dali_math.floor(shape[0] * float(aug.val_resize) / short_side)
    resized_width = dali_math.floor(shape[1] * float(aug.val_resize) / short_side)
    images = fn.resize(
        images,
        resize_x=resized_width,
        resize_y=resized_height,
        interp_type=types.INTERP_LINEAR,
        antialias=True,
    )
    crop = float(aug.val_crop)

    def crop_position(size):
        """int(round((size - crop) / 2)) with Python's round half to even, as a 0..1 position."""
        half = (size - crop) * 0.5
        low = dali_math.floor(half)
        low_is_odd = low - 2.0 * dali_math.floor(low * 0.5)
        anchor = low + 2.0 * (half - low) * low_is_odd  # a .5 tie moves up only from an odd number
        return anchor / dali_math.max(size - crop, 1.0)

    images = fn.crop(
        images,
        crop_h=aug.val_crop,
        crop_w=aug.val_crop,
        crop_pos_y=crop_position(resized_height),
        crop_pos_x=crop_position(resized_width),
    )
    return images


def images_to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A dense DALI batch → a torch uint8 tensor (copied: DALI reuses its buffers)."""
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


class DaliLoader(Loader):
    """Shared driving: one pipeline per epoch, `len(self)` runs, the partial last val batch
    trimmed."""

    backend = "dali"

    def __init__(self, cfg: Config, split: str, dist: DistInfo, decode: str, **kwargs) -> None:
        super().__init__(split=split, dist=dist, channels_last=cfg.train.channels_last, **kwargs)
        self.dali, self.fn, self.types = import_dali()
        self.decode = decode
        self.aug = Augmentation.from_config(cfg.data)
        self.num_threads = max(1, cfg.data.num_workers)
        self.seed = cfg.train.seed
        self.device_id = (torch.device(dist.device).index or 0) if decode == "mixed" else None
        self.workdir = Path(tempfile.mkdtemp(prefix="dali-plan-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.workdir), True)

    def _reader(self, epoch: int, start_batch: int):
        """The reader of this rank's remaining samples of `epoch`: (encoded images, labels) graph
        nodes."""
        raise NotImplementedError

    def _labels(self, tensor_list) -> torch.Tensor:
        raise NotImplementedError

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start_batch, batches = self.epoch, self.start_batch, len(self)
        if batches == 0:
            return
        dali, fn = self.dali, self.fn
        remaining = self._remaining_samples(epoch, start_batch)

        @dali.pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            seed=pipeline_seed(self.seed, epoch, self.dist.rank, start_batch),
            exec_dynamic=True,
        )
        def build():
            jpegs, labels = self._reader(epoch, start_batch)
            images = augment(
                jpegs, split=self.split, aug=self.aug, decode=self.decode, fn=fn, types=self.types
            )
            return images, labels

        pipe = build()
        pipe.build()
        try:
            for batch in range(batches):
                images, labels = pipe.run()
                take = min(self.batch_size, remaining - batch * self.batch_size)
                images = images_to_torch(images, self.device)[:take]
                # now: uint8 [take, H, W, 3], on the GPU for mixed decoding
                yield images, self._labels(labels)[:take]
        finally:
            del pipe

    def _remaining_samples(self, epoch: int, start_batch: int) -> int:
        raise NotImplementedError


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


def read_index_lines(tar: Path, expected: int) -> tuple[str, list[str]]:
    """(version, per-sample lines) of the DALI index next to `tar`, checked against the manifest
    count.

    The version matters: v1.2 lines list (ext, offset, size, file name) per member, older ones
    (ext, offset, size), so the per-rank indexes cut from these lines keep this header."""
    index = tar.with_name(dali_index_name(tar.name))
    if not index.is_file():
        raise LoaderError(
            f"{index}: DALI index missing next to {tar.name}: re-run `python -m preprocess shard` "
            "to rewrite it"
        )
    lines = index.read_text().splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[0].startswith("v1") or header[1] != str(len(lines) - 1):
        raise LoaderError(
            f"{index}: not a DALI v1.x index (header {lines[:1]}): re-run "
            "`python -m preprocess shard`"
        )
    if len(lines) - 1 != expected:
        raise LoaderError(
            f"{index}: indexes {len(lines) - 1} samples but the manifest says {expected}: the "
            "index does not match the tar; re-run `python -m preprocess shard`"
        )
    return header[0], lines[1:]


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
        indexes = {
            str(path): read_index_lines(path, shard.count)
            for path, shard in zip(paths, manifest.shards)
        }
        self.index_versions = {tar: version for tar, (version, _) in indexes.items()}
        self.index_lines = {tar: lines for tar, (_, lines) in indexes.items()}
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
                samples = np.random.default_rng(
                    [self.seed, epoch, self.dist.rank, number]
                ).permutation(samples)
            order.extend((segment.path, int(sample)) for sample in samples)
        return order

    def _reader(self, epoch: int, start_batch: int):
        order = self.epoch_order(epoch)[start_batch * self.batch_size :]
        for stale in self.workdir.glob("*.idx"):  # the previous epoch's plan (~80 bytes per sample)
            stale.unlink()
        tars, indexes = [], []
        run_start = 0
        for position in range(1, len(order) + 1):
            if position == len(order) or order[position][0] != order[run_start][0]:
                tar = order[run_start][0]
                lines = [self.index_lines[tar][sample] for _, sample in order[run_start:position]]
                index = self.workdir / f"e{epoch}-b{start_batch}-{len(tars):06d}.idx"
                index.write_text(
                    f"{self.index_versions[tar]} {len(lines)}\n" + "\n".join(lines) + "\n"
                )
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


def build_dali_loader(
    cfg: Config, split: str, dist: DistInfo, directory: Path, batch_size: int, classes: ClassList
) -> DaliLoader:
    """Shards when `directory` holds manifest.json, else class folders."""
    import_dali()
    decode = resolve_decode(cfg.data.dali_decode, dist)
    if (directory / MANIFEST_NAME).is_file():
        return DaliShardLoader(cfg, split, dist, directory, batch_size, classes, decode)
    return DaliFolderLoader(cfg, split, dist, directory, batch_size, classes, decode)
