"""MNIST, Fashion-MNIST and KMNIST as downloaded: the four IDX files, gzipped or not.

    from preprocess.idx import find_idx_folder, identify_idx_dataset, read_idx_split
    folder = find_idx_folder(Path("raw/"))                   # the folder holding the four files
    images, labels = read_idx_split(folder, "test")          # uint8 [N, 28, 28], int64 [N]

The format (LeCun's MNIST page; torchvision's `datasets/mnist.py` reads it the same way): a
big-endian header, then the values row-major.
- `*-images-idx3-ubyte`: magic number 2051 (0x00000803: unsigned bytes, 3 dimensions), then
  the image count, rows and columns as 32-bit ints, then count x rows x cols pixel bytes.
- `*-labels-idx1-ubyte`: magic number 2049 (0x00000801: unsigned bytes, 1 dimension), then the
  label count, then one byte per label.
Files: `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
`t10k-labels-idx1-ubyte.gz`. Fashion-MNIST and KMNIST ship exactly the same names, so the
dataset is told apart by the md5 of the genuine downloads (torchvision's `resources` lists),
else by torchvision's folder (`ROOT/FashionMNIST/raw/`), else by `--dataset`.

Each file is read into memory once (47 MB for the largest), never extracted to disk. A wrong
magic number, a header whose count disagrees with the file's length or with the other file, a
label outside 0..9 or a damaged gzip stream is one UserError line.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from core.errors import UserError

IdxSplitName = Literal["train", "test"]
IMAGES_MAGIC = 2051  # 0x00000803
LABELS_MAGIC = 2049  # 0x00000801
IDX_FILES: dict[str, tuple[str, str]] = {  # split -> (images, labels), without ".gz"
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclasses.dataclass(frozen=True)
class IdxDataset:
    title: str  # for messages and docs
    torchvision_folder: str  # torchvision keeps the files in ROOT/<this>/raw/
    class_names: tuple[str, ...]  # label order
    train_images_md5: str  # md5 of the genuine train-images-idx3-ubyte.gz


# Class names and md5s as torchvision 0.28's datasets/mnist.py has them (MNIST, FashionMNIST,
# KMNIST: `classes` and `resources`).
IDX_DATASETS: dict[str, IdxDataset] = {
    "mnist": IdxDataset(
        "MNIST",
        "MNIST",
        (
            "0 - zero",
            "1 - one",
            "2 - two",
            "3 - three",
            "4 - four",
            "5 - five",
            "6 - six",
            "7 - seven",
            "8 - eight",
            "9 - nine",
        ),
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "fashion-mnist": IdxDataset(
        "Fashion-MNIST",
        "FashionMNIST",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    "kmnist": IdxDataset(
        "KMNIST",
        "KMNIST",
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),  # romanized hiragana
        "bdb82020997e1d708af4cf47b453dcf7",
    ),
}
NUM_CLASSES = 10  # all three


def idx_file(folder: Path, name: str) -> Path | None:
    """`name`.gz or `name` in `folder` (the download, or what torchvision extracted)."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def find_idx_folder(raw: Path) -> Path | None:
    """The folder holding the IDX files: RAW itself, or torchvision's ROOT/<Dataset>/raw/."""
    raw = Path(raw)
    if not raw.is_dir():
        return None
    candidates = [raw] + [raw / info.torchvision_folder / "raw" for info in IDX_DATASETS.values()]
    found = [folder for folder in candidates if idx_file(folder, IDX_FILES["train"][0])]
    found = found or [folder for folder in candidates if idx_file(folder, IDX_FILES["test"][0])]
    if len(found) > 1:
        raise UserError(
            f"{raw} holds IDX files in {len(found)} places ({', '.join(map(str, found))}): "
            "pass the one folder you mean"
        )
    return found[0] if found else None


def identify_idx_dataset(folder: Path) -> str | None:
    """Which dataset the files are: by the md5 of the genuine train images, else by torchvision's
    folder name; None when neither tells."""
    folder = Path(folder)
    images = idx_file(folder, IDX_FILES["train"][0])
    if images is not None and images.suffix == ".gz":
        digest = hashlib.md5(images.read_bytes(), usedforsecurity=False).hexdigest()
        for name, info in IDX_DATASETS.items():
            if digest == info.train_images_md5:
                return name
    if folder.name == "raw":
        for name, info in IDX_DATASETS.items():
            if folder.parent.name == info.torchvision_folder:
                return name
    return None


def read_idx_split(folder: Path, split: IdxSplitName) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, rows, cols], labels int64 [N]) of the official `split`, in file order."""
    images_name, labels_name = IDX_FILES[split]
    images_path, labels_path = idx_file(folder, images_name), idx_file(folder, labels_name)
    for name, path in ((images_name, images_path), (labels_name, labels_path)):
        if path is None:
            raise UserError(
                f"{folder} has no {name}.gz (nor {name}): expected the four IDX files "
                f"{', '.join(f'{n}.gz' for pair in IDX_FILES.values() for n in pair)}"
            )
    assert images_path is not None and labels_path is not None
    images = _read_idx(images_path, IMAGES_MAGIC, dimensions=3)
    labels = _read_idx(labels_path, LABELS_MAGIC, dimensions=1)
    if len(images) != len(labels):
        raise UserError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds "
            f"{len(labels)} labels: the files do not belong together; re-download them"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise UserError(
            f"{labels_path.name}: label {int(labels.max())} is outside 0..{NUM_CLASSES - 1}: "
            "not an MNIST-family label file; re-download it"
        )
    return images, labels.astype(np.int64)


def _read_idx(path: Path, magic: int, dimensions: int) -> np.ndarray:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise UserError(
            f"cannot read {path}: truncated or corrupt ({err}): re-download it"
        ) from None
    header_length = 4 * (1 + dimensions)
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise UserError(
            f"{path.name}: magic number {found}, expected {magic} (IDX {kind}, unsigned bytes, "
            f"{dimensions} dimension{'s' if dimensions > 1 else ''}): not an MNIST-format "
            f"{kind} file (swapped names?); re-download it"
        )
    if len(data) < header_length:
        raise UserError(f"{path.name}: {len(data)} bytes, shorter than its header: re-download it")
    shape = [int.from_bytes(data[4 * i : 4 * i + 4], "big") for i in range(1, 1 + dimensions)]
    expected = header_length + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(
            f"{path.name}: header says {' x '.join(map(str, shape))} = {expected - header_length} "
            f"bytes of data, but the file holds {len(data) - header_length}: "
            "truncated or corrupt; re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_length).reshape(shape)
