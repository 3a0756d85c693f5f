"""One image in a resize worker process: a job's payload → an atomic RGB JPEG and its sha256.

A job is (payload, destination, `ResizeOptions`, source). The payload is a path (the worker reads
the file itself), the encoded bytes of a tar member, a CIFAR / MNIST uint8 pixel array, or None
for an output already finished, which the worker only hashes for the checksum list.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.errors import UserError
from core.fileio import write_atomic
from preprocess.images import SUBSAMPLING, BadImage, ImageInfo, resize_image, resize_pixels

OUTPUT_SUFFIX = ".JPEG"


TEMP_SUFFIX = ".resize-tmp"


CHUNK_SIZE = 16  # images per task sent to a worker: amortizes IPC without starving the pool


@dataclasses.dataclass(frozen=True)
class ResizeOptions:
    short_side: int = 256  # output short side in pixels
    only_shrink: bool = False  # ImageMagick "256^>": never enlarge
    quality: int = 90  # JPEG quality of the outputs
    subsampling: str = "4:2:0"  # JPEG chroma subsampling: "4:2:0" (libjpeg's default) or "4:4:4"

    def check(self) -> None:
        if self.short_side < 1:
            raise UserError(f"--short-side must be >= 1, got {self.short_side}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality must be in 1..100, got {self.quality}")
        if self.subsampling not in SUBSAMPLING:
            raise UserError(
                f"--subsampling {self.subsampling!r}: expected one of {', '.join(SUBSAMPLING)}"
            )

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ResizeOptions:
        """The options a settings file or task record holds (older ones lack subsampling)."""
        return cls(
            int(record["short_side"]),
            bool(record.get("only_shrink")),
            int(record.get("quality", 90)),
            str(record.get("subsampling", "4:2:0")),
        )


DEFAULT_OPTIONS = ResizeOptions()


@dataclasses.dataclass(frozen=True)
class ResizeOutcome:
    """What a worker did with one job."""

    source: str
    status: str  # "written" | "skipped" | "failed"
    reason: str = ""
    repaired: bool = False
    output: str = ""  # the output file (written or skipped)
    sha256: str = ""  # of the output file


def source_name(source: str) -> str:
    """The original's file name from a path or a "TAR:MEMBER/INNER" source: what shards record."""
    return PurePosixPath(source.rsplit(":", 1)[-1]).name


def resize_one(
    data_or_path: bytes | Path | np.ndarray | None,
    destination: Path,
    options: ResizeOptions,
    source: str,
) -> ResizeOutcome:
    """Resize one payload (see the module doc) to `destination`; a bad input is an outcome, a
    write that fails is a UserError."""
    if data_or_path is None:  # the caller found the output already there: hash it for the record
        return _hash_finished(destination, source)
    try:
        jpeg, info = _encode(data_or_path, options, source)
    except BadImage as err:
        return ResizeOutcome(source, "failed", str(err))
    except OSError as err:  # unreadable source file
        return ResizeOutcome(source, "failed", f"cannot read: {err.strerror or err}")
    except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not stop 1.28 M others
        return ResizeOutcome(source, "failed", f"unexpected {type(err).__name__}: {err}")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        # no fsync per image: a crash can at worst leave an output without its JPEG end marker,
        # which `resize.is_finished_output` rejects on resume; the run syncs once before any
        # record
        write_atomic(destination, jpeg, TEMP_SUFFIX)
    except OSError as err:  # disk full, permissions: no point going on
        raise UserError(
            f"cannot write {destination}: {err.strerror or err}: free space or fix permissions, "
            f"then rerun the same command to resume"
        ) from None
    return ResizeOutcome(
        source,
        "written",
        repaired=info.repaired,
        output=str(destination),
        sha256=hashlib.sha256(jpeg).hexdigest(),
    )


def _hash_finished(destination: Path, source: str) -> ResizeOutcome:
    """A finished output, skipped: its sha256 for the checksum list."""
    try:
        digest = hashlib.sha256(destination.read_bytes()).hexdigest()
    except OSError as err:
        return ResizeOutcome(
            source, "failed", f"cannot read the finished output: {err.strerror or err}"
        )
    return ResizeOutcome(source, "skipped", output=str(destination), sha256=digest)


def _encode(
    data_or_path: bytes | Path | np.ndarray, options: ResizeOptions, source: str
) -> tuple[bytes, ImageInfo]:
    """(JPEG bytes, ImageInfo) of one payload: pixels, encoded bytes, or a file to read."""
    if isinstance(data_or_path, np.ndarray):  # CIFAR / MNIST pixels
        return resize_pixels(
            data_or_path,
            options.short_side,
            only_shrink=options.only_shrink,
            quality=options.quality,
            subsampling=options.subsampling,  # type: ignore[arg-type]
            source=source_name(source),
        )
    data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
    return resize_image(
        data,
        options.short_side,
        only_shrink=options.only_shrink,
        quality=options.quality,
        subsampling=options.subsampling,  # type: ignore[arg-type]
        source=source_name(source),
    )


def resize_chunk(jobs: Sequence[tuple[Any, str, ResizeOptions, str]]) -> list[ResizeOutcome]:
    """The pool's unit of work: CHUNK_SIZE jobs, one outcome each."""
    return [
        resize_one(item, Path(destination), options, source)
        for item, destination, options, source in jobs
    ]
