"""Class folders on disk: the listing both folder-reading backends (folder, DALI over folders) use.

    classes, paths, labels = list_class_folders(Path("DST/folders/train"))
    table = PathTable(paths)   # what DataLoader workers hold instead of a list of str

Files are listed sorted within each class folder, and class folders in sorted (class-index)
order, so every backend and every rank agree on which index is which file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from core.classes import folder_classes
from core.errors import UserError
from core.imagefiles import IMAGE_SUFFIXES
from core.shard_format import MANIFEST_NAME
from pipeline.errors import LoaderError

# the suffixes preprocessing reads (lower case): one definition, so a folder prepare accepted loads
# here too
IMAGE_EXTENSIONS = tuple(sorted(IMAGE_SUFFIXES))


def class_folder_names(directory: Path) -> list[str]:
    """The sorted class folder names of DIR; none, or an unreadable DIR, is a LoaderError."""
    try:
        found = folder_classes(directory)
    except UserError as err:
        raise LoaderError(str(err)) from err
    if not found:
        raise LoaderError(
            f"{directory} has no class folders: expected {directory}/nXXXXXXXX/*.JPEG"
        )
    return found


def list_class_folders(
    directory: Path, classes: list[str] | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, file paths, labels) of DIR/<class>/<file>, files sorted within each class.

    With `classes` given (the train split's), labels index into it and a folder outside it is an
    error.
    """
    if (directory / MANIFEST_NAME).is_file():
        raise LoaderError(
            f"{directory} holds WebDataset shards (manifest.json), not class folders: "
            f"use data.backend=wds or data.backend=dali, or point at DST/folders/<split>"
        )
    found = class_folder_names(directory)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise LoaderError(
                f"{directory} has class folders the train split lacks "
                f"({', '.join(unknown[:3])}...): train and val must come from the same class list"
            )
    class_index = {name: index for index, name in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for name in found:
        folder = os.path.join(directory, name)
        with os.scandir(folder) as entries:
            files = sorted(
                entry.name
                for entry in entries
                if entry.is_file()
                and not entry.name.startswith(".")
                and entry.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        paths.extend(os.path.join(folder, file) for file in files)
        labels.extend([class_index[name]] * len(files))
    if not paths:
        raise LoaderError(
            f"{directory} has class folders but no images in them (none of "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    return classes, paths, np.asarray(labels, dtype=np.int64)


class PathTable:
    """A read-only list of file paths as one bytes blob + int64 offsets (two objects, not N str).

    DataLoader workers are forked: a Python list of 1.28M str would be copied page by page into
    every worker as reading it touches each str's reference count (pytorch issue 13246), about
    160 MB per worker on ImageNet. One blob and one numpy array are never written to.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        encoded = [os.fsencode(path) for path in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=self.offsets[1:])
        self.blob = b"".join(encoded)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"path index {index} out of range for {len(self)} paths")
        index %= len(self)
        return os.fsdecode(self.blob[int(self.offsets[index]) : int(self.offsets[index + 1])])

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))
