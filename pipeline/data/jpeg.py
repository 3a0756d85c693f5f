"""Decode only what a crop keeps: libjpeg-turbo's partial decode, or Pillow's full decode.

    from pipeline.data import jpeg
    header = jpeg.probe(data)                        # the header only: size, colour, sampling
    top, left, height, width = sample_crop_box(header.width, header.height, scale, ratio, rng)
    jpeg.decode_crop(data, (top, left, height, width), 224, flip, out=batch[i], header=header)

The box is (top, left, height, width) in source pixels, exactly as `sample_crop_box` draws it
(or `val_geometry`'s float box, as `box_from_corners`); the result is what `decode_full` (Pillow's
whole-image path) gives for the same box: DCT scaling by the same rule as Pillow's draft
(`dct_reduction`), a bilinear resize of the sub-pixel box to size x size (Pillow's filter and
coefficients), then the horizontal flip, written into `out` (uint8 [size, size, 3], filled in
place: a slice of a batch buffer needs no allocation).

Two paths (`decode_path` says which a file takes, and why):
  * ROI, the C extension `pipeline/data/_jpeg.c`: `jpeg_crop_scanline` decodes only the MCU
    columns that the box spans, `jpeg_skip_scanlines` skips the rows above it without an IDCT,
    and the rows below it are never read. A file with a restart marker after every MCU (what
    preprocess writes: core/jpegfile.py) goes further: only the MCUs of the box's rows and
    columns reach libjpeg, cut out as a JPEG of their own, so the rest is not even
    Huffman-decoded; the pixels are the same to the byte. Baseline and progressive JPEGs,
    YCbCr, RGB and grayscale, every chroma subsampling (4:4:4, 4:2:2, 4:2:0, 4:1:1, 4:4:0, odd
    sizes). It releases the GIL.
  * FULL, Pillow: CMYK and YCCK JPEGs (Pillow's own CMYK conversion and Adobe inversion are the
    reference), anything that is not a JPEG (the PNG named .JPEG in ImageNet), a file that
    libjpeg flags as damaged (Pillow decides what it gives, as today), and every file when the
    extension did not build. A file with no end-of-image marker at its end (truncated) goes to
    Pillow too, so that it fails in every epoch, whatever the crop, as it does today.

Pixels: the ROI path decodes a one-pixel margin around the resize's window, so IDCT and fancy
upsampling see the same neighbours as a full decode, and the resize differs from Pillow's only
in arithmetic (pillow-simd's 16-bit fixed-point weights here, Pillow's 22-bit): on tools/photos
(256 px short side and originals, 128-224 px, 624 train crops), the mean absolute error is
0.0002 levels, the worst image's 0.004, the largest 1 level (2026-12-06; 0.003-0.004, 0.06 and 2
with the earlier float32 resize). tests/data/test_jpeg.py holds each image to mean < 0.1,
max <= 3, and the AVX2 build to the very bytes of the plain-C one.

A batch in one call (`decode_train_batch`, what the folder and wds backends run per train
batch): the extension reads each file (or takes its bytes), draws its box and flip exactly as
`transforms.decode_train` does from the sample's seed (a compiled twin of CPython's Mersenne
Twister and of `sample_crop_box`, held to Python's draws by the tests), and decodes it, the GIL
released for the whole batch; the files the ROI path does not take are handed back. This took
the per-sample Python (seed, header probe, draws, read: ~0.035 of ~0.48 CPU ms per image at
224 px) out of the loaders, and the GIL off their threads (2026-12-06).

The extension is optional (pyproject's `ext-modules`, built by `make setup` with the Makefile's
CC against Debian's libjpeg-turbo). Where it did not build, importing this module logs one line
saying so, and every decode takes the FULL path.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import logging
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

try:
    from pipeline.data import _jpeg
except ImportError as err:  # not built here: no compiler, no libjpeg-dev, not libjpeg-turbo
    _jpeg = None
    UNAVAILABLE_REASON = str(err) or type(err).__name__
    logger.warning(
        "ROI JPEG decoder unavailable (%s): decoding whole images with Pillow (the full-decode "
        "path); `make setup` builds it where libjpeg-dev and a C compiler are installed",
        UNAVAILABLE_REASON,
    )
else:
    UNAVAILABLE_REASON = ""

AVAILABLE = _jpeg is not None  # whether the ROI path can run in this process

_ROI_COLOR_SPACES = ("ycbcr", "rgb", "gray")  # libjpeg converts these to RGB as Pillow does
_END_OF_IMAGE = b"\xff\xd9"  # the EOI marker


class DecodePath(enum.Enum):
    ROI = "roi"  # libjpeg-turbo: only the crop's MCU columns and rows
    FULL = "full"  # Pillow: the whole image (at the DCT scale), then the box


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What `probe` reads without decoding pixels."""

    width: int  # pixels, as stored (EXIF orientation is ignored, as everywhere in the pipeline)
    height: int
    format: str  # "JPEG", or Pillow's format name for anything else ("PNG", ...)
    components: int  # colour components in the file (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK)
    color_space: str  # JPEG: "ycbcr", "rgb", "gray", "cmyk", "ycck", "unknown"; else PIL mode
    progressive: bool
    sampling: tuple[tuple[int, int], ...] = ()  # JPEG: (h, v) sampling factors per component
    ends_with_eoi: bool = True  # JPEG: an end-of-image marker in the last 32 bytes (not truncated)


def probe(data: bytes) -> ImageHeader:
    """The header of `data` (any image Pillow reads): libjpeg's reader for a JPEG, else
    Pillow's."""
    if _jpeg is not None:
        try:
            width, height, components, progressive, color_space, sampling = _jpeg.probe(data)
        except _jpeg.JpegError:
            pass  # not a JPEG: Pillow names it, or raises as decode_train would
        else:
            return ImageHeader(
                width,
                height,
                "JPEG",
                components,
                color_space,
                bool(progressive),
                sampling,
                ends_with_eoi=_END_OF_IMAGE in data[-32:],
            )
    with Image.open(io.BytesIO(data)) as image:
        layers = getattr(image, "layer", [])  # JPEG: (id, h, v, table) per component
        return ImageHeader(
            width=image.width,
            height=image.height,
            format=image.format or "unknown",
            components=len(image.getbands()),
            color_space=_pil_color_space(image),
            progressive=bool(image.info.get("progressive") or image.info.get("progression")),
            sampling=tuple((layer[1], layer[2]) for layer in layers),
            ends_with_eoi=image.format != "JPEG" or _END_OF_IMAGE in data[-32:],
        )


def _pil_color_space(image: Image.Image) -> str:
    if image.format != "JPEG":
        return image.mode
    # Pillow's JPEG modes: L, RGB, CMYK (CMYK and YCCK both read as CMYK)
    return {"L": "gray", "RGB": "ycbcr", "CMYK": "cmyk"}.get(image.mode, "unknown")


def decode_path(header: ImageHeader) -> tuple[DecodePath, str]:
    """Which path decodes this file, and why."""
    if not AVAILABLE:
        return DecodePath.FULL, f"ROI decoder unavailable ({UNAVAILABLE_REASON})"
    if header.format != "JPEG":
        return DecodePath.FULL, f"{header.format} is not a JPEG"
    if header.color_space not in _ROI_COLOR_SPACES:
        return DecodePath.FULL, f"{header.color_space} JPEG: Pillow's colour conversion"
    if not header.ends_with_eoi:
        # truncated: a crop above the cut would decode, so the file would fail only in some
        # epochs; Pillow reads it whole and fails (or not) every time, as decode_train does
        return DecodePath.FULL, "no end-of-image marker (truncated?): Pillow decides"
    return DecodePath.ROI, f"{header.color_space} JPEG"


def dct_reduction(box_width: float, box_height: float, size: int) -> int:
    """The DCT scale denominator (1, 2, 4 or 8): the smallest decode that keeps the box at least
    `size` on both sides: the one home of this rule, for both paths (Pillow's `draft` on the
    full-decode path is asked for exactly this scale)."""
    reduction = 1
    while (
        reduction < 8
        and box_width / (reduction * 2) >= size
        and box_height / (reduction * 2) >= size
    ):
        reduction *= 2
    return reduction


def box_from_corners(left: float, top: float, right: float, bottom: float) -> tuple[float, ...]:
    """`val_geometry`'s (left, top, right, bottom) as decode_crop's (top, left, height, width)."""
    return top, left, bottom - top, right - left


def decode_crop(
    data: bytes,
    box: Sequence[float],
    size: int,
    flip: bool,
    out: np.ndarray | None = None,
    header: ImageHeader | None = None,
    roi: bool = True,
) -> np.ndarray:
    """`box` = (top, left, height, width) of the image in `data`, resized bilinearly to
    [size, size, 3] uint8, mirrored if `flip`: written into `out` (allocated when None) and
    returned.

    Args:
        header: `probe(data)`, when the caller has it already (saves a header parse, ~5 µs).
        roi: False takes Pillow's full-decode path whatever the file (`data.roi_decode`).
    """
    out = _check_out(out, size)
    header = probe(data) if header is None else header
    top, left, height, width = (float(value) for value in box)
    if height <= 0 or width <= 0:
        raise ValueError(f"crop box {tuple(box)} is empty: height and width must be > 0")
    path, _ = decode_path(header)
    if roi and path is DecodePath.ROI:
        try:
            _decode_roi(data, header, (top, left, height, width), size, flip, out)
            return out
        except _jpeg.JpegError as err:
            # damaged data: Pillow decides, as the full decode always did (it may raise)
            logger.debug("ROI decode failed (%s): decoding with Pillow", err)
    decode_full(data, (top, left, height, width), size, flip, out)
    return out


def _decode_roi(
    data: bytes, header: ImageHeader, box: tuple[float, ...], size: int, flip: bool, out
) -> tuple[int, int, int, bool]:
    """The ROI path's call for `box` (top, left, height, width) into `out`: (decoded columns,
    decoded rows, rows above not decoded, whether only a restart window's MCUs were decoded).
    Raises _jpeg.JpegError where libjpeg finds the data damaged."""
    top, left, height, width = box
    reduction = dct_reduction(width, height, size)
    factor = _draft_factor(header.width, reduction)
    return _jpeg.decode_crop(
        data,
        out,
        left / factor,
        top / factor,
        (left + width) / factor,
        (top + height) / factor,
        reduction,
        size,
        flip,
    )


def decode_train_batch(
    sources: Sequence[bytes | str],
    seeds: np.ndarray,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_prob: float,
    size: int,
    out: np.ndarray,
) -> list[int]:
    """Train samples in one C call, the GIL released: each source (a path, read in C, or the
    file's bytes) gets the crop box and flip that `random.Random(seeds[i])` draws in
    `transforms.decode_train` (sample_crop_box, then the flip), and its ROI decode, into
    out[i] (uint8 [len(sources), size, size, 3], C-contiguous).

    Returns the positions it did not decode, for the caller's per-sample path: files the ROI path
    does not take (not a JPEG, CMYK, no end-of-image marker), damaged or unreadable ones, and
    every position where the extension did not build. Their out[i] is left to that path.
    The C draws are a compiled twin of Python's; tests/data/test_jpeg.py holds them to the
    very same boxes and flips, and the batch to the very bytes of decode_train.
    """
    if out.shape != (len(sources), size, size, 3) or out.dtype != np.uint8:
        raise ValueError(
            f"out must be uint8 [{len(sources)}, {size}, {size}, 3], got {out.dtype} "
            f"{tuple(out.shape)}"
        )
    if _jpeg is None:
        return list(range(len(sources)))
    return _jpeg.decode_train_batch(
        sources,
        np.ascontiguousarray(seeds, dtype=np.uint64),
        (float(scale[0]), float(scale[1])),
        (float(ratio[0]), float(ratio[1])),
        float(flip_prob),
        size,
        _check_writable(out),
    )


def _check_out(out: np.ndarray | None, size: int) -> np.ndarray:
    if out is None:
        return np.empty((size, size, 3), dtype=np.uint8)
    if out.shape != (size, size, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape ({size}, {size}, 3), got "
            f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}"
        )
    return _check_writable(out)


def _check_writable(out: np.ndarray) -> np.ndarray:
    if not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous, got a strided {tuple(out.shape)} view")
    if not out.flags.writeable:
        raise ValueError("out is read-only: pass a writable array (a batch buffer's slice)")
    return out


def _draft_factor(width: int, reduction: int) -> float:
    """What the box is divided by after a 1/reduction decode: `decode_full`'s `round(width /
    decoded width)` (decoded width = ceil(width / reduction), as in libjpeg)."""
    if reduction == 1:
        return 1.0
    return float(round(width / math.ceil(width / reduction)))


def decode_full(
    data: bytes, box: tuple[float, float, float, float], size: int, flip: bool, out: np.ndarray
) -> None:
    """Pillow's full-decode path (today's `decode_train` before the ROI decoder, and the
    reference of tests/data/test_jpeg.py): draft at `dct_reduction`, RGB, bilinear resize of the
    box, flip, into `out`."""
    top, left, height, width = box
    with Image.open(io.BytesIO(data)) as image:
        factor = 1.0
        if image.format == "JPEG":
            reduction = dct_reduction(width, height, size)
            if reduction > 1:
                full_width, full_height = image.size
                image.draft("RGB", (full_width // reduction, full_height // reduction))
                factor = float(round(full_width / image.size[0]))
        image = image.convert("RGB") if image.mode != "RGB" else image
        resized = image.resize(
            (size, size),
            Image.Resampling.BILINEAR,
            box=(left / factor, top / factor, (left + width) / factor, (top + height) / factor),
        )
    if flip:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out[...] = np.asarray(resized)
