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
The pipeline is rebuilt per epoch, at the epoch's train size (`transforms.train_resolution`).

Every random choice of a train sample is drawn on the host from (seed, epoch, sample), the
sample's `Purpose.TRAIN_SAMPLE` stream of the one seed rule (core.seeds), and handed
to the pipeline through fn.external_source (`TrainDraws`), never by DALI's own random operators:
those keep one generator per batch slot, so a resumed epoch could not reproduce them without
decoding every skipped batch. The sample is the file index (folders) or the index in the split
(shards), as in the other backends, so a resume at any batch, across a change of size, decodes
the very same pixels, with any number of threads.

The augmentation is the contract of pipeline/data/transforms.py with DALI operators:
  * train: torchvision's RandomResizedCrop in graph arithmetic (`random_resized_crop`: ten
    tries at the drawn area fractions and log-uniform aspect ratios, the first that fits, else
    the ratio-clamped center crop) → decoders.image_crop (only the window is decoded) → resize
    → mirror; then data.auto_augment with DALI's own nvidia.dali.auto_aug suites
    (TrivialAugmentWide; AutoAugment's ImageNet policy, torchvision's table on auto_aug's
    ops), their op and magnitude choices drawn on the host too and applied with auto_aug's
    `select` (a conditional split of the batch, so the pipeline enables conditionals);
  * val: resize_shorter → center crop.
Outputs are uint8 HWC batches, normalized on the device.
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

from core.seeds import Purpose, stream_seed, stream_seeds, uniforms
from pipeline.config import Config
from pipeline.data.base import ClassList, Loader, check_same_classes
from pipeline.data.files import PathTable, list_class_folders
from pipeline.data.plans import IndexPlan, ShardReadPlan, open_manifest
from pipeline.data.transforms import Augmentation, train_resolution
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


CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries
TRIVIAL_BINS = 31  # TrivialAugmentWide's magnitude bins (torchvision and DALI)


def pipeline_seed(seed: int, epoch: int, rank: int, start_batch: int) -> int:
    """The DALI pipeline's own seed (`Purpose.DALI_PIPELINE`, index: the first batch it reads),
    kept to 31 bits, as before, so that any DALI version's C++ seed type holds it."""
    return stream_seed(seed, Purpose.DALI_PIPELINE, epoch, start_batch, rank) & 0x7FFFFFFF


def sample_uniforms(seed: int, epoch: int, samples: np.ndarray, count: int) -> np.ndarray:
    """float64 [len(samples), count] in [0, 1): each sample's `Purpose.TRAIN_SAMPLE` stream, the
    very seed the DataLoader backends' `transforms.sample_rng` starts from, read as uniforms.

    Vectorized (`core.seeds.stream_seeds` + `uniforms`) because it runs on the thread that feeds
    the pipeline; a seeded random.Random per sample, as the DataLoader backends use, costs
    ~28 µs, spread over their workers (the project's 2-core VM, 2026-11).
    """
    return uniforms(stream_seeds(seed, Purpose.TRAIN_SAMPLE, epoch, samples), count)


class TrainDraws:
    """The host side of every random choice of a train batch: `columns(samples)` gives the
    external_source outputs, one per name in `names` (the graph reads them by those names).

    crop: area fractions [10] and aspect ratios [10] (the ten tries), window position [2];
    flip; auto_augment: trivial: op index, magnitude bin, sign; imagenet: per stage of the
    policy, the op index (identity when the stage does not run), magnitude bin and sign.
    """

    def __init__(self, aug: Augmentation, seed: int, epoch: int, auto_aug) -> None:
        self.aug, self.seed, self.epoch, self.auto_aug = aug, seed, epoch, auto_aug
        self.names = ["fraction", "aspect", "position", "flip"] + (
            auto_aug.column_names if auto_aug is not None else []
        )

    def columns(self, samples: np.ndarray) -> list[np.ndarray]:
        """One dense array per external_source output, first dimension the batch."""
        aug = self.aug
        extra = self.auto_aug.num_uniforms if self.auto_aug is not None else 0
        draws = sample_uniforms(self.seed, self.epoch, samples, 2 * CROP_ATTEMPTS + 3 + extra)
        tries = slice(0, CROP_ATTEMPTS), slice(CROP_ATTEMPTS, 2 * CROP_ATTEMPTS)
        low, high = aug.scale
        fraction = low + (high - low) * draws[:, tries[0]]
        log_low, log_high = np.log(aug.ratio[0]), np.log(aug.ratio[1])
        aspect = np.exp(log_low + (log_high - log_low) * draws[:, tries[1]])
        rest = 2 * CROP_ATTEMPTS
        position = draws[:, rest : rest + 2]  # [N, 2]: x, y of the window, 0..1
        flip = (draws[:, rest + 2] < aug.flip_prob).astype(np.int32)
        columns = [
            fraction.astype(np.float32),
            aspect.astype(np.float32),
            position.astype(np.float32),
            flip,
        ]
        if self.auto_aug is not None:
            columns.extend(self.auto_aug.columns(draws[:, rest + 3 :]))
        return columns


# AutoAugment's ImageNet policy (Cubuk et al., 2019) as torchvision's AutoAugmentPolicy.IMAGENET
# lists it, the op the folder and wds backends run: per sub-policy, (op, probability, magnitude
# bin of 10). DALI's own get_image_net_policy is another policy (policy_v0 of TensorFlow's TPU
# reference), so it is not used: the backends would not agree (tests/data/test_auto_augment.py).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
IMAGENET_BINS = 10


def imagenet_policy_ops(augmentations) -> dict:
    """nvidia.dali.auto_aug's augmentations at torchvision's AutoAugment magnitudes (10 bins):
    shear 0–0.3, rotate 0–30°, enhance factors 1 ± 0–0.9 (all signed), posterize keeping
    8, 8, 7, 7, 6, 6, 5, 5, 4, 4 bits, solarize at 255 → 0."""
    a = augmentations
    posterize_bits = 8 - np.round(np.arange(IMAGENET_BINS) / ((IMAGENET_BINS - 1) / 4))
    return {
        "ShearX": a.shear_x.augmentation((0, 0.3), True),
        "Rotate": a.rotate.augmentation((0, 30), True),
        "Color": a.color.augmentation((0, 0.9), True, a.shift_enhance_range),
        "Contrast": a.contrast.augmentation((0, 0.9), True, a.shift_enhance_range),
        "Sharpness": a.sharpness.augmentation((0, 0.9), True, a.sharpness_kernel),
        "Posterize": a.posterize.augmentation(posterize_bits, False, a.poster_mask_uint8),
        "Solarize": a.solarize.augmentation((255, 0), False),
        "AutoContrast": a.auto_contrast,
        "Equalize": a.equalize,
        "Invert": a.invert,
    }


class DaliAutoAugment:
    """data.auto_augment with nvidia.dali.auto_aug, its random choices made on the host.

    TrivialAugment is DALI's `get_trivial_augment_wide_suite` (the 14 ops and 31 bins of
    torchvision's TrivialAugmentWide); AutoAugment is `IMAGENET_POLICY` on DALI's augmentations
    (`imagenet_policy_ops`). What replaces auto_aug's fn.random draws is the same choice made
    from `sample_uniforms`: TrivialAugment picks one op uniformly, a bin uniformly and a sign;
    AutoAugment picks one of the 25 sub-policies and runs each of its two stages with the
    stage's probability, with a random sign. Geometric ops fill with black and interpolate
    bilinearly, as the torchvision ops of the other backends do; TrivialAugment translates by
    up to 32 px, as torchvision's does. Op for op the outputs match torchvision's within a grey
    level or two, except equalize, which follows OpenCV's formula (~3 levels from PIL's) and
    shear, whose sign convention is the mirror of torchvision's (the sign is random anyway).
    """

    def __init__(self, name: str) -> None:
        try:
            from nvidia.dali.auto_aug import augmentations, trivial_augment
            from nvidia.dali.auto_aug.core import select, signed_bin
        except ImportError as err:
            raise LoaderError(
                f"data.auto_augment={name} on data.backend=dali needs nvidia.dali.auto_aug "
                f"(DALI >= 1.24), which is not importable here ({err}): upgrade nvidia-dali, "
                "use data.backend=folder or wds, or set data.auto_augment=none"
            ) from err
        self.name = name
        self.select, self.signed_bin = select, signed_bin
        if name == "trivial":
            self.stages = [
                trivial_augment.get_trivial_augment_wide_suite(
                    use_shape=False, max_translate_abs=32
                )
            ]
            self.num_bins = TRIVIAL_BINS
            self.num_uniforms = 3
        elif name == "imagenet":
            ops = imagenet_policy_ops(augmentations)
            sub_policies = [
                [(ops[op], probability, magnitude) for op, probability, magnitude in sub_policy]
                for sub_policy in IMAGENET_POLICY
            ]
            self.num_bins = IMAGENET_BINS
            self._build_policy_tables(sub_policies, augmentations.identity)
            self.num_uniforms = 1 + 2 * len(self.stages)
        else:
            raise LoaderError(f"data.auto_augment {name!r} is not one of trivial, imagenet")
        self.column_names = [
            f"{part}{stage}" for stage in range(len(self.stages)) for part in ("op", "bin", "sign")
        ]

    def _build_policy_tables(self, sub_policies, identity) -> None:
        """Per stage, the distinct ops any sub-policy runs there (+ identity), and per
        sub-policy and stage: that op's index, its probability and its magnitude bin."""
        num_stages = max(len(sub_policy) for sub_policy in sub_policies)
        self.stages = []
        for stage in range(num_stages):
            ops = []
            for sub_policy in sub_policies:
                if stage < len(sub_policy) and sub_policy[stage][0] not in ops:
                    ops.append(sub_policy[stage][0])
            self.stages.append([*ops, identity])
        shape = (len(sub_policies), num_stages)
        self.op_table = np.empty(shape, np.int32)
        self.probability = np.zeros(shape, np.float64)
        self.bin_table = np.zeros(shape, np.int32)
        for row, sub_policy in enumerate(sub_policies):
            for stage in range(num_stages):
                if stage < len(sub_policy):
                    op, probability, magnitude = sub_policy[stage]
                    self.op_table[row, stage] = self.stages[stage].index(op)
                    self.probability[row, stage] = probability
                    self.bin_table[row, stage] = magnitude or 0
                else:
                    self.op_table[row, stage] = len(self.stages[stage]) - 1  # identity

    def columns(self, uniforms: np.ndarray) -> list[np.ndarray]:
        """uniforms [N, num_uniforms] → (op, bin, sign) int32 [N] per stage."""
        if self.name == "trivial":
            # uniforms < 1, so the products stay below their counts (the minimum guards rounding)
            ops = len(self.stages[0])
            op = np.minimum((uniforms[:, 0] * ops).astype(np.int32), ops - 1)
            bins = self.num_bins
            magnitude = np.minimum((uniforms[:, 1] * bins).astype(np.int32), bins - 1)
            sign = (uniforms[:, 2] < 0.5).astype(np.int32)
            return [op, magnitude, sign]
        policies = len(self.op_table)
        rows = np.minimum((uniforms[:, 0] * policies).astype(np.int64), policies - 1)
        columns = []
        for stage, ops in enumerate(self.stages):
            runs = uniforms[:, 1 + stage] < self.probability[rows, stage]
            op = np.where(runs, self.op_table[rows, stage], len(ops) - 1).astype(np.int32)
            sign = (uniforms[:, 1 + len(self.stages) + stage] < 0.5).astype(np.int32)
            columns.extend([op, self.bin_table[rows, stage].astype(np.int32), sign])
        return columns

    def apply(self, images, nodes: dict, types):
        """uint8 HWC images → the same, through each stage's selected op."""
        for stage, ops in enumerate(self.stages):
            images = self.select(
                ops,
                nodes[f"op{stage}"],
                data=images,
                magnitude_bin=self.signed_bin(nodes[f"bin{stage}"], nodes[f"sign{stage}"]),
                num_magnitude_bins=self.num_bins,
                fill_value=0,
                interp_type=types.INTERP_LINEAR,
            )
        return images


def random_resized_crop(jpegs, nodes: dict, aug: Augmentation, decoder_device: str, fn, types):
    """torchvision's RandomResizedCrop window from the host's draws, computed in the graph
    from each image's encoded size (fn.peek_image_shape), then decoded (only the window)."""
    import nvidia.dali.math as dali_math

    shape = fn.peek_image_shape(jpegs, dtype=types.FLOAT)  # [H, W, C] of the encoded image
    height, width = shape[0], shape[1]
    area = height * width
    # the ten tries at once, [10] per sample, rounded half up (torchvision rounds half to even)
    try_width = dali_math.floor(dali_math.sqrt(area * nodes["fraction"] * nodes["aspect"]) + 0.5)
    try_height = dali_math.floor(dali_math.sqrt(area * nodes["fraction"] / nodes["aspect"]) + 0.5)
    fits = (try_width <= width) & (try_height <= height) & (try_width >= 1.0) & (try_height >= 1.0)
    # the first try that fits: priorities 10, 9, ..., 1 on the fitting tries, keep the largest
    rank = types.Constant(np.arange(CROP_ATTEMPTS, 0, -1, dtype=np.float32))
    priority = fn.cast(fits, dtype=types.FLOAT) * rank
    best = fn.reductions.max(priority)
    first = fn.cast(priority == best, dtype=types.FLOAT)  # one-hot when a try fits
    found = fn.cast(best > 0.0, dtype=types.FLOAT)
    # none fits: the whole image, its aspect ratio clamped to the range, centered
    low, high = float(min(aug.ratio)), float(max(aug.ratio))
    image_ratio = width / height
    too_narrow = fn.cast(image_ratio < low, dtype=types.FLOAT)
    too_wide = fn.cast(image_ratio > high, dtype=types.FLOAT)
    fallback_width = too_wide * dali_math.floor(height * high + 0.5) + (1.0 - too_wide) * width
    fallback_height = too_narrow * dali_math.floor(width / low + 0.5) + (1.0 - too_narrow) * height
    crop_width = found * fn.reductions.sum(first * try_width) + (1.0 - found) * fallback_width
    crop_height = found * fn.reductions.sum(first * try_height) + (1.0 - found) * fallback_height
    position = nodes["position"]
    return fn.decoders.image_crop(
        jpegs,
        device=decoder_device,
        output_type=types.RGB,
        crop_w=crop_width,
        crop_h=crop_height,
        crop_pos_x=found * position[0] + (1.0 - found) * 0.5,
        crop_pos_y=found * position[1] + (1.0 - found) * 0.5,
    )


def augment_train(
    jpegs, nodes: dict, *, aug: Augmentation, size: int, decode: str, auto_aug, fn, types
):
    """The train contract at `size` px, every random choice read from `nodes` (TrainDraws)."""
    decoder_device = "mixed" if decode == "mixed" else "cpu"
    images = random_resized_crop(jpegs, nodes, aug, decoder_device, fn, types)
    images = fn.resize(
        images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True
    )
    images = fn.crop_mirror_normalize(
        images, dtype=types.UINT8, output_layout="HWC", mirror=nodes["flip"]
    )
    if auto_aug is not None:
        images = auto_aug.apply(images, nodes, types)
    return images


def augment_val(jpegs, *, aug: Augmentation, decode: str, fn, types):
    """Resize + center crop with torchvision's rounding; returns uint8 HWC images."""
    decoder_device = "mixed" if decode == "mixed" else "cpu"
    # resize_shorter would round the long side, not truncate it, and center crops round half away
    # from zero: here the same pixels as Resize + CenterCrop ±1
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

    def _reader(self, epoch: int, start_batch: int):
        """The reader of this rank's remaining samples of `epoch`: (encoded images, labels) graph
        nodes."""
        raise NotImplementedError

    def _sample_keys(self, epoch: int, start_batch: int) -> np.ndarray:
        """The (seed, epoch, sample) key of each remaining sample, in reading order."""
        raise NotImplementedError

    def _labels(self, tensor_list) -> torch.Tensor:
        raise NotImplementedError

    def _draw_source(self, epoch: int, start_batch: int):
        """external_source callable: iteration i → the draws of the i-th remaining batch."""
        keys = self._sample_keys(epoch, start_batch)
        draws = TrainDraws(self.aug, self.seed, epoch, self.auto_aug)
        batch_size, batches = self.batch_size, max(1, len(keys) // self.batch_size)

        def source(iteration: int) -> list[np.ndarray]:
            # the executor may prefetch past the last batch; those runs are never read
            batch = iteration % batches
            return draws.columns(keys[batch * batch_size : (batch + 1) * batch_size])

        return draws.names, source

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start_batch, batches = self.epoch, self.start_batch, len(self)
        if batches == 0:
            return
        dali, fn, types = self.dali, self.fn, self.types
        remaining = self._remaining_samples(epoch, start_batch)
        train = self.split == "train"

        @dali.pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            # no random operator is left in the graph (TrainDraws feeds every choice): the seed
            # only keeps whatever DALI draws internally reproducible
            seed=pipeline_seed(self.seed, epoch, self.dist.rank, start_batch),
            exec_dynamic=True,
            # auto_aug's `select` splits the batch with DALI conditionals
            enable_conditionals=self.auto_aug is not None,
        )
        def build():
            jpegs, labels = self._reader(epoch, start_batch)
            if not train:
                return augment_val(
                    jpegs, aug=self.aug, decode=self.decode, fn=fn, types=types
                ), labels
            names, source = self._draw_source(epoch, start_batch)
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
