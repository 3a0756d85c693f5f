"""Generated images and class folders for the resize/shard/verify tests (import from test modules).

from imagefixtures import generated_jpeg, make_class_folders   # tests/preprocess is on sys.path
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "tools" / "photos"  # the benchmark corpus
LARGE_PHOTO = PHOTOS / "flower_of_life.jpg"  # 1320x1582: DCT scaling kicks in
TYPICAL_PHOTO = PHOTOS / "impronte_d_artista.jpg"  # 570x401


def generated_jpeg(seed: int, size: tuple[int, int] = (48, 40), quality: int = 90) -> bytes:
    """A small RGB JPEG with seeded noise on a gradient: every seed gives different bytes."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * rng.uniform(
        80, 230, 3
    ).astype(np.float32)
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    pixels = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8) + noise
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_class_folders(
    root: Path,
    classes: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
    per_class: int = 5,
    size: tuple[int, int] = (48, 40),
) -> dict[str, str]:
    """root/WNID/WNID_<i>.JPEG for each class; returns key → WNID."""
    keys = {}
    for class_index, wnid in enumerate(classes):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            key = f"{wnid}_{index}"
            (root / wnid / f"{key}.JPEG").write_bytes(
                generated_jpeg(class_index * 1000 + index, size)
            )
            keys[key] = wnid
    return keys


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → sha256 for every file under root (hidden files included)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
