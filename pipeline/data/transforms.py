"""The augmentation contract, written once and honoured by every backend.

    train: RandomResizedCrop(train_resolution(epoch), scale=(scale_min, scale_max),
                             ratio=(ratio_min, ratio_max)),
           then a horizontal flip with probability flip_prob,
           then auto_augment (none, TrivialAugmentWide or AutoAugment's ImageNet policy);
    val:   resize the short side to val_resize, then center-crop val_crop.

Sizes come from `cfg.data` (ImageNet: 224, 0.08–1, 3/4–4/3, 0.5; 256 → 224). The train size
follows `train_resolution`, a pure function of the epoch (progressive resizing: data.res_start
ramping up to data.train_crop); val sizes never change. Batches leave the loaders as uint8 and
are normalized on the device by `normalize`, which moves a quarter of the bytes a float32 host
batch would.

Every random draw of a train sample comes from `sample_rng(seed, epoch, sample)`, the sample's
`Purpose.TRAIN_SAMPLE` stream of the one seed rule (core.seeds), so a resumed epoch, at any batch
and across a change of size, decodes the very same pixels. The auto-augment ops draw from torch's
global generator; `auto_augment` runs them under a seed drawn from that same per-sample stream (as
DALI's auto-augment choices are columns of it) and puts the generator back afterwards.

The DataLoader backends (folder, wds) run `decode_train_batch` (train: one C call per batch,
the same draws and bytes as `decode_train`, which takes the files it leaves) and `decode_val`
here: the crop box is
sampled first in original coordinates, from the header's size (the same algorithm and fallback
as torchvision's `RandomResizedCrop.get_params`), then `jpeg.decode_crop` decodes only the MCU
rows and columns the box spans, at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the box at
least as large as the output (`jpeg.dct_reduction`, the one home of that rule), so a 0.08-area
crop decodes a fraction of the pixels. CMYK JPEGs, non-JPEGs, and every file where the C
extension did not build take Pillow's full decode (`jpeg.decode_full`, with `Image.draft` at the
same scale) of the same box. DALI runs the same contract with its own operators
(pipeline/data/dali/graph.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from core.seeds import Purpose, stream_seed, stream_seeds
from pipeline.config import AutoAugment, DataConfig
from pipeline.data import jpeg
from pipeline.errors import LoaderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of pixels in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

_NORMALIZE_CACHE: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [N,3,H,W] → `dtype` (x/255 - mean)/std, on the images' device, keeping the memory
    format."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    key = (images_uint8.device, dtype)
    if key not in _NORMALIZE_CACHE:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32) * 255.0
        scale = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32) * 255.0)
        _NORMALIZE_CACHE[key] = (
            mean.view(1, 3, 1, 1).to(images_uint8.device, dtype),
            scale.view(1, 3, 1, 1).to(images_uint8.device, dtype),
        )
    mean, scale = _NORMALIZE_CACHE[key]
    return (images_uint8.to(dtype) - mean).mul_(scale)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize`: float [N,3,H,W] → uint8 (for grids of what the model saw)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() * std + mean).round_().clamp_(0, 255).to(torch.uint8)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The contract's numbers, taken from cfg.data."""

    train_crop: int = 224  # pixels, square
    scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the original
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h
    flip_prob: float = 0.5
    val_resize: int = 256  # short side before the center crop
    val_crop: int = 224
    auto_augment: AutoAugment = "none"  # train, after the crop and flip
    roi: bool = True  # decode only the crop's window where the ROI decoder is built (jpeg.py)

    @classmethod
    def from_config(cls, data: DataConfig) -> Augmentation:
        return cls(
            train_crop=data.train_crop,
            scale=(data.scale_min, data.scale_max),
            ratio=(data.ratio_min, data.ratio_max),
            flip_prob=data.flip_prob,
            val_resize=data.val_resize,
            val_crop=data.val_crop,
            auto_augment=data.auto_augment,
            roi=data.roi_decode,
        )

    def output_size(self, split: str) -> int:
        return self.train_crop if split == "train" else self.val_crop


def train_resolution(data: DataConfig, epoch: int) -> int:
    """The train crop of `epoch`, pixels: data.train_crop when data.res_start is 0; otherwise
    res_start up to epoch res_ramp_start, train_crop from res_ramp_end on, and in between the
    linear interpolation rounded to the nearest multiple of res_step (halves to even, as FFCV's
    np.round), kept inside [res_start, train_crop] so a start or end that is not a multiple of
    the step is never overshot.

    FFCV's ResNet-50 at 24 epochs: 160 → 192 between epochs 17 and 20, step 32, gives 160 up to
    epoch 18, then 192.
    """
    if not data.res_start:
        return data.train_crop
    if epoch <= data.res_ramp_start:
        return data.res_start
    if epoch >= data.res_ramp_end:
        return data.train_crop
    # exact rational arithmetic: a float would round a true half (e.g. 176 / 32 = 5.5) either way
    progress = Fraction(epoch - data.res_ramp_start, data.res_ramp_end - data.res_ramp_start)
    size = data.res_start + (data.train_crop - data.res_start) * progress
    rounded = round(size / data.res_step) * data.res_step
    return min(max(rounded, data.res_start), data.train_crop)


def resolution_schedule(data: DataConfig, epochs: int) -> dict[int, int]:
    """{train size: how many of the run's `epochs` train at it}, smallest size first."""
    counts: dict[int, int] = {}
    for epoch in range(epochs):
        size = train_resolution(data, epoch)
        counts[size] = counts.get(size, 0) + 1
    return dict(sorted(counts.items()))


class RandomSource(Protocol):
    """What crop sampling draws from: `random.Random` has both methods."""

    def uniform(self, a: float, b: float) -> float: ...

    def randint(self, a: int, b: int) -> int: ...  # inclusive of b


def sample_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: RandomSource,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width): torchvision's RandomResizedCrop.get_params, draw for
    draw.

    Ten tries at a random area fraction and log-uniform aspect ratio that fit inside the image,
    then the same fallback: a center crop clamped to the ratio range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = rng.randint(0, height - crop_height)
            left = rng.randint(0, width - crop_width)
            return top, left, crop_height, crop_width
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        crop_width = width
        crop_height = round(crop_width / min(ratio))
    elif in_ratio > max(ratio):
        crop_height = height
        crop_width = round(crop_height * max(ratio))
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def val_geometry(
    width: int, height: int, resize: int, crop: int
) -> tuple[float, float, float, float]:
    """The source box (left, top, right, bottom) that Resize(resize) + CenterCrop(crop) reads.

    Same rounding as torchvision: the long side is truncated, the crop offset rounded.
    """
    if width <= height:
        resized_width, resized_height = resize, int(resize * height / width)
    else:
        resized_width, resized_height = int(resize * width / height), resize
    crop_top = round((resized_height - crop) / 2.0)
    crop_left = round((resized_width - crop) / 2.0)
    scale_x = width / resized_width
    scale_y = height / resized_height
    return (
        crop_left * scale_x,
        crop_top * scale_y,
        (crop_left + crop) * scale_x,
        (crop_top + crop) * scale_y,
    )


def _read(data: bytes | str) -> bytes:
    """The file's bytes: one read() of the whole file (PIL reading a file object makes ~40 small
    reads per JPEG, which cost as much as a third of the decode here), through os calls: open,
    fstat, read, close, where Python's buffered file adds an ioctl, two seeks, a second fstat and
    a read at the end (0.013 CPU ms a 34 KB file here against 0.015-0.023, 2026-12-06)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    descriptor = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
    try:
        left = os.fstat(descriptor).st_size
        chunks = []
        while left > 0:  # one read, unless the file system returns it in parts
            chunk = os.read(descriptor, left)
            if not chunk:
                break  # shorter than fstat said: what there is
            chunks.append(chunk)
            left -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(descriptor)


def decode_train(
    data: bytes | str,
    aug: Augmentation,
    rng: random.Random,
    size: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """JPEG bytes (or a path) → uint8 [size, size, 3]: RandomResizedCrop + flip (+ auto-augment).

    The box and flip are drawn from the header's width and height, then `jpeg.decode_crop`
    decodes only what the box keeps (or, for a CMYK JPEG, a PNG, or where the extension did not
    build, Pillow's full decode of the same box).

    Args:
        size: the epoch's `train_resolution`; None means aug.train_crop.
        out: a C-contiguous uint8 [size, size, 3] array (a batch buffer's slot) to fill and
            return; None allocates one.
    """
    size = aug.train_crop if size is None else size
    data = _read(data)
    header = jpeg.probe(data)
    box = sample_crop_box(header.width, header.height, aug.scale, aug.ratio, rng)
    flip = rng.random() < aug.flip_prob
    # drawn after the crop and flip, so `none` keeps every earlier draw (and pixel) as it was
    augment_seed = rng.getrandbits(63) if aug.auto_augment != "none" else 0
    pixels = jpeg.decode_crop(data, box, size, flip, out=out, header=header, roi=aug.roi)
    if aug.auto_augment != "none":
        augmented = auto_augment(Image.fromarray(pixels), aug.auto_augment, augment_seed)
        pixels[...] = np.asarray(augmented)  # same size: the ops keep the image's shape
    return pixels


def decode_train_batch(
    sources: list[bytes | str],
    aug: Augmentation,
    seed: int,
    epoch: int,
    indices: np.ndarray,
    size: int,
    out: np.ndarray,
) -> list[int]:
    """`decode_train(sources[i], aug, sample_rng(seed, epoch, indices[i]), size, out=out[i])`
    for every i, in one C call where it can (`jpeg.decode_train_batch`: the read, the draws and
    the ROI decode of the whole batch with the GIL released, the same boxes, flips and bytes).

    Returns the positions left undecoded: the caller runs decode_train on each (with its own
    error wrapping). That is every position when
    aug.auto_augment is set, aug.roi is off or the extension did not build, and otherwise the
    files the ROI path does not take (CMYK, not a JPEG, truncated, damaged, unreadable).
    """
    if aug.auto_augment != "none" or not aug.roi or not jpeg.AVAILABLE:
        return list(range(len(sources)))
    seeds = sample_seeds(seed, epoch, indices)
    return jpeg.decode_train_batch(sources, seeds, aug.scale, aug.ratio, aug.flip_prob, size, out)


def decode_val(data: bytes | str, aug: Augmentation, out: np.ndarray | None = None) -> np.ndarray:
    """JPEG bytes (or a path) → uint8 [val_crop, val_crop, 3]: short side to val_resize, center
    crop (`out` as in decode_train)."""
    data = _read(data)
    header = jpeg.probe(data)
    corners = val_geometry(header.width, header.height, aug.val_resize, aug.val_crop)
    box = jpeg.box_from_corners(*corners)
    return jpeg.decode_crop(data, box, aug.val_crop, False, out=out, header=header, roi=aug.roi)


@functools.cache
def build_auto_augment(name: AutoAugment) -> Callable[[Image.Image], Image.Image]:
    """torchvision's v2 op for data.auto_augment (one per process).

    Bilinear interpolation for the geometric ops, as torchvision's classification references
    use; the fill stays torchvision's default (black), which the DALI backend matches.
    """
    try:
        from torchvision.transforms import v2
    except ImportError as err:  # torchvision < 0.15
        raise LoaderError(
            f"data.auto_augment={name} needs torchvision.transforms.v2 (torchvision >= 0.16), "
            f"which is not importable here ({err}): upgrade torchvision or set "
            "data.auto_augment=none"
        ) from err
    bilinear = v2.InterpolationMode.BILINEAR
    if name == "trivial":
        return v2.TrivialAugmentWide(interpolation=bilinear)
    if name == "imagenet":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)
    raise LoaderError(f"data.auto_augment {name!r} is not one of none, trivial, imagenet")


def auto_augment(image: Image.Image, name: AutoAugment, seed: int) -> Image.Image:
    """An RGB image (uint8) through `build_auto_augment(name)`, its random draws seeded.

    The v2 ops draw from torch's global CPU generator and take no generator argument, so that
    generator is seeded for the call and restored after it: the trainer's own torch stream (in
    the main process when num_workers=0) is left as it was, and CUDA generators are never
    touched. Seeding and restoring cost ~3 µs. The op runs on the PIL image the decode already
    holds: torchvision's PIL kernels took 0.6 / 1.3 ms of CPU per image at 128 / 224 px
    (TrivialAugmentWide; AutoAugment 0.5 / 1.0), its uint8-tensor kernels 0.85 / 1.7 ms (one
    core of the project's VM, torch 2.13, torchvision 0.28, 2026-11).
    """
    op = build_auto_augment(name)
    generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(seed)
    try:
        return op(image)
    finally:
        generator.set_state(saved)


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The per-sample random stream: `stream_seed(seed, Purpose.TRAIN_SAMPLE, epoch, sample)`,
    the sample being its file index (folder) or its index in the split (wds).

    Independent of rank, worker count and resume point, so a resumed epoch re-draws the very
    same crops, flips and auto-augment ops. (Seeding costs ~13 µs, under 1 % of a decode.)
    """
    return random.Random(stream_seed(seed, Purpose.TRAIN_SAMPLE, epoch, index))


def sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """uint64 [N]: the seed of `sample_rng(seed, epoch, indices[i])` for each i, at once
    (`random.Random(int(seeds[i]))` is that stream)."""
    return stream_seeds(seed, Purpose.TRAIN_SAMPLE, epoch, np.asarray(indices, dtype=np.int64))


def collate_uint8(samples: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(HWC uint8, label)] → (uint8 [N,H,W,3], int64 [N]) written into one preallocated buffer.

    In a DataLoader worker the buffer is allocated in shared memory, so sending the batch to
    the main process copies nothing (what torch's default_collate does for its stack).
    """
    first = samples[0][0]
    shape = (len(samples), *first.shape)
    if torch.utils.data.get_worker_info() is not None:
        storage = (
            torch.empty(0, dtype=torch.uint8).untyped_storage()._new_shared(int(np.prod(shape)))
        )
        images = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    else:
        images = torch.empty(shape, dtype=torch.uint8)
    target = images.numpy()
    labels = torch.empty(len(samples), dtype=torch.int64)
    for position, (pixels, label) in enumerate(samples):
        target[position] = pixels
        labels[position] = label
    return images, labels
