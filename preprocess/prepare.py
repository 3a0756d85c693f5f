"""`prepare`: raw ImageNet (ILSVRC2012 tars, Kaggle CLS-LOC or folders) → training-ready shards.

    python -m preprocess prepare /data/raw /data/imagenet --short-side 256 --shard-size 1000
    python -m preprocess prepare raw/ out/ --labels LOC_val_solution.csv --workers 16

    # Slurm: two array jobs (every task resizes its slice; sharding needs all of them done)
    prepare="python -m preprocess prepare raw/ out/"
    jid=$(sbatch --parsable --array=0-9 --wrap "$prepare --stage resize")
    sbatch --dependency=afterany:$jid --array=0-9 --wrap "$prepare --stage shard"
    python -m preprocess merge out/          # merges out/train and out/val

Stages and exit codes, for chaining array jobs:
    --stage resize   each task writes DST/folders/{split}/resize_settings.json when it starts and
                     DST/folders/{split}/resize.task-{i:04d}-of-{n:04d}.json (its slice's planned
                     images per class, its settings, its failure count) when it has gone through its
                     slice. Exit 0; 1 when some images were undecodable (listed in
                     DST/folders/{split}/resize_errors[.task-…].txt; the task still completed and
                     wrote its record); 2 for bad input (one line; no record).
    --stage shard    refuses (exit 2, naming the missing task numbers) unless every resize task of
                     every split left its record; otherwise shards what was resized. Images the
                     resize tasks reported as bad are simply absent: the stage prints each error
                     list with its count and exits 0 when the shards are written.
So the shard array may depend on the resize array with afterany: the records, not the exit
codes, decide whether resizing is complete.

Writes, under DST:
    folders/{train,val}/nXXXXXXXX/<key>.JPEG   resized RGB JPEGs (the `folder` backend reads these;
                                               they also make prepare resumable)
    train/, val/                               shards, DALI indexes, manifest.json, _info.json
    LOC_synset_mapping.txt                     class names (copied from the raw data when present)

Raw tars are streamed (the train tar's 1000 inner tars too); nothing is extracted. Every class
gets a folder in both splits, even with no images, so class index = sorted-WNID position agrees
between train and val. A rerun skips finished images and complete shards.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from preprocess.errors import UserError
from preprocess.fileio import file_names, list_dir
from preprocess.images import is_image_file
from preprocess.manifest import SPLITS
from preprocess.progress import add_workers_argument, rate
from preprocess.resize import (
    DEFAULT_OPTIONS,
    ResizeCompletion,
    ResizeOptions,
    ResizeSummary,
    check_resize_complete,
    check_settings_match,
    resize_stream,
    write_folder_manifest,
)
from preprocess.shards import ShardSummary, write_shards
from preprocess.slices import add_slice_arguments, resolve_slice
from preprocess.synsets import SYNSET_MAPPING_NAME, find_synset_mapping

logger = logging.getLogger(__name__)

STAGES = ("all", "resize", "shard")


def write_class_names(raw: Path, dst: Path, class_names: dict[str, str]) -> Path | None:
    """DST/LOC_synset_mapping.txt: the raw data's file copied as is, else written from
    `class_names`."""
    target = dst / SYNSET_MAPPING_NAME
    source = find_synset_mapping(raw, parents=0)
    if source is None:
        candidates = [
            path
            for path in (raw / SYNSET_MAPPING_NAME, *raw.glob(f"*/{SYNSET_MAPPING_NAME}"))
            if path.is_file()
        ]
        source = candidates[0] if candidates else None
    if source is not None:
        shutil.copyfile(source, target)
        return target
    if class_names:
        target.write_text(
            "".join(f"{wnid} {words}\n" for wnid, words in sorted(class_names.items()))
        )
        return target
    logger.info("no class names found in %s: the grid and manifests will show WNIDs only", raw)
    return None


def count_folder_images(folder: Path) -> dict[str, int]:
    return {
        name: len(file_names(Path(folder) / name, is_image_file))
        for name, is_dir in list_dir(Path(folder))
        if is_dir
    }


def check_resized(folder: Path, options: ResizeOptions | None) -> ResizeCompletion:
    """The shard stage's gate: every resize task finished, with the settings asked for, and the
    folders hold what they planned minus what they reported as bad."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: run the resize stage first (--stage resize)")
    completion = check_resize_complete(folder)
    if options is not None:
        check_settings_match(folder, options)
    on_disk = count_folder_images(folder)
    extra = sorted(
        wnid for wnid, count in on_disk.items() if count > completion.class_counts.get(wnid, 0)
    )
    found = sum(on_disk.values())
    if extra or found != completion.planned - completion.failed:
        raise UserError(
            f"{folder}: {found} images, but the resize tasks planned {completion.planned} "
            "and reported "
            f"{completion.failed} bad"
            + (f" (more than planned in {extra[:3]})" if extra else "")
            + ": rerun the resize stage (it resumes) before sharding"
        )
    return completion


def _first_checked(images: Iterator[Any]) -> Iterator[Any]:
    """Start a raw stream now, so that its errors (missing labels, no images) surface up front."""
    first = next(images, None)
    return images if first is None else itertools.chain([first], images)


def prepare(
    raw: Path,
    dst: Path,
    *,
    options: ResizeOptions | None = None,
    shard_size: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    labels: Path | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    stage: str = "all",
    splits: tuple[str, ...] = SPLITS,
) -> tuple[dict[str, ResizeSummary], dict[str, ShardSummary]]:
    """Run the resize and/or shard stages for `splits`; returns their summaries by split.

    Args:
        options: resize settings; None: the defaults for resizing, and for a shard-only stage
            whatever the resize stage recorded (given options must match the record).
    """
    from preprocess import sources  # the raw-layout readers

    raw, dst = Path(raw), Path(dst)
    if stage not in STAGES:
        raise UserError(f"--stage {stage!r}: expected one of {', '.join(STAGES)}")
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise UserError(f"--splits {' '.join(splits)}: expected one or both of {', '.join(SPLITS)}")
    if num_tasks > 1 and stage == "all":
        raise UserError(
            f"prepare with {num_tasks} tasks needs two array jobs, because sharding needs "
            f"every resize task finished: run with --stage resize, then (afterany) with "
            f"--stage shard, then `python -m preprocess merge {dst}`"
        )
    if not raw.exists():
        raise UserError(f"{raw} does not exist: pass the folder holding the raw ImageNet download")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST {dst} is a file: pass a directory (it is created when missing)")
    if options is not None:
        options.check()
    layout = sources.detect_layout(raw)
    classes = sources.raw_classes(raw)
    logger.info("%s: %s layout, %d classes", raw, layout, len(classes))
    streams: dict[str, Iterator[Any]] = {}
    completions: dict[str, ResizeCompletion] = {}
    if stage in ("all", "resize"):
        # every split's source is checked before any work: a missing val fails now, not after train
        for split in splits:
            check_settings_match(dst / "folders" / split, options or DEFAULT_OPTIONS)
            streams[split] = _first_checked(
                sources.iter_raw_images(
                    raw, split, labels=labels, task_index=task_index, num_tasks=num_tasks
                )
            )
    else:
        completions = {split: check_resized(dst / "folders" / split, options) for split in splits}
    dst.mkdir(parents=True, exist_ok=True)
    write_class_names(raw, dst, sources.raw_class_names(raw))
    resized: dict[str, ResizeSummary] = {}
    sharded: dict[str, ShardSummary] = {}
    for split in splits:
        folder = dst / "folders" / split
        if stage in ("all", "resize"):
            for wnid in classes:
                (folder / wnid).mkdir(parents=True, exist_ok=True)
            resized[split] = resize_stream(
                streams.pop(split),
                folder,
                options or DEFAULT_OPTIONS,
                workers=workers,
                task_index=task_index,
                num_tasks=num_tasks,
                description=f"resize {split}",
            )
        if stage in ("all", "shard"):
            completion = completions[split] if stage == "shard" else check_resized(folder, None)
            for error_file in completion.error_files:
                count = len(error_file.read_text().splitlines()) if error_file.is_file() else 0
                print(f"{split}: {count} bad images left out, listed in {error_file}")
            # planned counts (bad images included, so `verify` reports them) and recorded settings
            planned = {wnid: 0 for wnid in count_folder_images(folder)}
            planned.update(completion.class_counts)
            write_folder_manifest(folder, planned, completion.options)
            sharded[split] = write_shards(
                folder,
                dst / split,
                split,
                shard_size=shard_size,
                seed=seed,
                workers=workers,
                task_index=task_index,
                num_tasks=num_tasks,
                short_side=completion.options.short_side,
            )
    return resized, sharded


def summary_line(
    resized: dict[str, ResizeSummary], sharded: dict[str, ShardSummary], seconds: float
) -> str:
    parts = []
    for split in SPLITS:
        if split in resized:
            summary = resized[split]
            parts.append(
                f"{split}: {summary.images} images (written {summary.written}, "
                f"skipped {summary.skipped}, "
                f"repaired {summary.repaired}, failed {summary.failed})"
            )
        if split in sharded:
            parts.append(
                f"{split}: {sharded[split].shards} shards (written {sharded[split].written}, "
                f"skipped {sharded[split].skipped})"
            )
    images = sum(summary.written + summary.failed for summary in resized.values())
    return (
        f"prepare: {'; '.join(parts)}; {seconds:.1f} s, "
        f"{rate(images, seconds):.1f} images/s resized"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "raw",
        type=Path,
        help="raw ImageNet: the ILSVRC2012 tars, the Kaggle download, or train/ val/ class folders",
    )
    parser.add_argument(
        "dst", type=Path, help="output: folders/, train/, val/ and LOC_synset_mapping.txt go here"
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="output short side in pixels (default 256; the shard stage uses what resize recorded)",
    )
    parser.add_argument(
        "--only-shrink",
        action="store_true",
        default=None,
        help='never enlarge small images (ImageMagick "256^>" semantics)',
    )
    parser.add_argument(
        "--quality", type=int, default=None, help="JPEG quality 1..100 (default 90)"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=list(SPLITS),
        help="which splits to prepare (default: train val); every one is checked before any work",
    )
    parser.add_argument(
        "--shard-size", type=int, default=1000, help="samples per shard (default 1000)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the global shuffle (default 0)"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="val labels (devkit, LOC_val_solution.csv, val.txt); found in RAW when omitted",
    )
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="all",
        help="run both stages (default) or one; Slurm arrays run them as two jobs",
    )
    add_workers_argument(parser)
    add_slice_arguments(parser)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    task_index, num_tasks = resolve_slice(args.task_index, args.num_tasks)
    given = (args.short_side, args.only_shrink, args.quality)
    options = (
        None
        if all(value is None for value in given)
        else ResizeOptions(
            DEFAULT_OPTIONS.short_side if args.short_side is None else args.short_side,
            bool(args.only_shrink),
            DEFAULT_OPTIONS.quality if args.quality is None else args.quality,
        )
    )
    resized, sharded = prepare(
        args.raw,
        args.dst,
        options=options,
        splits=tuple(dict.fromkeys(args.splits)),
        shard_size=args.shard_size,
        seed=args.seed,
        workers=args.workers,
        labels=args.labels,
        task_index=task_index,
        num_tasks=num_tasks,
        stage=args.stage,
    )
    for summary in resized.values():
        if summary.error_file is not None:
            print(f"{summary.failed} bad images listed in {summary.error_file}")
    print(summary_line(resized, sharded, time.perf_counter() - started))
    failed = any(summary.failed for summary in resized.values()) or any(
        summary.failed for summary in sharded.values()
    )
    return 1 if failed else 0
