"""The JPEG layout that preprocess writes and the ROI decoder reads fastest: a restart marker
after every MCU.

    from core.jpegfile import with_restart_markers, restart_interval
    data = with_restart_markers(pillow_jpeg_bytes)   # what preprocess/images.py writes
    restart_interval(data)                           # 1: the MCUs a crop keeps can be cut out

Why: a baseline JPEG's scan is one bit stream in which each block's DC value is coded against
the block before it, so a decoder reaches a crop's MCUs only by Huffman-decoding every MCU
before them: libjpeg-turbo's `jpeg_crop_scanline` / `jpeg_skip_scanlines` save the IDCT of what
a crop drops, not its Huffman decoding, which is half of a 256 px image's decode. A restart
marker (RSTn, with DRI = 1) after every MCU starts each MCU on a byte with fresh DC predictions,
so the ROI decoder (pipeline/data/_jpeg.c, "restart windows") hands libjpeg only the MCUs of the
crop's rows and columns, as a JPEG of their own: 0.39 → 0.31 CPU ms per image at 128 px
(docs/BENCHMARKS.md, issue 18, phase 6).

The rewrite is lossless (`core/_jpegtran.c`: libjpeg's transcoding API, as `jpegtran -restart 1B
-optimize -copy all`): the same DCT coefficients, so every decoder (Pillow, DALI, nvJPEG, FFCV,
torchvision) gives the same pixels as before, and the comment with the provenance is kept. The
Huffman tables are optimized for each image, which pays for most of the markers: a 4:2:0
ImageNet image (16 x 16 px MCUs) comes out ~2 % larger than Pillow wrote it, a 4:4:4 or gray one
(8 x 8 px MCUs, four times as many markers) 12-17 %. A decoder that reads the whole file pays
~5 % more CPU for the markers.

Files without the markers (user folders, shards written before) decode as they always did, on
the whole-file ROI path. Where the extension did not build, this module logs one line and
`with_restart_markers` returns the bytes it was given.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

RESTART_INTERVAL = 1  # MCUs between restart markers in what preprocess writes

try:
    from core import _jpegtran
except ImportError as err:  # not built here: no compiler or no libjpeg-dev
    _jpegtran = None
    UNAVAILABLE_REASON = str(err) or type(err).__name__
else:
    UNAVAILABLE_REASON = ""

AVAILABLE = _jpegtran is not None
_warned = False


class JpegRewriteError(ValueError):
    """The JPEG could not be rewritten (damaged data): str(err) is libjpeg's reason."""


def with_restart_markers(data: bytes, interval: int = RESTART_INTERVAL) -> bytes:
    """`data` (a JPEG) rewritten losslessly with a restart marker after every `interval` MCUs
    (0: none), or `data` itself where the extension did not build (said once per process).

    Raises:
        JpegRewriteError: libjpeg found the data damaged (the rewrite would not keep its pixels).
    """
    global _warned
    if _jpegtran is None:
        if not _warned:
            _warned = True
            logger.warning(
                "core._jpegtran did not build (%s): JPEGs are written without restart markers, "
                "and the ROI decoder will Huffman-decode whole rows of them; `make setup` builds "
                "it where libjpeg-dev and a C compiler are installed",
                UNAVAILABLE_REASON,
            )
        return data
    try:
        return _jpegtran.set_restart_interval(data, interval)
    except _jpegtran.JpegError as err:
        raise JpegRewriteError(str(err)) from None


def restart_interval(data: bytes) -> int:
    """The MCUs between restart markers that the JPEG's header declares (its DRI segment before
    the first scan); 0 when it declares none, or when `data` is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return 0
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return 0
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDD and length >= 4 and at + 6 <= len(data):
            return int.from_bytes(data[at + 4 : at + 6], "big")
        if marker == 0xDA:  # the first scan: no DRI before it
            return 0
        at += 2 + length
    return 0
