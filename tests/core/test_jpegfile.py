"""core.jpegfile: the restart-marker layout, read from the header, and written by Pillow's
encoder as preprocess asks it to (the marker after every N MCUs, the same pixels)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.jpegfile import RESTART_INTERVAL, restart_interval

PHOTOS = Path(__file__).resolve().parents[2] / "tools" / "photos"


def pillow_jpeg(restart: int, mode: str = "RGB", **options) -> bytes:
    with Image.open(PHOTOS / "golden_gate.jpg") as image:
        image = image.convert("RGB").resize((341, 256), Image.Resampling.LANCZOS).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, restart_marker_blocks=restart, **options)
    return buffer.getvalue()


def restart_markers(data: bytes) -> list[int]:
    """The RSTn numbers in the scan, in order."""
    scan = data.index(b"\xff\xda")
    return [match.group()[1] - 0xD0 for match in re.finditer(rb"\xff[\xd0-\xd7]", data[scan:])]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    ("mode", "options", "mcus"),
    [
        ("RGB", {"subsampling": 2}, 22 * 16),  # 4:2:0: 16 x 16 px MCUs of 341 x 256
        ("RGB", {"subsampling": 0}, 43 * 32),  # 4:4:4: 8 x 8 px MCUs
        ("L", {}, 43 * 32),  # gray: one 8 x 8 block an MCU
    ],
)
@pytest.mark.parametrize("interval", [RESTART_INTERVAL, 3])
def test_the_header_says_the_interval_that_the_scan_has(mode, options, mcus, interval):
    marked = pillow_jpeg(interval, mode, **options)
    plain = pillow_jpeg(0, mode, **options)
    assert restart_interval(marked) == interval and restart_interval(plain) == 0
    # one marker between intervals, numbered 0..7 in turn, none after the last MCU
    assert restart_markers(marked) == [index % 8 for index in range(-(-mcus // interval) - 1)]
    assert restart_markers(plain) == []
    np.testing.assert_array_equal(pixels(marked), pixels(plain))  # the same coefficients


def test_restart_interval_reads_the_header_only():
    assert restart_interval(b"") == 0
    assert restart_interval(b"\x89PNG\r\n\x1a\n") == 0
    dri = b"\xff\xdd\x00\x04\x00\x07"
    assert restart_interval(b"\xff\xd8" + dri + b"\xff\xda\x00\x02") == 7
    assert restart_interval(b"\xff\xd8\xff\xff" + dri + b"\xff\xda\x00\x02") == 7  # fill byte
    assert restart_interval(b"\xff\xd8\xff\xda\x00\x02" + dri) == 0  # after the scan: not ours
    assert restart_interval(b"\xff\xd8\x00\x00\x00\x00") == 0  # not a marker where one must be
