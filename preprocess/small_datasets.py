"""CIFAR and the MNIST family as a stream of pixel arrays, in the official order (= key order).

Class k gets the stable WNID-shaped id `class_wnid(k)`; keys are "{dataset}_{official
split}_{index:05d}", the index into the official arrays. The archives are read by
preprocess/cifar.py and preprocess/idx.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.classes import class_wnid
from preprocess import cifar, idx
from preprocess.raw_image import RawImage

OFFICIAL_SPLIT = {"train": "train", "val": "test"}  # our split -> CIFAR's / MNIST's name


def iter_small_images(
    raw: Path,
    dataset: str,
    source: str,
    split: str,
    wanted: dict[str, frozenset[str]] | None,
    task_index: int,
    num_tasks: int,
) -> Iterator[RawImage]:
    """CIFAR / MNIST-family images as pixel arrays, in the official order (= key order)."""
    keys, labels, images, sources = read_small_split(raw, dataset, source)
    position = 0
    for key, label, pixels, where in zip(keys, labels, images, sources, strict=True):
        wnid = class_wnid(int(label))
        if wanted is not None and key not in wanted.get(wnid, ()):
            continue
        index, position = position, position + 1
        if index % num_tasks == task_index:
            yield RawImage(split, wnid, key, where, pixels=pixels)


def list_small_keys(
    raw: Path, dataset: str, split: str, classes: set[str]
) -> Iterator[tuple[str, str]]:
    """(wnid, key) of every image of a CIFAR / IDX `split` in `classes`."""
    keys, class_labels, _, _ = read_small_split(raw, dataset, split)
    for key, label in zip(keys, class_labels, strict=True):
        if class_wnid(int(label)) in classes:
            yield class_wnid(int(label)), key


def read_small_split(
    raw: Path, dataset: str, split: str
) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(keys, labels int64 [N], images uint8 [N, H, W(, 3)], sources) of a CIFAR / IDX split."""
    official = OFFICIAL_SPLIT[split]
    prefix = dataset.replace("-coarse", "").replace("-", "_")
    if dataset in cifar.CIFAR_FORMATS:
        found = find_cifar_archive(raw)
        data = cifar.read_cifar_split(found.path, dataset, official)
        images, labels = data.images, data.labels
        sources = [
            f"{found.path.name}:{member}:{name}"
            for member, name in zip(data.members, data.filenames, strict=True)
        ]
    else:
        folder = find_idx_files(raw)
        images, labels = idx.read_idx_split(folder, official)
        # no file names inside IDX files: the source is the file and the index in it
        sources = [
            f"{folder.name}:{idx.IDX_FILES[official][0]}[{index}]" for index in range(len(labels))
        ]
    keys = [f"{prefix}_{official}_{index:05d}" for index in range(len(labels))]
    return keys, labels, images, sources


@functools.lru_cache(maxsize=8)
def _small_class_names_cached(raw: Path, dataset: str, stamp: tuple) -> tuple[str, ...]:
    if dataset in cifar.CIFAR_FORMATS:
        return tuple(cifar.read_cifar_class_names(find_cifar_archive(raw).path, dataset))
    return idx.IDX_DATASETS[dataset].class_names


def small_class_names(raw: Path, dataset: str) -> tuple[str, ...]:
    """The class names in label order; CIFAR's meta is read once per archive version (a pass
    over the gzip stream that prepare would otherwise make for every call)."""
    path = find_cifar_archive(raw).path if dataset in cifar.CIFAR_FORMATS else raw
    stat = path.stat()
    return _small_class_names_cached(Path(raw), dataset, (stat.st_mtime_ns, stat.st_size))


def find_cifar_archive(raw: Path) -> cifar.FoundCifar:
    """The CIFAR archive or folder of RAW (detected before)."""
    found = cifar.find_cifar(raw)
    assert found is not None, f"{raw} was detected as a CIFAR layout"
    return found


def find_idx_files(raw: Path) -> Path:
    """The folder of RAW's IDX files (detected before)."""
    folder = idx.find_idx_folder(raw)
    assert folder is not None, f"{raw} was detected as an IDX layout"
    return folder
