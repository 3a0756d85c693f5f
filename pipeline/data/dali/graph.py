"""The augmentation contract of pipeline/data/transforms.py as DALI graph operations: the train
crop from the host's draws, resize, mirror (+ auto-augment); the val resize and center crop."""

from __future__ import annotations

import numpy as np

from pipeline.data.dali.draws import CROP_ATTEMPTS
from pipeline.data.transforms import Augmentation

# The `mixed` (nvJPEG) decoder as NVIDIA configures it for ImageNet: DeepLearningExamples'
# ConvNets dali.py pads nvJPEG's device and pinned host buffers (211,025,920 / 140,544,512 bytes)
# and DALI's ResNet-50 example preallocates for the largest ImageNet image (5980 x 6430), so no
# buffer grows during training; hw_decoder_load sends that share of each batch to the A100/H100
# hardware JPEG decoder (0.65, DALI's documented default, set explicitly). GPU-only: untested on
# the CPU-only CI machine.
MIXED_DECODER_OPTIONS = {
    "device_memory_padding": 211_025_920,
    "host_memory_padding": 140_544_512,
    "preallocate_width_hint": 5980,
    "preallocate_height_hint": 6430,
    "hw_decoder_load": 0.65,
}
PREFETCH_QUEUE_DEPTH = 2  # batches DALI runs ahead (its default; NVIDIA's examples keep it)


def decoder_options(decoder_device: str) -> dict:
    """The decoder's buffer and hardware settings: MIXED_DECODER_OPTIONS for `mixed`, none for
    `cpu`."""
    return dict(MIXED_DECODER_OPTIONS) if decoder_device == "mixed" else {}


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
        **decoder_options(decoder_device),
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
    # the uint8 mirror alone: the same pixels as crop_mirror_normalize(dtype=UINT8, HWC,
    # mirror=flip) with none of its normalize arithmetic (~0.02-0.03 CPU ms/image less,
    # docs/BENCHMARKS.md, "DALI's CPU path: where the time goes")
    images = fn.flip(images, horizontal=nodes["flip"])
    if auto_aug is not None:
        images = auto_aug.apply(images, nodes, types)
    return images


def augment_val(jpegs, *, aug: Augmentation, decode: str, fn, types):
    """Resize + center crop with torchvision's rounding; returns uint8 HWC images."""
    decoder_device = "mixed" if decode == "mixed" else "cpu"
    # resize_shorter would round the long side, not truncate it, and center crops round half away
    # from zero: here the same pixels as Resize + CenterCrop ±1
    import nvidia.dali.math as dali_math

    images = fn.decoders.image(
        jpegs, device=decoder_device, output_type=types.RGB, **decoder_options(decoder_device)
    )
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
