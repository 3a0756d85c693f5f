"""The JPEG layout that preprocess writes and the ROI decoder reads fastest: a restart marker
after every MCU.

    from core.jpegfile import RESTART_INTERVAL, restart_interval
    image.save(buffer, "JPEG", quality=90, restart_marker_blocks=RESTART_INTERVAL)  # preprocess
    restart_interval(data)   # 1: the ROI decoder can cut the MCUs a crop keeps out of the file

Why: a baseline JPEG's scan is one bit stream in which each block's DC value is coded against
the block before it, so a decoder reaches a crop's MCUs only by Huffman-decoding every MCU
before them: libjpeg-turbo's `jpeg_crop_scanline` / `jpeg_skip_scanlines` save the IDCT of what
a crop drops, not its Huffman decoding, which is half of a 256 px image's decode. A restart
marker (RSTn, with DRI = 1) after every MCU starts each MCU on a byte with fresh DC predictions,
so the ROI decoder (pipeline/data/_jpeg.c, "restart windows") hands libjpeg only the MCUs of the
crop's rows and columns, as a JPEG of their own: about 20 % less CPU per train image, 1.5-1.7x
less than FFCV became 1.8-2.3x (docs/BENCHMARKS.md, issue 18, phase 6).

The markers change nothing else: Pillow's encoder writes them (`restart_marker_blocks`) with the
same quantization and the same DCT, so every decoder (Pillow, DALI, nvJPEG, FFCV, torchvision)
gives the same pixels as without them. They cost 2 bytes and the padding to a byte per MCU,
3.7 bytes on average: on tools/photos at 256 px (4:2:0, 16 x 16 px MCUs, ImageNet's), 3.6 % more
bytes in all, 2-22 % by image (the smoothest, smallest files the most); 4:4:4 and gray images
have four times as many MCUs (8 x 8 px). A decoder that reads the whole file pays ~5 % more CPU.
Files without the markers (a user's own folders, shards written before) decode as they always
did, on the whole-file ROI path.
"""

from __future__ import annotations

RESTART_INTERVAL = 1  # MCUs between restart markers in what preprocess writes

_SOI, _DRI, _SOS = 0xD8, 0xDD, 0xDA


def restart_interval(data: bytes) -> int:
    """The MCUs between restart markers that the JPEG's header declares (its DRI segment before
    the first scan); 0 when it declares none, or when `data` is not a JPEG."""
    if data[:2] != bytes((0xFF, _SOI)):
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
        if marker == _DRI and length >= 4 and at + 6 <= len(data):
            return int.from_bytes(data[at + 4 : at + 6], "big")
        if marker == _SOS:  # the first scan: no DRI before it
            return 0
        at += 2 + length
    return 0
