"""The ILSVRC2012 tars as a stream of images, read and never extracted.

One sequential pass (tarfile stream mode "r|*", the nested per-class tar opened in stream mode
from the outer member's file object). When a Slurm array splits the work (num_tasks > 1), or a
subset reads only some classes, the outer tar is opened seekable instead ("r:*"), so each task
reads the headers of all members but the bytes of its own members only, instead of every task
reading all 138 GB. Members with absolute paths or `..` are refused (UserError naming the
member); links, folders and devices are skipped; a tar cut short between two members is refused.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from core.classes import is_wnid
from core.errors import UserError
from core.imagefiles import IMAGE_SUFFIXES
from preprocess.labels import val_stem
from preprocess.raw_image import RawImage

logger = logging.getLogger(__name__)

TRAIN_TAR_NAME = "ILSVRC2012_img_train.tar"


VAL_TAR_NAME = "ILSVRC2012_img_val.tar"


def check_member_name(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse a tar member whose name is absolute or climbs out with `..` (path traversal)."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise UserError(
            f"{archive}: member {name!r} has an absolute path or '..': refusing this tar; "
            "a genuine ILSVRC2012 tar has neither, so re-download it"
        )


def iter_train_tar(
    tar_path: Path,
    task_index: int,
    num_tasks: int,
    split: str = "train",
    wanted: dict[str, frozenset[str]] | None = None,
) -> Iterator[RawImage]:
    # see the module docstring: seek past other tasks' classes, and past classes not chosen
    mode = "r|*" if num_tasks == 1 and wanted is None else "r:*"
    with open_tar(tar_path, mode) as outer:
        class_index = 0
        for member in regular_members(outer, tar_path.name):
            wnid = class_tar_wnid(member)
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
            with open_tar(class_tar, "r|*" if wanted is None else "r:", name=name) as inner:
                for image_member in regular_members(inner, name):
                    if not is_image_name(image_member.name):
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
                        data=read_member(inner, image_member, name),
                    )
        check_complete(tar_path, outer)


def iter_val_tar(
    tar_path: Path,
    labels: dict[str, str],
    task_index: int,
    num_tasks: int,
    split: str = "val",
    wanted: dict[str, frozenset[str]] | None = None,
) -> Iterator[RawImage]:
    mode = "r|*" if num_tasks == 1 and wanted is None else "r:*"
    with open_tar(tar_path, mode) as archive:
        image_index = 0
        for member in regular_members(archive, tar_path.name):
            if not is_image_name(member.name):
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
                data=read_member(archive, member, tar_path.name),
            )
        check_complete(tar_path, archive)


def list_tar_keys(
    tar_path: Path,
    split: str,
    classes: set[str],
    load_labels: Callable[[], dict[str, str]],
) -> Iterator[tuple[str, str]]:
    """(wnid, key) of every image of an ILSVRC tar in `classes`, from its headers only.

    Args:
        load_labels: val file stem -> WNID, called once the val tar is open.
    """
    with open_tar(tar_path, "r:*") as outer:  # headers only: seeks past every member's bytes
        if split == "val":
            by_stem = load_labels()
            for member in regular_members(outer, tar_path.name):
                key = val_stem(member.name)
                if is_image_name(member.name) and by_stem.get(key) in classes:
                    yield by_stem[key], key
            return
        for member in regular_members(outer, tar_path.name):
            wnid = class_tar_wnid(member)
            if wnid not in classes:
                continue  # never opened
            class_tar = outer.extractfile(member)
            assert class_tar is not None, f"regular member {member.name} has no data"
            name = f"{tar_path.name}:{member.name}"
            with open_tar(class_tar, "r:", name=name) as inner:
                for image_member in regular_members(inner, name):
                    if is_image_name(image_member.name):
                        yield wnid, val_stem(image_member.name)


def class_tar_wnid(member: tarfile.TarInfo) -> str:
    """The WNID a per-class member of the train tar is named by (n01440764.tar), else ""."""
    name = PurePosixPath(member.name).name
    return name[: -len(".tar")] if name.endswith(".tar") else ""


def train_tar_classes(tar_path: Path) -> list[str]:
    with open_tar(tar_path, "r:*") as outer:  # headers only: seeks past the per-class tars
        return [
            PurePosixPath(member.name).name[: -len(".tar")]
            for member in regular_members(outer, tar_path.name)
            if member.name.endswith(".tar")
            and is_wnid(PurePosixPath(member.name).name[: -len(".tar")])
        ]


def open_tar(source: Path | IO[bytes], mode: str, name: str | None = None) -> tarfile.TarFile:
    label = name or str(source)
    try:
        if isinstance(source, Path):
            return tarfile.open(source, mode)
        return tarfile.open(fileobj=source, mode=mode)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"cannot read tar {label}: it is truncated or corrupt ({err}): re-download it"
        ) from err


def regular_members(archive: tarfile.TarFile, archive_name: str) -> Iterator[tarfile.TarInfo]:
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


def check_complete(tar_path: Path, archive: tarfile.TarFile) -> None:
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


def read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, archive_name: str) -> bytes:
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


def is_image_name(name: str) -> bool:
    """True for a member or file name with an image suffix (hidden names included, unlike
    `core.imagefiles.is_image_file`)."""
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES
