"""core.jpegfile: the lossless rewrite with a restart marker after every N MCUs, held to Pillow
(the reader) for the pixels and to the file's own markers for the layout."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import jpegfile
from core.jpegfile import JpegRewriteError, restart_interval, with_restart_markers

PHOTOS = Path(__file__).resolve().parents[2] / "tools" / "photos"

needs_extension = pytest.mark.skipif(
    not jpegfile.AVAILABLE,
    reason=f"core._jpegtran did not build here ({jpegfile.UNAVAILABLE_REASON}): `make setup`",
)


def pillow_jpeg(mode: str = "RGB", size=(341, 256), **options) -> bytes:
    """A photo as Pillow encodes it (what preprocess gets before the rewrite), with a comment."""
    with Image.open(PHOTOS / "golden_gate.jpg") as image:
        image = image.convert("RGB").resize(size, Image.Resampling.LANCZOS).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, comment=b"provenance {}", **options)
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def comment(data: bytes) -> bytes | None:
    with Image.open(io.BytesIO(data)) as image:
        return image.info.get("comment")


def restart_markers(data: bytes) -> list[int]:
    """The RSTn numbers in the scan, in order."""
    scan = data.index(b"\xff\xda")
    return [match.group()[1] - 0xD0 for match in re.finditer(rb"\xff[\xd0-\xd7]", data[scan:])]


@needs_extension
@pytest.mark.parametrize(
    ("kind", "options", "mcus", "growth"),
    [
        ("4:2:0", {"subsampling": 2}, 22 * 16, 0.04),  # 16 x 16 MCUs of 341 x 256: +2.3 %
        ("4:4:4", {"subsampling": 0}, 43 * 32, 0.15),  # 8 x 8 MCUs, 4 times as many: +12 %
        ("grayscale", {}, 43 * 32, 0.20),  # one 8 x 8 block an MCU: +17 %
    ],
)
@pytest.mark.parametrize("interval", [1, 3, 0])
def test_the_rewrite_keeps_the_pixels_and_comment_and_puts_a_marker_every_interval(
    kind, options, mcus, growth, interval
):
    data = pillow_jpeg("L" if kind == "grayscale" else "RGB", **options)
    assert restart_interval(data) == 0  # Pillow writes none
    rewritten = with_restart_markers(data, interval)
    assert restart_interval(rewritten) == interval
    np.testing.assert_array_equal(pixels(rewritten), pixels(data))
    assert comment(rewritten) == comment(data) == b"provenance {}"
    # one marker between intervals, numbered 0..7 in turn (none after the last MCU)
    expected = 0 if interval == 0 else -(-mcus // interval) - 1
    assert restart_markers(rewritten) == [index % 8 for index in range(expected)]
    # the image's own Huffman tables pay for most of the markers (2 bytes and ~4 bits each)
    assert len(data) * 0.95 < len(rewritten) < len(data) * (1 + growth), (len(rewritten), len(data))


@needs_extension
def test_the_rewrite_is_deterministic_and_idempotent():
    data = pillow_jpeg()
    once = with_restart_markers(data)
    assert once == with_restart_markers(data)
    assert with_restart_markers(once) == once


@needs_extension
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "premature end"),
        (lambda data: b"not a jpeg at all", "not a jpeg"),
    ],
)
def test_damaged_data_is_refused_with_libjpegs_reason(damage, reason):
    with pytest.raises(JpegRewriteError, match=f"(?i){reason}"):
        with_restart_markers(damage(pillow_jpeg()))


def test_restart_interval_reads_the_header_only():
    assert restart_interval(b"") == 0
    assert restart_interval(b"\x89PNG\r\n\x1a\n") == 0
    dri = b"\xff\xdd\x00\x04\x00\x07"
    assert restart_interval(b"\xff\xd8" + dri + b"\xff\xda\x00\x02") == 7
    assert restart_interval(b"\xff\xd8\xff\xda\x00\x02" + dri) == 0  # after the scan: not ours


def test_without_the_extension_the_bytes_pass_through_and_one_line_says_so(monkeypatch, caplog):
    monkeypatch.setattr(jpegfile, "_jpegtran", None)
    monkeypatch.setattr(jpegfile, "_warned", False)
    data = b"\xff\xd8 any bytes"
    with caplog.at_level(logging.WARNING, logger="core.jpegfile"):
        assert with_restart_markers(data) is data
        assert with_restart_markers(data) is data
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "without restart markers" in lines[0], lines
