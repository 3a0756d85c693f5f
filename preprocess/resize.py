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
- Parallel (preprocess/parallel.py, preprocess/resize_worker.py): a pool of worker processes
  receives jobs in chunks of CHUNK_SIZE. A job carries a path when the image is a file (the
  worker reads it), the encoded bytes when it is a tar member (already read from the stream),
  and the uint8 pixel array itself for CIFAR / MNIST (about 3 KB, cheaper than encoding it); an
  output already finished travels as None, to be hashed only. The number of chunks in flight is
  bounded, so memory stays flat for 1.28 M images or a streamed tar.
- Modules: this one plans and drives a run (and is the CLI); preprocess/resize_worker.py does
  one image; preprocess/resize_records.py writes and checks the settings and records.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.fileio import atomic_output, atomic_write_text, remove_stale_temps, walk_files
from core.imagefiles import is_image_file
from preprocess.images import SUBSAMPLING
from preprocess.parallel import iter_chunks, run_bounded
from preprocess.progress import add_workers_argument, progress_bar, resolve_workers
from preprocess.resize_records import (
    ResizeSummary,
    checksum_file_path,
    claim_settings,
    error_file_path,
    write_folder_manifest,
    write_task_record,
)
from preprocess.resize_worker import (
    CHUNK_SIZE,
    DEFAULT_OPTIONS,
    OUTPUT_SUFFIX,
    TEMP_SUFFIX,
    ResizeOptions,
    ResizeOutcome,
    resize_chunk,
)
from preprocess.slices import add_slice_arguments, in_slice, resolve_slice

logger = logging.getLogger(__name__)


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


def _finish(
    outcomes: Iterable[list[ResizeOutcome]],
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
    _check_folder_pair(src, dst)
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
    finished = find_finished_outputs(dst, mine, num_tasks)
    todo_count = len(mine) - len(finished)
    jobs = (  # finished outputs go through too (payload None), to be hashed for the checksum list
        (
            None if relative in finished else src / relative,
            str(output_path(dst, relative)),
            options,
            str(relative),
        )
        for relative in mine
    )
    workers = min(resolve_workers(workers), max(1, -(-todo_count // CHUNK_SIZE)))
    outcomes = run_bounded(resize_chunk, iter_chunks(jobs, CHUNK_SIZE), workers)
    summary = _finish(
        outcomes, dst, len(mine), 0, started, task_index, num_tasks, f"resize {src.name}"
    )
    mine_counts = collections.Counter(str(relative.parent) for relative in mine)
    write_task_record(dst, task_index, num_tasks, options, dict(mine_counts), summary)
    return summary


def _check_folder_pair(src: Path, dst: Path) -> None:
    """Refuse a DST that is a file, or the same folder as SRC."""
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST {dst} is a file: pass a directory (it is created when missing)")
    if src.is_dir() and src.resolve() == dst.resolve():
        raise UserError(
            f"DST {dst} is the same folder as SRC {src}: resize never overwrites its inputs; "
            f"pass a separate output folder, e.g. {src.parent / (src.name + '-resized')}"
        )


def find_finished_outputs(dst: Path, mine: list[Path], num_tasks: int) -> set[Path]:
    """The inputs of this slice (`mine`, relative to SRC) whose outputs are already finished,
    after removing the slice's stale temps."""
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
    if finished:
        logger.info(
            "resuming: %d of %d outputs already exist and are skipped", len(finished), len(mine)
        )
    return finished


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

    outcomes = run_bounded(resize_chunk, iter_chunks(jobs(), CHUNK_SIZE), resolve_workers(workers))
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
