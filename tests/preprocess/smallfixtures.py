"""Tiny CIFAR-10/100 archives and MNIST-family IDX files in the official formats, with real content.

    from smallfixtures import build_cifar, build_idx   # tests/preprocess is on sys.path
    cifar = build_cifar(tmp_path, "cifar10")             # cifar.path: cifar-10-python.tar.gz
    cifar.train.images[7], cifar.train.labels[7]         # what prepare must give back for key 7

The writers are tools/official_formats.py (exact pickle keys and IDX headers; torchvision's own
classes read them, see test_small_datasets.py). Pixels are real: CIFAR images are 32x32 crops
of the shipped photos (tools/photos), class k cropped from photo k, so a model can learn them;
MNIST images are scikit-learn's real handwritten digits upscaled to 28x28, class = the digit.
JPEG error on such content is what the tests bound (noise would be a different, worse case).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from tools.official_formats import CIFAR10_ARCHIVE, CIFAR100_ARCHIVE, write_cifar_archive
from tools.official_formats import write_idx_files as write_idx

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "tools" / "photos").glob("*.jpg"))


@dataclasses.dataclass(frozen=True)
class Arrays:
    images: np.ndarray  # uint8 [N, H, W, 3] or [N, H, W]
    labels: np.ndarray  # int64 [N]


@dataclasses.dataclass(frozen=True)
class SmallSet:
    path: Path  # what to pass to `prepare` as RAW
    train: Arrays
    test: Arrays
    coarse_train: np.ndarray | None = None  # CIFAR-100's coarse labels
    coarse_test: np.ndarray | None = None


def photo_crops(labels: np.ndarray, seed: int, size: int = 32) -> np.ndarray:
    """uint8 [N, size, size, 3]: image i is a random crop of photo labels[i] (mod the photos)."""
    rng = np.random.default_rng(seed)
    photos = {}
    crops = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        photo_index = int(label) % len(PHOTOS)
        if photo_index not in photos:
            with Image.open(PHOTOS[photo_index]) as image:
                scale = 96 / min(image.size)  # a CIFAR-like field of view: ~1/3 of the photo
                photos[photo_index] = np.asarray(
                    image.convert("RGB").resize(
                        (round(image.width * scale), round(image.height * scale)), Image.LANCZOS
                    )
                )
        photo = photos[photo_index]
        top = rng.integers(0, photo.shape[0] - size + 1)
        left = rng.integers(0, photo.shape[1] - size + 1)
        crops[index] = photo[top : top + size, left : left + size]
    return crops


def digit_images(count: int, seed: int) -> Arrays:
    """`count` of scikit-learn's real 8x8 digits as 28x28 uint8 MNIST-style images (ink high)."""
    from sklearn.datasets import load_digits  # ships inside the wheel

    digits = load_digits()
    rows = np.random.default_rng(seed).choice(len(digits.target), count, replace=False)
    images = np.stack(
        [
            np.asarray(
                Image.fromarray((digits.images[row] * (255 / 16)).astype(np.uint8)).resize(
                    (28, 28), Image.BICUBIC
                )
            )
            for row in rows
        ]
    )
    return Arrays(images, digits.target[rows].astype(np.int64))


def build_cifar(
    root: Path,
    family: str = "cifar10",
    train_per_class: int = 3,
    test_per_class: int = 2,
    *,
    num_classes: int | None = None,
    seed: int = 0,
) -> SmallSet:
    """root/cifar-10-python.tar.gz (or cifar-100-python.tar.gz) with classes interleaved.

    Args:
        num_classes: labels used (default: all 10 / 100); the archive still names them all.
    """
    classes = num_classes or (10 if family == "cifar10" else 100)
    rng = np.random.default_rng(seed)
    splits = []
    for per_class in (train_per_class, test_per_class):
        labels = rng.permutation(np.repeat(np.arange(classes), per_class))
        splits.append(Arrays(photo_crops(labels, int(rng.integers(1 << 30))), labels))
    name = CIFAR10_ARCHIVE if family == "cifar10" else CIFAR100_ARCHIVE
    coarse = [rng.integers(0, 20, len(split.labels)) for split in splits]
    path = write_cifar_archive(
        Path(root) / name,
        family,
        train=(splits[0].images, splits[0].labels),
        test=(splits[1].images, splits[1].labels),
        coarse=list(coarse[0]) if family == "cifar100" else None,
        coarse_test=list(coarse[1]) if family == "cifar100" else None,
    )
    if family == "cifar100":
        return SmallSet(path, splits[0], splits[1], coarse[0], coarse[1])
    return SmallSet(path, splits[0], splits[1])


def build_idx(root: Path, train_count: int = 30, test_count: int = 10, seed: int = 0) -> SmallSet:
    """The four IDX .gz files in `root` (created), real digits as content."""
    everything = digit_images(train_count + test_count, seed)
    train = Arrays(everything.images[:train_count], everything.labels[:train_count])
    test = Arrays(everything.images[train_count:], everything.labels[train_count:])
    write_idx(root, train=(train.images, train.labels), test=(test.images, test.labels))
    return SmallSet(Path(root), train, test)
