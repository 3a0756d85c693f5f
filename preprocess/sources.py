"""Raw ImageNet as a stream of (split, WNID, key, bytes), from any of the three layouts users hold.

    from preprocess.sources import iter_raw_images, raw_classes
    for image in iter_raw_images(Path("RAW"), "train", task_index=3, num_tasks=10):
        data = image.read()   # the original file's bytes; image.wnid, image.key ("n01440764_10026")

Layouts (`detect_layout`):
- "ilsvrc-tars": RAW/ILSVRC2012_img_train.tar, a tar of 1000 per-class tars nXXXXXXXX.tar each
  holding nXXXXXXXX_NNNN.JPEG; RAW/ILSVRC2012_img_val.tar, 50,000 flat JPEGs; val labels from
  RAW/ILSVRC2012_devkit_t12.tar.gz (or LOC_val_solution.csv / val.txt, or `labels`).
- "kaggle": RAW/ILSVRC/Data/CLS-LOC/train/nXXXXXXXX/*.JPEG, RAW/ILSVRC/Data/CLS-LOC/val/*.JPEG
  (flat), RAW/LOC_val_solution.csv, RAW/LOC_synset_mapping.txt.
- "folders": RAW/train/nXXXXXXXX/*, RAW/val/nXXXXXXXX/* (sorted), or RAW/val flat + labels.

Tars are read, never extracted: one sequential pass (tarfile stream mode "r|*", the nested
per-class tar opened in stream mode from the outer member's file object). When a Slurm array
splits the work (num_tasks > 1) and the tar is a regular file, the outer tar is opened
seekable instead ("r:*"), so each task reads the headers of all members but the bytes of its
own members only, instead of every task reading all 138 GB. Members with absolute paths or
`..` are refused (UserError naming the member); links, folders and devices are skipped.

Slices: train from tars by per-class tar index, everything else by position in the sorted
listing; item i belongs to task i % num_tasks. Slices are disjoint, their union is everything,
and the order within a split is deterministic (tar order for tars, sorted for folders).

The other datasets (`DATASETS`), as downloaded, go through the same stream:
- "cifar": cifar-10-python.tar.gz / cifar-100-python.tar.gz (RAW is the file, a folder holding
  it, or the extracted folder): preprocess/cifar.py;
- "idx": MNIST, Fashion-MNIST or KMNIST's four IDX files: preprocess/idx.py.
Their test split is "val". They have no WNIDs, so class k gets the stable WNID-shaped id
`class_wnid(k)` = "n%08d" (sorted order = label order, so class index = the official label),
and the real names come from the archive's meta (CIFAR) or the built-in lists (IDX). Keys are
"{dataset}_{official split}_{index:05d}", the index into the official arrays (what torchvision's
dataset classes index). Their images travel as pixel arrays (`RawImage.pixels`), not files.

Subsets (preprocess/subsets.py): `select_images` lists the keys of the chosen classes (names
only: tar headers, the label file, a directory listing) and picks the images; `iter_raw_images`
with that `Selection` then reads only those. From the ILSVRC tars it opens the outer tar
seekable, so the per-class tars of classes not chosen are skipped without reading a byte of
them, and of a chosen class tar only the chosen members' bytes are read.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import numpy as np
from PIL import Image

from core.classes import (
    class_wnid,
    find_synset_mapping,
    folder_classes,
    is_wnid,
    read_synset_mapping,
)
from core.errors import UserError
from core.fileio import list_dir as _list_dir
from core.imagefiles import IMAGE_SUFFIXES
from preprocess import cifar, idx
from preprocess.labels import (
    detect_label_format,
    devkit_class_names,
    find_label_source,
    read_val_labels,
    val_stem,
)
from preprocess.shard_plan import sample_key  # the key a shard stores: what a subset records
from preprocess.subsets import Subset, selection_record

logger = logging.getLogger(__name__)

Layout = Literal["ilsvrc-tars", "kaggle", "folders", "cifar", "idx"]
IMAGENET_LAYOUTS = ("ilsvrc-tars", "kaggle", "folders")
# what `prepare --dataset` accepts; "imagenet" covers the three ImageNet layouts
DATASETS = ("imagenet", *cifar.CIFAR_FORMATS, *idx.IDX_DATASETS)
SPLITS = ("train", "val")
OFFICIAL_SPLIT = {"train": "train", "val": "test"}  # our split -> CIFAR's / MNIST's name
TRAIN_TAR_NAME = "ILSVRC2012_img_train.tar"
VAL_TAR_NAME = "ILSVRC2012_img_val.tar"
KAGGLE_DATA_DIR = Path("ILSVRC") / "Data" / "CLS-LOC"
KAGGLE_LABELS_NAME = "LOC_val_solution.csv"


@dataclasses.dataclass(frozen=True)
class RawImage:
    split: str  # "train" or "val"
    wnid: str  # the class, e.g. "n01440764"
    key: str  # file stem, unique within the split, e.g. "n01440764_10026"
    source: str  # where it came from, for messages: a path or "TAR:MEMBER[/INNER]"
    path: Path | None = None  # the file, for folder layouts
    data: bytes | None = dataclasses.field(default=None, repr=False)  # the bytes, for tar members
    # uint8 [H, W, 3] RGB or [H, W] gray, for datasets that ship arrays (CIFAR, MNIST)
    pixels: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def read(self) -> bytes:
        """The original file's bytes (for pixel arrays: a lossless PNG of them)."""
        if self.data is not None:
            return self.data
        if self.pixels is not None:
            buffer = io.BytesIO()
            Image.fromarray(self.pixels).save(buffer, "PNG")
            return buffer.getvalue()
        assert self.path is not None, f"RawImage {self.key} has neither data nor path"
        return self.path.read_bytes()


@dataclasses.dataclass(frozen=True)
class Selection:
    """The images a subset gives one output split, chosen from names alone (`select_images`)."""

    split: str  # the output split, "train" or "val"
    source_split: str  # the raw split its images come from
    keys: dict[str, frozenset[str]]  # chosen WNID -> chosen keys of that class
    record: dict[str, Any]  # what the split's manifest records (subsets.selection_record)

    @property
    def num_images(self) -> int:
        return sum(len(keys) for keys in self.keys.values())


def detect_layout(raw: Path) -> Layout:
    """Which raw layout RAW holds; UserError naming what was looked for when none."""
    raw = Path(raw)
    if raw.is_file() and cifar.find_cifar(raw) is not None:
        return "cifar"
    if not raw.is_dir():
        raise UserError(
            f"RAW {raw} is not a directory: expected the folder holding the raw ImageNet download "
            f"(or {cifar.CIFAR10.archive} / {cifar.CIFAR100.archive} itself)"
        )
    if (raw / TRAIN_TAR_NAME).is_file() or (raw / VAL_TAR_NAME).is_file():
        return "ilsvrc-tars"
    if (raw / KAGGLE_DATA_DIR).is_dir():
        return "kaggle"
    if cifar.find_cifar(raw) is not None:
        return "cifar"
    if idx.find_idx_folder(raw) is not None:
        return "idx"
    if (raw / "train").is_dir() or (raw / "val").is_dir():
        return "folders"
    raise UserError(
        f"{raw} holds no raw dataset: "
        f"looked for {TRAIN_TAR_NAME} / {VAL_TAR_NAME} (ILSVRC2012 tars), "
        f"{KAGGLE_DATA_DIR}/ (Kaggle download), train/ or val/ class folders, "
        f"{cifar.CIFAR10.archive} / {cifar.CIFAR100.archive} and "
        f"{idx.IDX_FILES['train'][0]}.gz (MNIST, Fashion-MNIST, KMNIST)"
    )


def detect_dataset(raw: Path, dataset: str | None = None) -> str:
    """Which of `DATASETS` RAW holds; `dataset` (prepare --dataset) is checked against the files,
    and chooses where the files cannot tell (CIFAR-100's coarse labels, an unknown IDX set)."""
    raw = Path(raw)
    if dataset is not None and dataset not in DATASETS:
        raise UserError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    layout = detect_layout(raw)
    if layout in IMAGENET_LAYOUTS:
        found = "imagenet"
    elif layout == "cifar":
        family = _cifar(raw).family
        found = dataset if family == "cifar100" and dataset == "cifar100-coarse" else family
    else:
        found = dataset if dataset in idx.IDX_DATASETS else idx.identify_idx_dataset(_idx(raw))
        if found is None:
            raise UserError(
                f"{_idx(raw)} holds MNIST-format IDX files, but not the genuine MNIST, "
                "Fashion-MNIST or KMNIST downloads (their md5 differs) nor torchvision's "
                "ROOT/<Dataset>/raw/ folder: say which with --dataset "
                f"{' | '.join(idx.IDX_DATASETS)}"
            )
    if dataset is not None and dataset != found:
        raise UserError(
            f"--dataset {dataset} but {raw} holds {found} ({layout} layout): "
            f"pass --dataset {found}, or the folder that holds {dataset}"
        )
    return found


def is_small_dataset(dataset: str) -> bool:
    """CIFAR and the MNIST family: arrays of small images rather than image files."""
    return dataset != "imagenet"


def native_image_size(dataset: str) -> int | None:
    """The short side the dataset's images have (None for ImageNet, whose sizes vary)."""
    if dataset in cifar.CIFAR_FORMATS:
        return cifar.IMAGE_SIZE
    return 28 if dataset in idx.IDX_DATASETS else None


def iter_raw_images(
    raw: Path,
    split: str,
    *,
    labels: Path | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    dataset: str | None = None,
    selection: Selection | None = None,
) -> Iterator[RawImage]:
    """Every image of `split` in this task's slice, in a deterministic order.

    Args:
        labels: val labels (any form preprocess.labels reads); default: found in RAW.
        task_index, num_tasks: this task's slice; item i belongs to task i % num_tasks.
        dataset: one of DATASETS (prepare --dataset); default: detected from RAW.
        selection: only these images (`select_images`), read from its source split; the
            images still come out as `split`.
    """
    raw = Path(raw)
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {SPLITS}")
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise UserError(
            f"task index {task_index} of {num_tasks} tasks: expected 0 <= task index < num tasks"
        )
    assert selection is None or selection.split == split, "a selection is for one output split"
    source = selection.source_split if selection is not None else split
    wanted = selection.keys if selection is not None else None
    dataset = detect_dataset(raw, dataset)
    layout = detect_layout(raw)
    if is_small_dataset(dataset):
        return _iter_small(raw, dataset, source, split, wanted, task_index, num_tasks)
    if layout == "ilsvrc-tars":
        tar_path = raw / (TRAIN_TAR_NAME if source == "train" else VAL_TAR_NAME)
        if not tar_path.is_file():
            raise UserError(
                f"{raw} has no {tar_path.name}: the {source} split of the ILSVRC2012 tars is "
                "missing"
            )
        if source == "train":
            return _iter_train_tar(tar_path, task_index, num_tasks, split, wanted)
        return _iter_val_tar(
            tar_path, _load_labels(raw, labels), task_index, num_tasks, split, wanted
        )
    entries = _folder_entries(raw, layout, source, labels)
    if wanted is not None:
        entries = [entry for entry in entries if entry[1] in wanted.get(entry[0], ())]
    return _iter_entries(entries, split, task_index, num_tasks)


def select_images(
    raw: Path,
    split: str,
    subset: Subset,
    *,
    labels: Path | None = None,
    dataset: str | None = None,
) -> Selection:
    """The images `subset` gives output `split`, chosen from names only (no image is read)."""
    raw = Path(raw)
    dataset = detect_dataset(raw, dataset)
    every_class = raw_classes(raw, dataset)
    chosen = subset.choose_classes(every_class)
    source = subset.source_split(split)
    available = {wnid: [] for wnid in chosen}
    for wnid, key in _list_keys(raw, dataset, source, set(chosen), labels):
        available[wnid].append(key)
    keys = {wnid: frozenset(subset.take(split, names)) for wnid, names in available.items()}
    record = selection_record(
        subset,
        split,
        every_class,
        {wnid: len(names) for wnid, names in available.items()},
        (sample_key(key) for names in keys.values() for key in names),
    )
    return Selection(split, source, keys, record)


def raw_classes(raw: Path, dataset: str | None = None) -> list[str]:
    """The sorted WNIDs of RAW: class index = position. Taken from the train split where there is
    one."""
    raw = Path(raw)
    dataset = detect_dataset(raw, dataset)
    if is_small_dataset(dataset):
        return [class_wnid(index) for index in range(len(_small_class_names(raw, dataset)))]
    layout = detect_layout(raw)
    if layout == "ilsvrc-tars" and (raw / TRAIN_TAR_NAME).is_file():
        return sorted(_train_tar_classes(raw / TRAIN_TAR_NAME))
    if layout != "ilsvrc-tars":
        train_dir = raw / KAGGLE_DATA_DIR / "train" if layout == "kaggle" else raw / "train"
        if train_dir.is_dir():
            classes = folder_classes(train_dir)
            if classes:
                return classes
    # no train split: the class list that came with the download, else the val labels
    mapping = find_synset_mapping(raw, parents=0)
    if mapping is not None:
        return sorted(read_synset_mapping(mapping))
    source = find_label_source(raw)
    if source is not None and detect_label_format(source)[0].startswith("devkit"):
        return list(devkit_class_names(source))
    val_dir = raw / KAGGLE_DATA_DIR / "val" if layout == "kaggle" else raw / "val"
    classes = set(folder_classes(val_dir)) if val_dir.is_dir() else set()
    if source is not None:
        classes |= set(read_val_labels(source).values())
    if not classes:
        raise UserError(
            f"cannot tell the classes of {raw}: "
            "no train split, LOC_synset_mapping.txt, devkit or val labels"
        )
    return sorted(classes)


def raw_class_names(raw: Path, dataset: str | None = None) -> dict[str, str]:
    """WNID → words for the classes of RAW, from LOC_synset_mapping.txt or the devkit (CIFAR: its
    meta; MNIST family: the built-in names); {} when neither."""
    raw = Path(raw)
    dataset = detect_dataset(raw, dataset)
    if is_small_dataset(dataset):
        return {
            class_wnid(index): name for index, name in enumerate(_small_class_names(raw, dataset))
        }
    names: dict[str, str] = {}
    mapping = find_synset_mapping(raw)
    if mapping is not None:
        names = read_synset_mapping(mapping)
    else:
        source = find_label_source(raw)
        if source is not None and detect_label_format(source)[0].startswith("devkit"):
            names = devkit_class_names(source)
    if not names:
        return {}
    return {wnid: names[wnid] for wnid in raw_classes(raw) if wnid in names}


def check_member_name(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse a tar member whose name is absolute or climbs out with `..` (path traversal)."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise UserError(
            f"{archive}: member {name!r} has an absolute path or '..': refusing this tar; "
            "a genuine ILSVRC2012 tar has neither, so re-download it"
        )


def _iter_train_tar(
    tar_path: Path,
    task_index: int,
    num_tasks: int,
    split: str = "train",
    wanted: dict[str, frozenset[str]] | None = None,
) -> Iterator[RawImage]:
    # see the module docstring: seek past other tasks' classes, and past classes not chosen
    mode = "r|*" if num_tasks == 1 and wanted is None else "r:*"
    with _open_tar(tar_path, mode) as outer:
        class_index = 0
        for member in _regular_members(outer, tar_path.name):
            wnid = _class_tar_wnid(member)
            if not is_wnid(wnid):
                logger.warning(
                    "%s: skipping member %s: expected per-class tars nXXXXXXXX.tar",
                    tar_path.name,
                    member.name,
                )
                continue
            index, class_index = class_index, class_index + 1
            if index % num_tasks != task_index or (wanted is not None and wnid not in wanted):
                continue  # in "r:*" mode its bytes are never read
            class_tar = outer.extractfile(member)
            assert class_tar is not None, f"regular member {member.name} has no data"
            name = f"{tar_path.name}:{member.name}"
            # a subset reads the class tar's headers, then only the chosen members' bytes
            with _open_tar(class_tar, "r|*" if wanted is None else "r:", name=name) as inner:
                for image_member in _regular_members(inner, name):
                    if not _is_image_name(image_member.name):
                        logger.warning("%s: skipping non-image member %s", name, image_member.name)
                        continue
                    key = val_stem(image_member.name)
                    if wanted is not None and key not in wanted[wnid]:
                        continue
                    yield RawImage(
                        split=split,
                        wnid=wnid,
                        key=key,
                        source=f"{name}/{image_member.name}",
                        data=_read_member(inner, image_member, name),
                    )
        _check_complete(tar_path, outer)


def _iter_val_tar(
    tar_path: Path,
    labels: dict[str, str],
    task_index: int,
    num_tasks: int,
    split: str = "val",
    wanted: dict[str, frozenset[str]] | None = None,
) -> Iterator[RawImage]:
    mode = "r|*" if num_tasks == 1 and wanted is None else "r:*"
    with _open_tar(tar_path, mode) as archive:
        image_index = 0
        for member in _regular_members(archive, tar_path.name):
            if not _is_image_name(member.name):
                logger.warning("%s: skipping non-image member %s", tar_path.name, member.name)
                continue
            index, image_index = image_index, image_index + 1
            if index % num_tasks != task_index:
                continue
            key = val_stem(member.name)
            if key not in labels:
                raise UserError(
                    f"{tar_path.name}: {member.name} has no val label: "
                    "the labels do not match this val tar; "
                    "pass the ILSVRC2012 devkit or LOC_val_solution.csv"
                )
            if wanted is not None and key not in wanted.get(labels[key], ()):
                continue
            yield RawImage(
                split,
                labels[key],
                key,
                f"{tar_path.name}:{member.name}",
                data=_read_member(archive, member, tar_path.name),
            )
        _check_complete(tar_path, archive)


def _folder_entries(
    raw: Path, layout: Layout, split: str, labels: Path | None
) -> list[tuple[str, str, Path]]:
    """(wnid, key, path) of every image of a folder layout's split, sorted. Class subfolders give
    the WNID; flat files (an unsorted val) take it from the labels."""
    split_dir = raw / KAGGLE_DATA_DIR / split if layout == "kaggle" else raw / split
    if not split_dir.is_dir():
        raise UserError(
            f"{raw} ({layout} layout) has no {split_dir.relative_to(raw)}/ folder "
            f"for the {split} split"
        )
    # os.scandir: the file type comes with the listing, no stat per file (1.28M files on Lustre)
    entries: list[tuple[str, str, Path]] = []  # (wnid, key, path)
    flat: list[Path] = []
    for name, is_dir in _list_dir(split_dir):
        if is_dir:
            entries.extend(
                (name, val_stem(file_name), split_dir / name / file_name)
                for file_name, file_is_dir in _list_dir(split_dir / name)
                if not file_is_dir and _is_image_name(file_name)
            )
        elif _is_image_name(name):
            flat.append(split_dir / name)
    if flat:
        by_stem = _load_labels(raw, labels)
        unlabelled = [file.name for file in flat if val_stem(file.name) not in by_stem]
        if unlabelled:
            raise UserError(
                f"{split_dir}: {len(unlabelled)} flat files have no label "
                f"(first: {', '.join(unlabelled[:3])}): "
                "pass the val labels that match these files"
            )
        entries.extend((by_stem[val_stem(file.name)], val_stem(file.name), file) for file in flat)
    entries.sort()
    seen: dict[str, Path] = {}
    for _, key, path in entries:
        if key in seen:
            raise UserError(
                f"{split_dir}: two files share the key {key!r} ({seen[key]} and {path}): "
                "keys must be unique"
            )
        seen[key] = path
    if not entries:
        raise UserError(
            f"{split_dir} holds no images: expected nXXXXXXXX/ class folders of image files"
        )
    return entries


def _iter_entries(
    entries: list[tuple[str, str, Path]], split: str, task_index: int, num_tasks: int
) -> Iterator[RawImage]:
    for index, (wnid, key, path) in enumerate(entries):
        if index % num_tasks == task_index:
            yield RawImage(split, wnid, key, str(path), path=path)


def _iter_small(
    raw: Path,
    dataset: str,
    source: str,
    split: str,
    wanted: dict[str, frozenset[str]] | None,
    task_index: int,
    num_tasks: int,
) -> Iterator[RawImage]:
    """CIFAR / MNIST-family images as pixel arrays, in the official order (= key order)."""
    keys, labels, images, sources = _read_small_split(raw, dataset, source)
    position = 0
    for key, label, pixels, where in zip(keys, labels, images, sources, strict=True):
        wnid = class_wnid(int(label))
        if wanted is not None and key not in wanted.get(wnid, ()):
            continue
        index, position = position, position + 1
        if index % num_tasks == task_index:
            yield RawImage(split, wnid, key, where, pixels=pixels)


def _list_keys(
    raw: Path, dataset: str, split: str, classes: set[str], labels: Path | None
) -> Iterator[tuple[str, str]]:
    """(wnid, key) of every image of raw `split` in `classes`, from names only."""
    if is_small_dataset(dataset):
        keys, class_labels, _, _ = _read_small_split(raw, dataset, split)
        for key, label in zip(keys, class_labels, strict=True):
            if class_wnid(int(label)) in classes:
                yield class_wnid(int(label)), key
        return
    layout = detect_layout(raw)
    if layout != "ilsvrc-tars":
        for wnid, key, _ in _folder_entries(raw, layout, split, labels):
            if wnid in classes:
                yield wnid, key
        return
    tar_path = raw / (TRAIN_TAR_NAME if split == "train" else VAL_TAR_NAME)
    if not tar_path.is_file():
        raise UserError(
            f"{raw} has no {tar_path.name}: the {split} split of the ILSVRC2012 tars is missing"
        )
    with _open_tar(tar_path, "r:*") as outer:  # headers only: seeks past every member's bytes
        if split == "val":
            by_stem = _load_labels(raw, labels)
            for member in _regular_members(outer, tar_path.name):
                key = val_stem(member.name)
                if _is_image_name(member.name) and by_stem.get(key) in classes:
                    yield by_stem[key], key
            return
        for member in _regular_members(outer, tar_path.name):
            wnid = _class_tar_wnid(member)
            if wnid not in classes:
                continue  # never opened
            class_tar = outer.extractfile(member)
            assert class_tar is not None, f"regular member {member.name} has no data"
            name = f"{tar_path.name}:{member.name}"
            with _open_tar(class_tar, "r:", name=name) as inner:
                for image_member in _regular_members(inner, name):
                    if _is_image_name(image_member.name):
                        yield wnid, val_stem(image_member.name)


def _read_small_split(
    raw: Path, dataset: str, split: str
) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(keys, labels int64 [N], images uint8 [N, H, W(, 3)], sources) of a CIFAR / IDX split."""
    official = OFFICIAL_SPLIT[split]
    prefix = dataset.replace("-coarse", "").replace("-", "_")
    if dataset in cifar.CIFAR_FORMATS:
        found = _cifar(raw)
        data = cifar.read_cifar_split(found.path, dataset, official)
        images, labels = data.images, data.labels
        sources = [
            f"{found.path.name}:{member}:{name}"
            for member, name in zip(data.members, data.filenames, strict=True)
        ]
    else:
        folder = _idx(raw)
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
        return tuple(cifar.read_cifar_class_names(_cifar(raw).path, dataset))
    return idx.IDX_DATASETS[dataset].class_names


def _small_class_names(raw: Path, dataset: str) -> tuple[str, ...]:
    """The class names in label order; CIFAR's meta is read once per archive version (a pass
    over the gzip stream that prepare would otherwise make for every call)."""
    path = _cifar(raw).path if dataset in cifar.CIFAR_FORMATS else raw
    stat = path.stat()
    return _small_class_names_cached(Path(raw), dataset, (stat.st_mtime_ns, stat.st_size))


def _cifar(raw: Path) -> cifar.FoundCifar:
    found = cifar.find_cifar(raw)
    assert found is not None, f"{raw} was detected as a CIFAR layout"
    return found


def _idx(raw: Path) -> Path:
    folder = idx.find_idx_folder(raw)
    assert folder is not None, f"{raw} was detected as an IDX layout"
    return folder


def _class_tar_wnid(member: tarfile.TarInfo) -> str:
    """The WNID a per-class member of the train tar is named by (n01440764.tar), else ""."""
    name = PurePosixPath(member.name).name
    return name[: -len(".tar")] if name.endswith(".tar") else ""


def _load_labels(raw: Path, labels: Path | None) -> dict[str, str]:
    """Val file stem → WNID from `labels`, else from what RAW holds."""
    source = labels
    if source is None:
        kaggle_csv = raw / KAGGLE_LABELS_NAME
        source = kaggle_csv if kaggle_csv.is_file() else find_label_source(raw)
    if source is None:
        raise UserError(
            f"no val labels in {raw}: "
            "looked for ILSVRC2012_devkit_t12.tar.gz, an extracted devkit, "
            f"{KAGGLE_LABELS_NAME} and val.txt; pass --labels FILE_OR_DEVKIT"
        )
    classes = None
    if (
        detect_label_format(source)[0] == "caffe"
        and find_synset_mapping(Path(source).parent) is None
    ):
        classes = raw_classes(raw)  # a caffe val.txt indexes the sorted classes
    return read_val_labels(source, classes=classes)


def _train_tar_classes(tar_path: Path) -> list[str]:
    with _open_tar(tar_path, "r:*") as outer:  # headers only: seeks past the per-class tars
        return [
            PurePosixPath(member.name).name[: -len(".tar")]
            for member in _regular_members(outer, tar_path.name)
            if member.name.endswith(".tar")
            and is_wnid(PurePosixPath(member.name).name[: -len(".tar")])
        ]


def _open_tar(source: Path | IO[bytes], mode: str, name: str | None = None) -> tarfile.TarFile:
    label = name or str(source)
    try:
        if isinstance(source, Path):
            return tarfile.open(source, mode)
        return tarfile.open(fileobj=source, mode=mode)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"cannot read tar {label}: it is truncated or corrupt ({err}): re-download it"
        ) from err


def _regular_members(archive: tarfile.TarFile, archive_name: str) -> Iterator[tarfile.TarInfo]:
    """The archive's regular files, each checked for path traversal; links and folders are
    skipped."""
    try:
        for member in archive:
            check_member_name(member, archive_name)
            if member.isfile():
                yield member
            elif not member.isdir():
                logger.warning(
                    "%s: skipping %s, which is not a regular file", archive_name, member.name
                )
    except (tarfile.TarError, EOFError) as err:  # a truncated download
        raise UserError(f"{archive_name} is truncated or corrupt ({err}): re-download it") from err


def _check_complete(tar_path: Path, archive: tarfile.TarFile) -> None:
    """Refuse a tar that ends without its end-of-archive block.

    tarfile stops silently at a header cut short, so a download truncated between two members
    would otherwise look complete. `archive.offset` is where the last header read stopped; an
    intact tar has a zero block there. (Compressed tars carry their own length check.)
    """
    with open(tar_path, "rb") as handle:
        if handle.read(6).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
            return
        handle.seek(archive.offset)
        block = handle.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.strip(b"\0"):
        raise UserError(
            f"{tar_path.name} is truncated or corrupt after byte {archive.offset} "
            "(no end-of-archive block): re-download it"
        )


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, archive_name: str) -> bytes:
    try:
        handle = archive.extractfile(member)
        assert handle is not None, f"regular member {member.name} has no data"
        data = handle.read()
    except (tarfile.TarError, EOFError) as err:
        raise UserError(
            f"{archive_name} is truncated or corrupt at {member.name} ({err}): re-download it"
        ) from err
    if len(data) != member.size:
        raise UserError(f"{archive_name} is truncated at {member.name}: re-download it")
    return data


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES
