"""Write images in the exact formats CIFAR and the MNIST family ship in (for tests and the demo).

    from tools.official_formats import write_cifar_archive, write_idx_files
    write_cifar_archive(path, "cifar10", train=(images, labels), test=(images, labels))
    write_idx_files(folder, train=(images, labels), test=(images, labels))

CIFAR: `cifar-10-python.tar.gz` with `cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta, readme.html}`; `cifar-100-python.tar.gz` with `cifar-100-python/{train, test,
meta}`. Each member is what the originals are: a Python 2 cPickle (protocol 2) of a dict with
byte-string keys (`b"data"` a C-ordered uint8 [N, 3072] array of R, G, B planes, `b"labels"` or
`b"fine_labels"` + `b"coarse_labels"`, `b"filenames"`, `b"batch_label"`), arrays reduced
through `numpy.core.multiarray._reconstruct` as Python 2's numpy wrote them. Python 3's pickler
would write bytes as `_codecs.encode(...)` calls, which Python 2 never did; `_Python2Pickler`
writes them as Python 2 strings (SHORT_BINSTRING / BINSTRING), so `pickle.load(f,
encoding="bytes")` gives bytes keys and torchvision's `encoding="latin1"` gives str keys, as
with the real files. tests/preprocess/test_small_datasets.py checks that torchvision's CIFAR10,
CIFAR100 and MNIST classes read what this module writes.

IDX: `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`, big-endian magic 2051 (images: count,
rows, cols) and 2049 (labels: count), then the bytes; gzip with mtime 0, so the same input gives
the same files.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
)
# The 100 fine classes, in label order (alphabetical, as in the real `meta`).
_FINE_NAMES_TEXT = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach
couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"""
CIFAR100_FINE_NAMES = tuple(_FINE_NAMES_TEXT.split())
assert len(CIFAR100_FINE_NAMES) == 100 and sorted(CIFAR100_FINE_NAMES) == list(CIFAR100_FINE_NAMES)

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MEMBER_ORDER = (
    "data_batch_4",
    "readme.html",
    "test_batch",
    "data_batch_3",
    "batches.meta",
    "data_batch_2",
    "data_batch_5",
    "data_batch_1",
)
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

Split = tuple[np.ndarray, np.ndarray]  # (uint8 images [N, H, W(, 3)], int labels [N])


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is open
    """Protocol 2 as Python 2 wrote it: bytes are Python 2 `str` (SHORT_BINSTRING/BINSTRING)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, value: bytes) -> None:
        if len(value) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(value)]) + value)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(value)) + value)
        self.memoize(value)

    dispatch[bytes] = save_python2_str


def python2_pickle(value: object) -> bytes:
    """`value` pickled as Python 2's cPickle.dump(value, f, 2) would have written it."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(value)
    # numpy 2 names its reconstructor numpy._core.multiarray; Python 2's numpy had numpy.core
    return buffer.getvalue().replace(
        b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    )


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32, 3] → the batches' uint8 [N, 3072] rows (R plane, G plane, B plane)."""
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), images.shape
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_cifar_archive(
    path: Path,
    family: str,
    *,
    train: Split,
    test: Split,
    coarse: Sequence[int] | None = None,
    coarse_test: Sequence[int] | None = None,
) -> Path:
    """`cifar-10-python.tar.gz` (family "cifar10") or `cifar-100-python.tar.gz` ("cifar100").

    Args:
        train, test: (images uint8 [N, 32, 32, 3], labels); CIFAR-100's are the fine labels.
        coarse, coarse_test: CIFAR-100's coarse labels (default: fine label // 5).
    """
    path = Path(path)
    members: list[tuple[str, bytes]] = []
    if family == "cifar10":
        folder = "cifar-10-batches-py"
        batches = np.array_split(np.arange(len(train[1])), 5)
        for number, rows in enumerate(batches, start=1):
            members.append(
                (
                    f"data_batch_{number}",
                    _cifar10_batch(train, rows, f"training batch {number} of 5"),
                )
            )
        members.append(
            ("test_batch", _cifar10_batch(test, np.arange(len(test[1])), "testing batch 1 of 1"))
        )
        meta = {
            b"num_cases_per_batch": max(len(rows) for rows in batches),
            b"label_names": [name.encode() for name in CIFAR10_NAMES],
            b"num_vis": 3072,
        }
        members.append(("batches.meta", python2_pickle(meta)))
        members.append(("readme.html", b"<html>fixture</html>\n"))
        # not the sorted order, as in the real archive: readers must not rely on member order
        members.sort(key=lambda member: CIFAR10_MEMBER_ORDER.index(member[0]))
    elif family == "cifar100":
        folder = "cifar-100-python"
        for name, (split, batch_coarse) in {
            "train": (train, coarse),
            "test": (test, coarse_test),
        }.items():
            images, labels = split
            fine = [int(label) for label in labels]
            members.append(
                (
                    name,
                    python2_pickle(
                        {
                            b"filenames": [_file_name(name, row) for row in range(len(fine))],
                            b"batch_label": f"{name}ing batch 1 of 1".encode(),
                            b"fine_labels": fine,
                            b"coarse_labels": [
                                int(c) for c in (batch_coarse or [f // 5 for f in fine])
                            ],
                            b"data": cifar_rows(images),
                        }
                    ),
                )
            )
        meta = {
            b"fine_label_names": [name.encode() for name in CIFAR100_FINE_NAMES],
            b"coarse_label_names": [name.encode() for name in CIFAR100_COARSE_NAMES],
        }
        members.append(("meta", python2_pickle(meta)))
    else:
        raise ValueError(f"family {family!r}: expected cifar10 or cifar100")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        directory = tarfile.TarInfo(folder)
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, 1_244_000_000
        archive.addfile(directory)
        for name, data in members:
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_244_000_000
            archive.addfile(info, io.BytesIO(data))
    return path


def write_idx_files(folder: Path, *, train: Split, test: Split) -> Path:
    """The four MNIST-format `.gz` files in `folder` (created); returns `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in {"train": train, "test": test}.items():
        images_name, labels_name = IDX_NAMES[split]
        assert images.dtype == np.uint8 and images.ndim == 3, images.shape
        count, rows, cols = images.shape
        header = struct.pack(">IIII", 2051, count, rows, cols)
        (folder / images_name).write_bytes(gzip.compress(header + images.tobytes(), mtime=0))
        labels = np.asarray(labels, dtype=np.uint8)
        header = struct.pack(">II", 2049, len(labels))
        (folder / labels_name).write_bytes(gzip.compress(header + labels.tobytes(), mtime=0))
    return folder


def _cifar10_batch(split: Split, rows: np.ndarray, batch_label: str) -> bytes:
    images, labels = split
    return python2_pickle(
        {
            b"batch_label": batch_label.encode(),
            b"labels": [int(labels[row]) for row in rows],
            b"data": cifar_rows(images[rows]),
            b"filenames": [_file_name("cifar10", int(row)) for row in rows],
        }
    )


def _file_name(prefix: str, row: int) -> bytes:
    return f"{prefix}_s_{row:06d}.png".encode()
