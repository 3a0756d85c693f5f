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
"""

from __future__ import annotations

import dataclasses
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from preprocess.errors import UserError
from preprocess.fileio import list_dir as _list_dir
from preprocess.images import IMAGE_SUFFIXES  # what counts as an image, one definition
from preprocess.labels import (
    detect_label_format,
    devkit_class_names,
    find_label_source,
    read_val_labels,
    val_stem,
)
from preprocess.synsets import (
    find_synset_mapping,
    folder_classes,
    is_wnid,
    read_synset_mapping,
)

logger = logging.getLogger(__name__)

Layout = Literal["ilsvrc-tars", "kaggle", "folders"]
SPLITS = ("train", "val")
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

    def read(self) -> bytes:
        """The original file's bytes."""
        if self.data is not None:
            return self.data
        assert self.path is not None, f"RawImage {self.key} has neither data nor path"
        return self.path.read_bytes()


def detect_layout(raw: Path) -> Layout:
    """Which raw layout RAW holds; UserError naming what was looked for when none."""
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(
            f"RAW {raw} is not a directory: expected the folder holding the raw ImageNet download"
        )
    if (raw / TRAIN_TAR_NAME).is_file() or (raw / VAL_TAR_NAME).is_file():
        return "ilsvrc-tars"
    if (raw / KAGGLE_DATA_DIR).is_dir():
        return "kaggle"
    if (raw / "train").is_dir() or (raw / "val").is_dir():
        return "folders"
    raise UserError(
        f"{raw} holds no raw ImageNet layout: "
        f"looked for {TRAIN_TAR_NAME} / {VAL_TAR_NAME} (ILSVRC2012 tars), "
        f"{KAGGLE_DATA_DIR}/ (Kaggle download) and train/ or val/ class folders"
    )


def iter_raw_images(
    raw: Path,
    split: str,
    *,
    labels: Path | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
) -> Iterator[RawImage]:
    """Every image of `split` in this task's slice, in a deterministic order.

    Args:
        labels: val labels (any form preprocess.labels reads); default: found in RAW.
        task_index, num_tasks: this task's slice; item i belongs to task i % num_tasks.
    """
    raw = Path(raw)
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {SPLITS}")
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise UserError(
            f"task index {task_index} of {num_tasks} tasks: expected 0 <= task index < num tasks"
        )
    layout = detect_layout(raw)
    if layout == "ilsvrc-tars":
        tar_path = raw / (TRAIN_TAR_NAME if split == "train" else VAL_TAR_NAME)
        if not tar_path.is_file():
            raise UserError(
                f"{raw} has no {tar_path.name}: the {split} split of the ILSVRC2012 tars is missing"
            )
        if split == "train":
            return _iter_train_tar(tar_path, task_index, num_tasks)
        return _iter_val_tar(tar_path, _load_labels(raw, labels), task_index, num_tasks)
    split_dir = raw / KAGGLE_DATA_DIR / split if layout == "kaggle" else raw / split
    if not split_dir.is_dir():
        raise UserError(
            f"{raw} ({layout} layout) has no {split_dir.relative_to(raw)}/ folder "
            f"for the {split} split"
        )
    return _iter_folder(raw, split_dir, split, labels, task_index, num_tasks)


def raw_classes(raw: Path) -> list[str]:
    """The sorted WNIDs of RAW: class index = position. Taken from the train split where there is
    one."""
    raw = Path(raw)
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


def raw_class_names(raw: Path) -> dict[str, str]:
    """WNID → words for the classes of RAW, from LOC_synset_mapping.txt or the devkit; {} when
    neither."""
    raw = Path(raw)
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


def _iter_train_tar(tar_path: Path, task_index: int, num_tasks: int) -> Iterator[RawImage]:
    mode = (
        "r|*" if num_tasks == 1 else "r:*"
    )  # see the module docstring: seek past other tasks' classes
    with _open_tar(tar_path, mode) as outer:
        class_index = 0
        for member in _regular_members(outer, tar_path.name):
            wnid = (
                PurePosixPath(member.name).name[: -len(".tar")]
                if member.name.endswith(".tar")
                else ""
            )
            if not is_wnid(wnid):
                logger.warning(
                    "%s: skipping member %s: expected per-class tars nXXXXXXXX.tar",
                    tar_path.name,
                    member.name,
                )
                continue
            index, class_index = class_index, class_index + 1
            if index % num_tasks != task_index:
                continue
            class_tar = outer.extractfile(member)
            assert class_tar is not None, f"regular member {member.name} has no data"
            with _open_tar(class_tar, "r|*", name=f"{tar_path.name}:{member.name}") as inner:
                for image_member in _regular_members(inner, f"{tar_path.name}:{member.name}"):
                    if not _is_image_name(image_member.name):
                        logger.warning(
                            "%s:%s: skipping non-image member %s",
                            tar_path.name,
                            member.name,
                            image_member.name,
                        )
                        continue
                    yield RawImage(
                        split="train",
                        wnid=wnid,
                        key=val_stem(image_member.name),
                        source=f"{tar_path.name}:{member.name}/{image_member.name}",
                        data=_read_member(inner, image_member, f"{tar_path.name}:{member.name}"),
                    )
        _check_complete(tar_path, outer)


def _iter_val_tar(
    tar_path: Path, labels: dict[str, str], task_index: int, num_tasks: int
) -> Iterator[RawImage]:
    mode = "r|*" if num_tasks == 1 else "r:*"
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
            yield RawImage(
                "val",
                labels[key],
                key,
                f"{tar_path.name}:{member.name}",
                data=_read_member(archive, member, tar_path.name),
            )
        _check_complete(tar_path, archive)


def _iter_folder(
    raw: Path, split_dir: Path, split: str, labels: Path | None, task_index: int, num_tasks: int
) -> Iterator[RawImage]:
    """Class subfolders give the WNID; flat files (an unsorted val) take it from the labels."""
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
    for index, (wnid, key, path) in enumerate(entries):
        if index % num_tasks == task_index:
            yield RawImage(split, wnid, key, str(path), path=path)


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
