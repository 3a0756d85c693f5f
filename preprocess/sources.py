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

Tars are read, never extracted (preprocess/ilsvrc_tars.py): one sequential pass (tarfile stream
mode "r|*", the nested per-class tar opened in stream mode from the outer member's file object).
When a Slurm array splits the work (num_tasks > 1) and the tar is a regular file, the outer tar
is opened seekable instead ("r:*"), so each task reads the headers of all members but the bytes
of its own members only, instead of every task reading all 138 GB. Members with absolute paths
or `..` are refused (UserError naming the member); links, folders and devices are skipped.

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
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from core.classes import (
    class_wnid,
    find_synset_mapping,
    folder_classes,
    read_synset_mapping,
)
from core.errors import UserError
from core.fileio import list_dir as _list_dir
from preprocess import cifar, idx
from preprocess.ilsvrc_tars import (
    TRAIN_TAR_NAME,
    VAL_TAR_NAME,
    is_image_name,
    iter_train_tar,
    iter_val_tar,
    list_tar_keys,
    train_tar_classes,
)
from preprocess.labels import (
    detect_label_format,
    devkit_class_names,
    find_label_source,
    read_val_labels,
    val_stem,
)
from preprocess.raw_image import RawImage
from preprocess.shard_plan import sample_key  # the key a shard stores: what a subset records
from preprocess.small_datasets import (
    find_cifar_archive,
    find_idx_files,
    iter_small_images,
    list_small_keys,
    small_class_names,
)
from preprocess.subsets import Subset, selection_record

logger = logging.getLogger(__name__)

Layout = Literal["ilsvrc-tars", "kaggle", "folders", "cifar", "idx"]
IMAGENET_LAYOUTS = ("ilsvrc-tars", "kaggle", "folders")
# what `prepare --dataset` accepts; "imagenet" covers the three ImageNet layouts
DATASETS = ("imagenet", *cifar.CIFAR_FORMATS, *idx.IDX_DATASETS)
SPLITS = ("train", "val")
KAGGLE_DATA_DIR = Path("ILSVRC") / "Data" / "CLS-LOC"
KAGGLE_LABELS_NAME = "LOC_val_solution.csv"


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
        family = find_cifar_archive(raw).family
        found = dataset if family == "cifar100" and dataset == "cifar100-coarse" else family
    else:
        found = (
            dataset
            if dataset in idx.IDX_DATASETS
            else idx.identify_idx_dataset(find_idx_files(raw))
        )
        if found is None:
            raise UserError(
                f"{find_idx_files(raw)} holds MNIST-format IDX files, but not the genuine MNIST, "
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
        return iter_small_images(raw, dataset, source, split, wanted, task_index, num_tasks)
    if layout == "ilsvrc-tars":
        tar_path = raw / (TRAIN_TAR_NAME if source == "train" else VAL_TAR_NAME)
        if not tar_path.is_file():
            raise UserError(
                f"{raw} has no {tar_path.name}: the {source} split of the ILSVRC2012 tars is "
                "missing"
            )
        if source == "train":
            return iter_train_tar(tar_path, task_index, num_tasks, split, wanted)
        return iter_val_tar(
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
        return [class_wnid(index) for index in range(len(small_class_names(raw, dataset)))]
    layout = detect_layout(raw)
    if layout == "ilsvrc-tars" and (raw / TRAIN_TAR_NAME).is_file():
        return sorted(train_tar_classes(raw / TRAIN_TAR_NAME))
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
            class_wnid(index): name for index, name in enumerate(small_class_names(raw, dataset))
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
                if not file_is_dir and is_image_name(file_name)
            )
        elif is_image_name(name):
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


def _list_keys(
    raw: Path, dataset: str, split: str, classes: set[str], labels: Path | None
) -> Iterator[tuple[str, str]]:
    """(wnid, key) of every image of raw `split` in `classes`, from names only."""
    if is_small_dataset(dataset):
        yield from list_small_keys(raw, dataset, split, classes)
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
    yield from list_tar_keys(tar_path, split, classes, lambda: _load_labels(raw, labels))


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
