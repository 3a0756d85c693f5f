"""tools.bench_ffcv: the .beton holds the benchmark's JPEG bytes as they are (FFCV's venv)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tools.bench_ffcv import jpeg_size

REPO = Path(__file__).resolve().parents[2]
FFCV_PYTHON = REPO / ".venv-ffcv" / "bin" / "python"
PHOTOS = sorted((REPO / "tools" / "photos").glob("*.jpg"))
ODD = REPO / "tests" / "data" / "fixtures" / "jpeg" / "progressive-420-odd-size.jpg"


def test_jpeg_size_reads_the_frame_header_as_pillow_does():
    for path in [*PHOTOS, ODD]:
        with Image.open(path) as image:
            assert jpeg_size(path.read_bytes()) == (image.height, image.width), path.name


def test_jpeg_size_refuses_what_is_not_a_jpeg():
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_size(b"\x89PNG\r\n\x1a\n" + bytes(40))


def ffcv_missing() -> str:
    if not FFCV_PYTHON.is_file():
        return f"FFCV's venv is absent ({FFCV_PYTHON}): `make bench-peers` builds it"
    probe = subprocess.run(
        [str(FFCV_PYTHON), "-c", "import ffcv.writer, ffcv.reader"],
        capture_output=True,
        check=False,
        text=True,
    )
    if probe.returncode != 0:
        return f"FFCV's venv does not import ffcv: {probe.stderr.strip().splitlines()[-1:]}"
    return ""


@pytest.mark.slow  # FFCV's import (numba, torch) and its writer's processes: ~30 s here
def test_the_beton_keeps_every_jpeg_byte_for_byte(tmp_path):
    reason = ffcv_missing()
    if reason:
        pytest.skip(reason)
    files = [*PHOTOS[:3], ODD]
    result = subprocess.run(
        [str(FFCV_PYTHON), "-m", "tools.bench_ffcv", "--check-bytes", *map(str, files)],
        capture_output=True,
        check=False,
        text=True,
        cwd=REPO,
        env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(f"{len(files)} files stored byte for byte")
