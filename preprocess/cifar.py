"""CIFAR-10 and CIFAR-100 as downloaded: the Python-pickle tar.gz files, read in place.

    from preprocess.cifar import find_cifar, read_cifar_split
    found = find_cifar(Path("cifar-10-python.tar.gz"))          # ("cifar10", that path)
    split = read_cifar_split(found.path, "cifar10", "test")     # split.images: uint8 [N, 32, 32, 3]

The files, as torchvision's `datasets/cifar.py` (the reference reader) and the dataset's page
describe them:
- `cifar-10-python.tar.gz` holds `cifar-10-batches-py/` with `data_batch_1` .. `data_batch_5`
  (train, 10,000 images each), `test_batch` (10,000) and `batches.meta` (`label_names`);
- `cifar-100-python.tar.gz` holds `cifar-100-python/` with `train` (50,000), `test` (10,000) and
  `meta` (`fine_label_names`, `coarse_label_names`).
Each batch is a Python 2 pickle of a dict: `data` a uint8 array [N, 3072] whose rows are the
1024 red, 1024 green then 1024 blue values of a 32x32 image in row-major order; `labels`
(CIFAR-10) or `fine_labels` and `coarse_labels` (CIFAR-100), lists of N ints; `filenames` and
`batch_label`. Python 2 wrote the keys as byte strings: they are read with
`encoding="bytes"` and accepted as bytes or str (a batch re-saved under Python 3 has str keys).

The archive is streamed (tarfile "r|gz"): each wanted member is read into memory and
unpickled, nothing is written to disk. An extracted folder (torchvision's root holds
`cifar-10-batches-py/` after its download) is read the same way. Unpickling is restricted to
the three numpy globals an ndarray needs, so a tampered file cannot run code. A truncated or
corrupt archive, a missing batch, or counts that disagree are one UserError line.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from core.errors import UserError

CifarSplitName = Literal["train", "test"]
IMAGE_SIZE = 32  # pixels, square
ROW_LENGTH = 3 * IMAGE_SIZE * IMAGE_SIZE  # 3072 bytes per image: R plane, G plane, B plane


@dataclasses.dataclass(frozen=True)
class CifarFormat:
    """What one of the official archives holds."""

    title: str  # "CIFAR-10", for messages
    archive: str  # the download's file name
    folder: str  # the folder inside it (and torchvision's extracted root)
    train: tuple[str, ...]  # train batch members, in the official order
    test: tuple[str, ...]  # test batch members
    meta: str  # the member holding the class names
    names_key: str  # the class-name list in `meta`
    labels_key: str  # the label list in each batch


CIFAR10 = CifarFormat(
    "CIFAR-10",
    "cifar-10-python.tar.gz",
    "cifar-10-batches-py",
    tuple(f"data_batch_{number}" for number in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    "label_names",
    "labels",
)
CIFAR100 = CifarFormat(
    "CIFAR-100",
    "cifar-100-python.tar.gz",
    "cifar-100-python",
    ("train",),
    ("test",),
    "meta",
    "fine_label_names",
    "fine_labels",
)
# the same archive with the 20 superclasses as labels
CIFAR100_COARSE = dataclasses.replace(
    CIFAR100,
    title="CIFAR-100 (coarse labels)",
    names_key="coarse_label_names",
    labels_key="coarse_labels",
)
CIFAR_FORMATS: dict[str, CifarFormat] = {
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "cifar100-coarse": CIFAR100_COARSE,
}


@dataclasses.dataclass(frozen=True)
class FoundCifar:
    family: str  # "cifar10" or "cifar100" (which archive; the coarse labels are a choice)
    path: Path  # the .tar.gz, or the extracted folder


@dataclasses.dataclass(frozen=True)
class CifarSplit:
    images: np.ndarray = dataclasses.field(repr=False)  # uint8 [N, 32, 32, 3], RGB
    labels: np.ndarray = dataclasses.field(repr=False)  # int64 [N], index into class_names
    filenames: tuple[str, ...]  # the original file names, e.g. "domestic_cat_s_000907.png"
    members: tuple[str, ...]  # member (batch) of each image, for messages and provenance


def find_cifar(raw: Path) -> FoundCifar | None:
    """The CIFAR download RAW is or holds: the archive itself, a folder holding it, or the
    extracted folder (or a folder holding that); None when RAW is none of these."""
    raw = Path(raw)
    for family in ("cifar10", "cifar100"):
        cifar = CIFAR_FORMATS[family]
        if raw.is_file() and raw.name == cifar.archive:
            return FoundCifar(family, raw)
        if raw.is_dir() and raw.name == cifar.folder and (raw / cifar.meta).is_file():
            return FoundCifar(family, raw)
        if (raw / cifar.archive).is_file():
            return FoundCifar(family, raw / cifar.archive)
        if (raw / cifar.folder / cifar.meta).is_file():
            return FoundCifar(family, raw / cifar.folder)
    return None


def read_cifar_class_names(path: Path, dataset: str) -> list[str]:
    """The class names in label order, from `batches.meta` / `meta`."""
    cifar = CIFAR_FORMATS[dataset]
    meta = next(iter(_read_members(Path(path), cifar, (cifar.meta,)).values()))
    return _class_names(meta, cifar, Path(path).name)


def read_cifar_split(path: Path, dataset: str, split: CifarSplitName) -> CifarSplit:
    """Every image and label of the official `split` ("train" or "test"), in the official order
    (batch by batch, row by row: the order torchvision's CIFAR10/CIFAR100 index)."""
    cifar = CIFAR_FORMATS[dataset]
    path = Path(path)
    wanted = cifar.train if split == "train" else cifar.test
    pickles = _read_members(path, cifar, (cifar.meta, *wanted))
    names = _class_names(pickles[cifar.meta], cifar, path.name)
    images, labels, filenames, members = [], [], [], []
    for member in wanted:  # now: in the official order, whatever order the tar stores them in
        batch = pickles[member]
        where = f"{path.name}: {member}"
        data = _field(batch, "data", where)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise UserError(
                f"{where}: 'data' is {_describe(data)}, expected a uint8 array [N, {ROW_LENGTH}]: "
                f"not an official {cifar.title} batch; re-download {cifar.archive}"
            )
        if data.shape[1] != ROW_LENGTH:
            raise UserError(
                f"{where}: rows of {data.shape[1]} bytes, expected {ROW_LENGTH} "
                f"(3 x 32 x 32): not an official {cifar.title} batch; re-download {cifar.archive}"
            )
        batch_labels = list(_field(batch, cifar.labels_key, where))
        batch_names = [_text(name) for name in batch.get("filenames", [])] or [
            f"{member}_{row}" for row in range(len(data))
        ]
        if not len(data) == len(batch_labels) == len(batch_names):
            raise UserError(
                f"{where}: {len(data)} images but {len(batch_labels)} labels and "
                f"{len(batch_names)} file names: the batch is corrupt; re-download {cifar.archive}"
            )
        bad = [label for label in batch_labels if not 0 <= int(label) < len(names)]
        if bad:
            raise UserError(
                f"{where}: label {bad[0]} is outside 0..{len(names) - 1} "
                f"({len(names)} classes in {cifar.meta}): re-download {cifar.archive}"
            )
        # [N, 3072] = [N, 3 planes, 32 rows, 32 cols] -> [N, 32, 32, 3], as torchvision does
        images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
        labels.extend(int(label) for label in batch_labels)
        filenames.extend(batch_names)
        members.extend([member] * len(data))
    return CifarSplit(
        np.ascontiguousarray(np.concatenate(images)),
        np.asarray(labels, dtype=np.int64),
        tuple(filenames),
        tuple(members),
    )


# The only globals an official batch refers to: what an ndarray needs (plus how Python 3 pickles
# bytes under protocol 2, for batches re-saved since).
PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),  # Python 2's numpy, as in the originals
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]  # numpy's own, whatever version


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refers to {module}.{name}, which a CIFAR batch never does"
            )
        if name == "_reconstruct":
            return _RECONSTRUCT  # not numpy.core: numpy 2 warns on importing that name
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str, cifar: CifarFormat) -> dict[str, Any]:
    try:
        value = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise UserError(
            f"{where}: not a readable {cifar.title} pickle ({err}): re-download {cifar.archive}"
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"{where}: holds a {type(value).__name__}, expected the dict of an official "
            f"{cifar.title} batch: re-download {cifar.archive}"
        )
    return {_text(key): item for key, item in value.items()}


def _read_members(path: Path, cifar: CifarFormat, wanted: tuple[str, ...]) -> dict[str, dict]:
    """member name -> its unpickled dict, from the archive (streamed) or the extracted folder."""
    found: dict[str, dict] = {}
    if path.is_dir():
        for member in wanted:
            file = path / member
            if not file.is_file():
                raise UserError(
                    f"{path} has no {member}: expected {', '.join(_all_members(cifar))} "
                    f"(the extracted {cifar.archive}); re-download it"
                )
            found[member] = _unpickle(file.read_bytes(), f"{path.name}/{member}", cifar)
        return found
    for member, data in _stream_members(path, cifar, set(wanted)):
        found[member] = _unpickle(data, f"{path.name}: {member}", cifar)
    missing = [member for member in wanted if member not in found]
    if missing:
        raise UserError(
            f"{path.name} has no {cifar.folder}/{missing[0]}: expected "
            f"{', '.join(_all_members(cifar))} inside (the official {cifar.title} download); "
            f"re-download {cifar.archive}"
        )
    return found


def _stream_members(
    path: Path, cifar: CifarFormat, wanted: set[str]
) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the wanted members, in archive order, in one sequential pass."""
    left = set(wanted)
    try:
        with tarfile.open(path, "r|gz") as archive:
            for member in archive:
                name = PurePosixPath(member.name)
                if not member.isfile() or name.parent.name != cifar.folder or name.name not in left:
                    continue
                handle = archive.extractfile(member)
                assert handle is not None, f"regular member {member.name} has no data"
                data = handle.read()
                if len(data) != member.size:
                    raise EOFError(f"{member.name} is cut short")
                left.discard(name.name)
                yield name.name, data
                if not left:
                    return  # the rest of the archive is not needed
    except (tarfile.TarError, OSError, EOFError) as err:  # gzip CRC/truncation, tar headers
        raise UserError(
            f"cannot read {path}: truncated or corrupt ({err}): re-download {cifar.archive}"
        ) from None


def _class_names(meta: dict, cifar: CifarFormat, where: str) -> list[str]:
    names = [_text(name) for name in _field(meta, cifar.names_key, f"{where}: {cifar.meta}")]
    if not names or len(set(names)) != len(names):
        raise UserError(
            f"{where}: {cifar.meta} lists {len(names)} class names ({len(set(names))} distinct), "
            f"expected one per class: re-download {cifar.archive}"
        )
    return names


def _field(batch: dict, key: str, where: str) -> Any:
    if key not in batch:
        raise UserError(
            f"{where}: no {key!r} entry (it has {', '.join(sorted(batch))}): "
            "not an official CIFAR file; re-download it"
        )
    return batch[key]


def _all_members(cifar: CifarFormat) -> tuple[str, ...]:
    return (*cifar.train, *cifar.test, cifar.meta)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {list(value.shape)}"
    return f"a {type(value).__name__}"
