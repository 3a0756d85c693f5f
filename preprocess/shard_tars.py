"""One shard on disk: a byte-deterministic tar, its DALI index and its completion record.

Members `{key}.jpg`, `{key}.cls`, `{key}.json` in that order, GNU format, mtime 0, uid/gid 0,
empty user/group names, mode 0644, compact sorted-key JSON. The tar is written to a temp file and
renamed; the DALI index goes beside it, then the `.{tar}.json` record (count, bytes, sha256, plan
digest) that lets a rerun skip a shard that is already complete.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from core.fileio import atomic_output, atomic_write_text
from core.shard_format import (
    IndexMember,
    ShardEntry,
    dali_index_name,
    format_dali_index,
    shard_name,
)
from preprocess.images import read_provenance
from preprocess.shard_plan import Sample

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".shard-tmp"


MEMBER_EXTENSIONS = ("jpg", "cls", "json")  # member order inside each sample


@dataclasses.dataclass(frozen=True)
class ShardResult:
    index: int
    entry: ShardEntry | None  # None when the shard could not be written
    class_counts: dict[str, int]
    skipped: bool  # already complete and verified
    errors: tuple[tuple[str, str], ...] = ()  # (source, reason) for inputs that are not RGB JPEGs


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _sample_members(src: Path, sample: Sample) -> list[tuple[str, bytes]]:
    """The three members of one sample; raises ValueError(reason) for an input that is not an RGB
    JPEG."""
    data = (src / sample.path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, mode, (width, height) = image.format, image.mode, image.size
            provenance = read_provenance(image) if image_format == "JPEG" else None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(
            f"not a readable image ({err}): run `preprocess resize` on the folders first"
        ) from None
    if image_format != "JPEG" or mode != "RGB":
        raise ValueError(
            f"is a {image_format} {mode} image, expected an RGB JPEG: run `preprocess resize` first"
        )
    if provenance is not None:
        source, width, height = (
            provenance.get("source") or Path(sample.path).name,
            provenance["width"],
            provenance["height"],
        )
    else:
        source = Path(sample.path).name
    meta = {"wnid": sample.wnid, "source": source, "width": int(width), "height": int(height)}
    return [
        (f"{sample.key}.jpg", data),
        (f"{sample.key}.cls", str(sample.label).encode("ascii")),
        (
            f"{sample.key}.json",
            json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        ),
    ]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return _handle_sha256(handle)


def _handle_sha256(handle: IO[bytes]) -> str:
    """sha256 of everything `handle` holds, read from its start."""
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def record_path(directory: Path, tar_name: str) -> Path:
    """The `.{tar}.json` completion record written after a tar is in place."""
    return Path(directory) / f".{tar_name}.json"


def read_record(directory: Path, tar_name: str) -> dict | None:
    try:
        return json.loads(record_path(directory, tar_name).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def shard_is_complete(
    directory: Path, tar_name: str, count: int, plan_digest: str
) -> ShardEntry | None:
    """The shard's entry when its tar matches its record and the plan (sha256 recomputed), else
    None."""
    record = read_record(directory, tar_name)
    path = Path(directory) / tar_name
    if (
        record is None
        or not path.is_file()
        or not (Path(directory) / dali_index_name(tar_name)).is_file()
    ):
        return None
    if record.get("plan_sha256") != plan_digest or record.get("count") != count:
        return None
    if path.stat().st_size != record.get("bytes") or file_sha256(path) != record.get("sha256"):
        logger.warning("%s does not match its record (size or sha256): rewriting it", path)
        return None
    return ShardEntry(tar_name, count, record["bytes"], record["sha256"])


def write_shard(
    src: Path, dst: Path, split: str, index: int, samples: Sequence[Sample], plan_digest: str
) -> ShardResult:
    """Write shard `index` (tar + DALI index + record) unless it is already complete."""
    src, dst = Path(src), Path(dst)
    tar_name = shard_name(split, index)
    counts = dict(collections.Counter(sample.wnid for sample in samples))
    entry = shard_is_complete(dst, tar_name, len(samples), plan_digest)
    if entry is not None:
        return ShardResult(index, entry, counts, skipped=True)
    index_samples: list[tuple[IndexMember, ...]] = []
    errors: list[tuple[str, str]] = []
    try:
        # `.{tar}.{pid}.shard-tmp`, fsynced on exit: on disk before the name (and the record)
        # say "complete"
        with atomic_output(dst / tar_name, "w+b", temp_suffix=TEMP_SUFFIX) as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for sample in samples:
                    try:
                        members = _sample_members(src, sample)
                    except (ValueError, OSError) as err:
                        errors.append((str(src / sample.path), str(err)))
                        continue
                    parts = []
                    for name, data in members:
                        tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
                        # tar.offset is now past this member's padded data; its data began here:
                        data_offset = (
                            tar.offset
                            - (len(data) + tarfile.BLOCKSIZE - 1)
                            // tarfile.BLOCKSIZE
                            * tarfile.BLOCKSIZE
                        )
                        parts.append(
                            IndexMember(name.rsplit(".", 1)[1], data_offset, len(data), name)
                        )
                    index_samples.append(tuple(parts))
            if errors:
                raise _BadInputs  # no tar: atomic_output removes the temp
            handle.flush()
            size = os.fstat(handle.fileno()).st_size
            sha256 = _handle_sha256(handle)
            atomic_write_text(dst / dali_index_name(tar_name), format_dali_index(index_samples))
            os.fchmod(handle.fileno(), 0o644)  # tars are read by other users' jobs too
    except _BadInputs:
        return ShardResult(index, None, counts, skipped=False, errors=tuple(errors))
    record = {
        "name": tar_name,
        "count": len(samples),
        "bytes": size,
        "sha256": sha256,
        "plan_sha256": plan_digest,
    }
    atomic_write_text(record_path(dst, tar_name), json.dumps(record, sort_keys=True) + "\n")
    return ShardResult(
        index, ShardEntry(tar_name, len(samples), size, sha256), counts, skipped=False
    )


class _BadInputs(Exception):
    """Raised inside a shard's atomic write when some input is not an RGB JPEG: no tar is made."""
