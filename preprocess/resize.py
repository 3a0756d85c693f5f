"""`resize`: every image under SRC → an RGB JPEG with the given short side under DST.

    python -m preprocess resize train/ train-256/ --short-side 256
    python -m preprocess resize val/ val-256/ --only-shrink --quality 90 --workers 16
    sbatch --array=0-9 --wrap "python -m preprocess resize train/ train-256/"   # 10 disjoint slices

DST mirrors SRC's relative layout (class folders or flat) with the extension `.JPEG`.

- Resumable: an existing output is finished (writes are atomic: temp file + rename), so it is
  skipped; an empty one or one without the JPEG end marker (cut short by a crash) is redone.
  Durability is paid once per task, not per image: the task's checksum list and completion
  record are written only after os.sync(), so a record never vouches for bytes still in the
  page cache. (An fsync per image cost 15% of single-core throughput here: docs/BENCHMARKS.md.)
  Temp files are `.{name}.{pid}.resize-tmp` in the output's own folder, renamed with os.replace
  (core/fileio.py); their leading dot keeps them from ever being read as outputs, and a
  rerun deletes stale ones left by kill -9.
- Bad inputs (zero bytes, truncated, not an image) are listed as `source<TAB>reason` in
  DST/resize_errors.txt (one file per task for Slurm slices), counted in the summary, and make
  the exit status 1. Everything else still gets done. Sources are only ever read.
- DST/resize_manifest.json records the planned image count per class folder and the settings, so
  `preprocess verify DST` can check the output is complete.
- DST/resize_settings.json is written before the first output: a rerun (or `prepare`) with other
  --short-side/--only-shrink/--quality is refused instead of mixing sizes. DST = SRC is refused.
- When a task has gone through its slice it writes DST/resize.task-{i:04d}-of-{n:04d}.json (its
  planned images per class, settings, failures) and
  DST/resize_checksums.task-{i:04d}-of-{n:04d}.sha256 (`sha256sum -c` format, one line per
  output): `prepare --stage shard` shards only when every task's record is there, and `verify`
  checks every image's sha256 against the lists.
- Parallel (preprocess/parallel.py): a pool of worker processes receives paths (never pixels)
  in chunks; the number of chunks in flight is bounded, so memory stays flat for 1.28 M images
  or a streamed tar.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.errors import UserError
from core.fileio import (
    atomic_output,
    atomic_write_text,
    remove_stale_temps,
    walk_files,
    write_atomic,
)
from core.imagefiles import is_image_file
from preprocess.images import SUBSAMPLING, BadImage, resize_image, resize_pixels
from preprocess.parallel import iter_chunks, run_bounded
from preprocess.progress import add_workers_argument, progress_bar, rate, resolve_workers
from preprocess.slices import add_slice_arguments, in_slice, resolve_slice

logger = logging.getLogger(__name__)

OUTPUT_SUFFIX = ".JPEG"
TEMP_SUFFIX = ".resize-tmp"
ERRORS_NAME = "resize_errors.txt"
FOLDER_MANIFEST_NAME = "resize_manifest.json"
FOLDER_MANIFEST_KIND = "resized-folders"
SETTINGS_NAME = (
    "resize_settings.json"  # written when a resize starts: what every output is made with
)
TASK_RECORD_PATTERN = re.compile(r"^resize\.task-(\d{4})-of-(\d{4})\.json$")
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
class ResizeSummary:
    images: int  # images this task looked at (written + skipped + failed)
    written: int  # new outputs written by this run
    skipped: int  # outputs that already existed (a resumed run)
    repaired: int  # written outputs whose input needed a repair (CMYK, PNG, gray, alpha, 16-bit)
    failed: int  # undecodable inputs
    seconds: float
    errors: tuple[tuple[str, str], ...] = ()  # (source, reason) for each failed input
    error_file: Path | None = None
    checksum_file: Path | None = None  # sha256sum-format list of this task's outputs

    @property
    def images_per_second(self) -> float:
        return rate(self.written + self.failed, self.seconds)

    def line(self, command: str = "resize") -> str:
        text = (
            f"{command}: {self.images} images in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s), written {self.written}, "
            f"skipped {self.skipped} already done, repaired {self.repaired}, failed {self.failed}"
        )
        if self.failed and self.error_file is not None:
            text += f" (listed in {self.error_file})"
        return text


@dataclasses.dataclass(frozen=True)
class _Outcome:
    source: str
    status: str  # "written" | "skipped" | "failed"
    reason: str = ""
    repaired: bool = False
    output: str = ""  # the output file (written or skipped)
    sha256: str = ""  # of the output file


def output_path(dst: Path, relative: Path) -> Path:
    """Where the resized copy of SRC/relative goes: same folders, extension .JPEG."""
    return dst / relative.parent / (relative.stem + OUTPUT_SUFFIX)


def is_finished_output(path: Path) -> bool:
    """True for an output a resumed run may skip: it exists, is non-empty and ends with the JPEG
    end-of-image marker (a file cut short by a node crash does not)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < 4:
                return False
            handle.seek(size - 2)
            return handle.read(2) == b"\xff\xd9"
    except OSError:
        return False


def plan_folder(src: Path, dst: Path) -> list[Path]:
    """Image paths under `src` relative to it, sorted; hidden entries and `dst` itself are
    skipped."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(
            f"{src} is not a directory: "
            "expected class folders (SRC/n01440764/*.JPEG) or flat images"
        )
    relatives = walk_files(src, is_image_file, skip=[dst])
    seen: dict[Path, Path] = {}
    for relative in relatives:
        target = output_path(Path(), relative)
        if target in seen:
            raise UserError(
                f"{src / seen[target]} and {src / relative} would both become {target}: "
                "rename one of them"
            )
        seen[target] = relative
    return relatives


def source_name(source: str) -> str:
    """The original's file name from a path or a "TAR:MEMBER/INNER" source: what shards record."""
    return PurePosixPath(source.rsplit(":", 1)[-1]).name


def _resize_one(
    data_or_path: bytes | Path | np.ndarray | None,
    destination: Path,
    options: ResizeOptions,
    source: str,
) -> _Outcome:
    if data_or_path is None:  # the caller found the output already there: hash it for the record
        try:
            digest = hashlib.sha256(destination.read_bytes()).hexdigest()
        except OSError as err:
            return _Outcome(
                source, "failed", f"cannot read the finished output: {err.strerror or err}"
            )
        return _Outcome(source, "skipped", output=str(destination), sha256=digest)
    try:
        if isinstance(data_or_path, np.ndarray):  # CIFAR / MNIST pixels
            jpeg, info = resize_pixels(
                data_or_path,
                options.short_side,
                only_shrink=options.only_shrink,
                quality=options.quality,
                subsampling=options.subsampling,  # type: ignore[arg-type]
                source=source_name(source),
            )
        else:
            data = (
                data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
            )
            jpeg, info = resize_image(
                data,
                options.short_side,
                only_shrink=options.only_shrink,
                quality=options.quality,
                subsampling=options.subsampling,  # type: ignore[arg-type]
                source=source_name(source),
            )
    except BadImage as err:
        return _Outcome(source, "failed", str(err))
    except OSError as err:  # unreadable source file
        return _Outcome(source, "failed", f"cannot read: {err.strerror or err}")
    except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not stop 1.28 M others
        return _Outcome(source, "failed", f"unexpected {type(err).__name__}: {err}")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        # no fsync per image: a crash can at worst leave an output without its JPEG end marker,
        # which `is_finished_output` rejects on resume; `_finish` syncs once before any record
        write_atomic(destination, jpeg, TEMP_SUFFIX)
    except OSError as err:  # disk full, permissions: no point going on
        raise UserError(
            f"cannot write {destination}: {err.strerror or err}: free space or fix permissions, "
            f"then rerun the same command to resume"
        ) from None
    return _Outcome(
        source,
        "written",
        repaired=info.repaired,
        output=str(destination),
        sha256=hashlib.sha256(jpeg).hexdigest(),
    )


def _resize_chunk(jobs: Sequence[tuple[Any, str, ResizeOptions, str]]) -> list[_Outcome]:
    return [
        _resize_one(item, Path(destination), options, source)
        for item, destination, options, source in jobs
    ]


def checksum_file_path(dst: Path, task_index: int = 0, num_tasks: int = 1) -> Path:
    """DST/resize_checksums.task-{i:04d}-of-{n:04d}.sha256: `sha256sum -c` format, one line per
    output."""
    return Path(dst) / f"resize_checksums.task-{task_index:04d}-of-{num_tasks:04d}.sha256"


def error_file_path(dst: Path, task_index: int = 0, num_tasks: int = 1) -> Path:
    """DST/resize_errors.txt, or one file per task for Slurm slices."""
    if num_tasks == 1:
        return dst / ERRORS_NAME
    return dst / f"resize_errors.task-{task_index:04d}-of-{num_tasks:04d}.txt"


def _finish(
    outcomes: Iterable[list[_Outcome]],
    dst: Path,
    total: int | None,
    skipped: int,
    started: float,
    task_index: int,
    num_tasks: int,
    description: str,
) -> ResizeSummary:
    """Drain the outcomes behind a progress bar, write the error list, return the summary."""
    written = repaired = 0
    errors: list[tuple[str, str]] = []
    checksum_file = checksum_file_path(dst, task_index, num_tasks)
    # no fsync of its own: the os.sync() below covers the list and every output it names
    with (
        atomic_output(checksum_file, "w", temp_suffix=TEMP_SUFFIX, fsync=False) as checksums,
        progress_bar(total, description) as bar,
    ):
        bar.update(skipped)
        for chunk in outcomes:
            for outcome in chunk:
                if outcome.status == "written":
                    written += 1
                    repaired += outcome.repaired
                elif outcome.status == "skipped":
                    skipped += 1
                else:
                    errors.append((outcome.source, outcome.reason))
                    logger.warning("bad image %s: %s", outcome.source, outcome.reason)
                    continue
                relative = Path(outcome.output).relative_to(dst).as_posix()
                checksums.write(f"{outcome.sha256}  {relative}\n")
            bar.update(len(chunk))
        checksums.flush()
        os.sync()  # every output of this run is on disk before the lists that vouch for it
    error_file = error_file_path(dst, task_index, num_tasks)
    if errors:
        errors.sort()
        atomic_write_text(error_file, "".join(f"{source}\t{reason}\n" for source, reason in errors))
    else:
        error_file.unlink(missing_ok=True)  # a clean rerun clears the list of an earlier failed run
    return ResizeSummary(
        images=written + skipped + len(errors),
        written=written,
        skipped=skipped,
        repaired=repaired,
        failed=len(errors),
        seconds=time.perf_counter() - started,
        errors=tuple(errors),
        error_file=error_file if errors else None,
        checksum_file=checksum_file,
    )


def write_folder_manifest(dst: Path, class_counts: dict[str, int], options: ResizeOptions) -> Path:
    """DST/resize_manifest.json: planned images per class folder ("." for flat) and the settings."""
    data = {
        "kind": FOLDER_MANIFEST_KIND,
        "short_side": options.short_side,
        "only_shrink": options.only_shrink,
        "quality": options.quality,
        "num_images": sum(class_counts.values()),
        "class_counts": dict(sorted(class_counts.items())),
    }
    path = dst / FOLDER_MANIFEST_NAME
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def settings_of(options: ResizeOptions) -> dict[str, Any]:
    return {
        "short_side": options.short_side,
        "only_shrink": options.only_shrink,
        "quality": options.quality,
        "subsampling": options.subsampling,
    }


def recorded_settings(dst: Path) -> dict[str, Any] | None:
    """The settings DST's images were made with (resize_settings.json, else
    resize_manifest.json)."""
    for name in (SETTINGS_NAME, FOLDER_MANIFEST_NAME):
        try:
            recorded = json.loads((Path(dst) / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(recorded, dict) and "short_side" in recorded:
            return recorded
    return None  # a fresh DST (or one from before manifests): nothing to compare with


def recorded_options(dst: Path) -> ResizeOptions | None:
    recorded = recorded_settings(dst)
    if recorded is None:
        return None
    return ResizeOptions.from_record(recorded)


def claim_settings(dst: Path, options: ResizeOptions) -> None:
    """Check DST was made with `options` (or is fresh) and record them before any output is
    written."""
    check_settings_match(dst, options)
    Path(dst).mkdir(parents=True, exist_ok=True)
    if not (Path(dst) / SETTINGS_NAME).is_file():
        atomic_write_text(
            Path(dst) / SETTINGS_NAME, json.dumps(settings_of(options), sort_keys=True) + "\n"
        )


def check_settings_match(dst: Path, options: ResizeOptions) -> None:
    """Refuse to resume into a DST made with other settings: skipped files would silently differ."""
    recorded = recorded_settings(dst)
    if recorded is None:
        return
    wanted = settings_of(options)
    # a record from before a setting existed was made with that setting's default (4:2:0 for
    # subsampling): compare with the default, not with what this run asks
    made_with = settings_of(ResizeOptions.from_record(recorded))
    differing = {key: made_with[key] for key, value in wanted.items() if made_with[key] != value}
    if differing:
        made = ", ".join(f"{key}={value}" for key, value in differing.items())
        asked = ", ".join(f"{key}={wanted[key]}" for key in differing)
        raise UserError(
            f"{dst} holds images made with {made} but this run asks for {asked}: "
            f"resuming would mix the two; pass a new DST (or delete {dst} to redo it)"
        )


def task_record_path(dst: Path, task_index: int = 0, num_tasks: int = 1) -> Path:
    """DST/resize.task-{i:04d}-of-{n:04d}.json: written when task i of n has gone through its
    slice."""
    return Path(dst) / f"resize.task-{task_index:04d}-of-{num_tasks:04d}.json"


def write_task_record(
    dst: Path,
    task_index: int,
    num_tasks: int,
    options: ResizeOptions,
    class_counts: dict[str, int],
    summary: ResizeSummary,
) -> Path:
    """The completion record of one task: its slice's planned images per class and its failures."""
    data = {
        "task_index": task_index,
        "num_tasks": num_tasks,
        **settings_of(options),
        "planned": sum(class_counts.values()),
        "class_counts": dict(sorted(class_counts.items())),
        "failed": summary.failed,
        "error_file": summary.error_file.name if summary.error_file is not None else None,
        "checksum_file": summary.checksum_file.name if summary.checksum_file is not None else None,
    }
    path = task_record_path(dst, task_index, num_tasks)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class ResizeCompletion:
    """What every task of a finished resize recorded, summed."""

    options: ResizeOptions
    num_tasks: int
    class_counts: dict[
        str, int
    ]  # planned images per class folder, over all tasks (failed included)
    failed: int
    error_files: tuple[Path, ...]  # the lists naming the failed inputs
    checksum_files: tuple[Path, ...] = ()  # sha256sum lists of every task's outputs

    @property
    def planned(self) -> int:
        return sum(self.class_counts.values())


def check_resize_complete(dst: Path) -> ResizeCompletion:
    """Every task of the last resize of DST left its completion record; UserError naming the
    missing ones.

    Records from an abandoned run with another task count are ignored when a full set exists.
    """
    dst = Path(dst)
    runs: dict[int, dict[int, tuple[dict, float]]] = collections.defaultdict(dict)
    unreadable: list[str] = []
    for path in sorted(dst.iterdir()) if dst.is_dir() else []:
        match = TASK_RECORD_PATTERN.match(path.name)
        if not match:
            continue
        try:
            data = json.loads(path.read_text())
            data["class_counts"], data["short_side"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            unreadable.append(path.name)
            continue
        runs[int(match.group(2))][int(match.group(1))] = (data, path.stat().st_mtime)
    complete = [n for n, tasks in runs.items() if set(tasks) == set(range(n))]
    if not complete:
        if not runs:
            raise UserError(
                f"{dst}: no resize completion records (resize.task-*.json"
                + (f"; unreadable: {', '.join(unreadable[:3])}" if unreadable else "")
                + "): run the resize stage first, every task of it, "
                "and wait for all of them to finish"
            )
        newest = max(runs, key=lambda n: max(mtime for _, mtime in runs[n].values()))
        missing = sorted(set(range(newest)) - set(runs[newest]))
        raise UserError(
            f"{dst}: resize tasks {missing[:10]}{'...' if len(missing) > 10 else ''} "
            f"of {newest} have not finished (no resize.task-NNNN-of-{newest:04d}.json): "
            f"rerun them (the same command resumes), then this stage"
        )
    num_tasks = max(complete, key=lambda n: max(mtime for _, mtime in runs[n].values()))
    records = [runs[num_tasks][index][0] for index in range(num_tasks)]
    settings = {
        json.dumps({key: record.get(key) for key in settings_of(DEFAULT_OPTIONS)})
        for record in records
    }
    if len(settings) != 1:
        raise UserError(
            f"{dst}: the resize tasks' records disagree on the settings ({sorted(settings)}): the "
            f"folders mix images of several runs; delete {dst} and resize again"
        )
    options = ResizeOptions.from_record(records[0])
    class_counts: collections.Counter = collections.Counter()
    for record in records:
        class_counts.update({key: int(value) for key, value in record["class_counts"].items()})
    error_files = tuple(
        dst / record["error_file"]
        for record in records
        if record.get("failed") and record.get("error_file")
    )
    return ResizeCompletion(
        options,
        num_tasks,
        dict(sorted(class_counts.items())),
        sum(int(record.get("failed") or 0) for record in records),
        error_files,
        tuple(dst / record["checksum_file"] for record in records if record.get("checksum_file")),
    )


def _existing_files(directories: Iterable[Path]) -> set[Path]:
    """Every file in these directories, by one scandir each: a fresh run of 1.28 M images would
    otherwise pay a failed open() per planned output before the first worker starts."""
    found: set[Path] = set()
    for directory in directories:
        try:
            with os.scandir(directory) as entries:
                found.update(directory / entry.name for entry in entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def resize_folder(
    src: Path,
    dst: Path,
    options: ResizeOptions = DEFAULT_OPTIONS,
    *,
    workers: int | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
) -> ResizeSummary:
    """Resize every image under `src` into `dst` (this task's slice only); see the module doc."""
    options.check()
    src, dst = Path(src), Path(dst)
    started = time.perf_counter()
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST {dst} is a file: pass a directory (it is created when missing)")
    if src.is_dir() and src.resolve() == dst.resolve():
        raise UserError(
            f"DST {dst} is the same folder as SRC {src}: resize never overwrites its inputs; "
            f"pass a separate output folder, e.g. {src.parent / (src.name + '-resized')}"
        )
    relatives = plan_folder(src, dst)
    if not relatives:
        raise UserError(
            f"{src}: no images found "
            f"(looked for {', '.join(sorted(['.JPEG', '.jpg', '.png']))} ...)"
        )
    claim_settings(dst, options)
    class_counts = collections.Counter(str(relative.parent) for relative in relatives)
    write_folder_manifest(dst, dict(class_counts), options)
    mine = [
        relative
        for index, relative in enumerate(relatives)
        if in_slice(index, task_index, num_tasks)
    ]
    if num_tasks == 1:
        remove_stale_temps(dst, TEMP_SUFFIX)
    else:  # other array tasks may be writing into dst right now: clean only this slice's leftovers
        mine_outputs = {output_path(dst, relative) for relative in mine}
        remove_stale_temps(dst, TEMP_SUFFIX, mine_outputs.__contains__)
    existing = _existing_files({output_path(dst, relative).parent for relative in mine})
    finished = {  # one directory listing per folder, then a read of the end marker of those there
        relative
        for relative in mine
        if output_path(dst, relative) in existing and is_finished_output(output_path(dst, relative))
    }
    todo = [relative for relative in mine if relative not in finished]
    if finished:
        logger.info(
            "resuming: %d of %d outputs already exist and are skipped", len(finished), len(mine)
        )
    jobs = (  # finished outputs go through too (payload None), to be hashed for the checksum list
        (
            None if relative in finished else src / relative,
            str(output_path(dst, relative)),
            options,
            str(relative),
        )
        for relative in mine
    )
    workers = min(resolve_workers(workers), max(1, -(-len(todo) // CHUNK_SIZE)))
    outcomes = run_bounded(_resize_chunk, iter_chunks(jobs, CHUNK_SIZE), workers)
    summary = _finish(
        outcomes, dst, len(mine), 0, started, task_index, num_tasks, f"resize {src.name}"
    )
    mine_counts = collections.Counter(str(relative.parent) for relative in mine)
    write_task_record(dst, task_index, num_tasks, options, dict(mine_counts), summary)
    return summary


def resize_stream(
    images: Iterable[Any],
    dst_dir: Path,
    options: ResizeOptions = DEFAULT_OPTIONS,
    *,
    workers: int | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    total: int | None = None,
    description: str = "resize",
) -> ResizeSummary:
    """Resize a stream of `sources.RawImage` (bytes from tars, or paths) to dst_dir/WNID/KEY.JPEG.

    Outputs that already exist are skipped without decoding; the stream itself is consumed once.
    The slice (task_index/num_tasks) only names this task's error file: the caller slices the
    stream (sources.iter_raw_images does).
    """
    options.check()
    dst_dir = Path(dst_dir)
    started = time.perf_counter()
    claim_settings(dst_dir, options)
    if num_tasks == 1:
        remove_stale_temps(dst_dir, TEMP_SUFFIX)
    destinations: set[Path] = set()  # this slice's outputs; its leftovers are cleaned at the end
    planned: collections.Counter = collections.Counter()  # this slice's images per class

    def jobs() -> Iterator[tuple[Any, str, ResizeOptions, str]]:
        for image in images:
            planned[image.wnid] += 1
            destination = dst_dir / image.wnid / (image.key + OUTPUT_SUFFIX)
            if num_tasks > 1:
                destinations.add(destination)
            if is_finished_output(destination):
                payload = None  # counted as skipped; a tar stream has read the bytes already anyway
            elif image.pixels is not None:
                payload = image.pixels  # CIFAR / MNIST: 3 KB arrays, cheaper than encoding them
            elif image.data is None and image.path is not None:
                payload = image.path  # workers read files themselves: no pixels through the pipe
            else:
                payload = image.read()
            yield payload, str(destination), options, image.source

    outcomes = run_bounded(_resize_chunk, iter_chunks(jobs(), CHUNK_SIZE), resolve_workers(workers))
    summary = _finish(outcomes, dst_dir, total, 0, started, task_index, num_tasks, description)
    if num_tasks > 1:  # the slice is only known once streamed; other tasks may still be writing
        remove_stale_temps(dst_dir, TEMP_SUFFIX, destinations.__contains__)
    write_task_record(dst_dir, task_index, num_tasks, options, dict(planned), summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", type=Path, help="input: class folders (SRC/n01440764/*.JPEG) or flat images"
    )
    parser.add_argument("dst", type=Path, help="output folder; same relative layout, .JPEG files")
    add_resize_options(parser)
    add_workers_argument(parser)
    add_slice_arguments(parser)


def add_resize_options(parser: argparse.ArgumentParser) -> None:
    """--short-side/--only-shrink/--quality, shared with `prepare`."""
    parser.add_argument(
        "--short-side", type=int, default=256, help="output short side in pixels (default 256)"
    )
    parser.add_argument(
        "--only-shrink",
        action="store_true",
        help='never enlarge small images (ImageMagick "256^>" semantics)',
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    parser.add_argument(
        "--subsampling",
        choices=sorted(SUBSAMPLING),
        default="4:2:0",
        help="JPEG chroma subsampling (default 4:2:0, libjpeg's; 4:4:4 keeps full colour)",
    )


def run(args: argparse.Namespace) -> int:
    task_index, num_tasks = resolve_slice(args.task_index, args.num_tasks)
    options = ResizeOptions(args.short_side, args.only_shrink, args.quality, args.subsampling)
    summary = resize_folder(
        args.src,
        args.dst,
        options,
        workers=args.workers,
        task_index=task_index,
        num_tasks=num_tasks,
    )
    print(summary.line())
    return 1 if summary.failed else 0
