"""`prepare`: raw data (ImageNet in any layout, CIFAR, the MNIST family) → training-ready shards.

    python -m preprocess prepare /data/raw /data/imagenet --short-side 256 --shard-size 1000
    python -m preprocess prepare raw/ out/ --labels LOC_val_solution.csv --workers 16
    python -m preprocess prepare cifar-10-python.tar.gz /data/cifar10      # 32 px, as shipped
    python -m preprocess prepare mnist/ /data/mnist --dataset mnist          # the four IDX .gz
    python -m preprocess prepare /data/raw /data/in100 --classes 100 --random-classes --seed 0
    python -m preprocess prepare /data/raw /data/nette --classes imagenette
    # the AlexNet blog post's split: the 50,000 val images as train, 10 train images per class
    # as val
    python -m preprocess prepare /data/raw /data/blog --train-from-val --val-from-train 10

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
    _info.json                                 timm's dataset info for both splits (root=DST)
    LOC_synset_mapping.txt                     class names (copied from the raw data when present
                                               and every class is taken; else written)
    prepare.json                               the dataset and subset rule: a rerun with others
                                               is refused instead of mixing them
    folders/{split}/selection.json             with a subset: what it chose (the manifest's
                                               `subset`, which `verify` re-derives)

Other datasets (docs/datasets.md): CIFAR-10/100 (`cifar-10-python.tar.gz`,
`cifar-100-python.tar.gz`; `--dataset cifar100-coarse` for the 20 superclasses) and MNIST,
Fashion-MNIST, KMNIST (the four IDX files) are read as downloaded; their test split becomes
val, class k is folder `n%08d` (`core.classes.class_wnid`) with the real names in the
manifest, and their images keep their size (32 / 28 px) unless --short-side says otherwise, as
near-lossless quality 100, 4:4:4 JPEGs (`default_options`; the bounds are in docs/datasets.md).
Subsets of any of them (preprocess/subsets.py): --classes, --random-classes, --train-per-class,
--val-per-class, --val-from-train, --train-from-val, all seeded by --seed.

Raw tars are streamed (the train tar's 1000 inner tars too); nothing is extracted. Every class
gets a folder in both splits, even with no images, so class index = sorted-WNID position agrees
between train and val. A rerun skips finished images and complete shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.fileio import atomic_write_text
from core.shard_format import SPLITS, write_both_splits_info
from preprocess import sources
from preprocess.images import SUBSAMPLING
from preprocess.prepare_records import (
    SELECTION_NAME,
    check_prepare_record,
    check_resized,
    count_folder_images,
    read_selection,
    write_class_names,
)
from preprocess.progress import add_workers_argument, rate
from preprocess.resize import resize_stream
from preprocess.resize_records import (
    ResizeCompletion,
    ResizeSummary,
    check_settings_match,
    write_folder_manifest,
)
from preprocess.resize_worker import DEFAULT_OPTIONS, ResizeOptions
from preprocess.shards import ShardSummary, write_shards
from preprocess.slices import add_slice_arguments, resolve_slice
from preprocess.subsets import BUILTIN_CLASS_LISTS, Subset

logger = logging.getLogger(__name__)

STAGES = ("all", "resize", "shard")


def default_options(dataset: str) -> ResizeOptions:
    """The resize settings when none are given: ImageNet's 256 px short side at quality 90; the
    small datasets keep their size (no upscaling) as near-lossless quality 100, 4:4:4 JPEGs.

    Why not less: on 32 px natural images, quality 95 errs by up to 27 levels (mean 2.4) and
    4:2:0 by up to 118, while quality 100 with 4:4:4 stays within 4 (mean 0.45) for 2.8 KB per
    CIFAR image instead of 1.7 KB: 170 MB for all of CIFAR-10 instead of 100 MB, nothing next
    to what a wrong pixel costs a published CIFAR number. (Measured with resize_pixels on 2,000
    photo crops, tests/preprocess/smallfixtures.py; test_small_datasets.py asserts the bounds.)
    """
    size = sources.native_image_size(dataset)
    if size is None:
        return DEFAULT_OPTIONS
    return ResizeOptions(short_side=size, only_shrink=False, quality=100, subsampling="4:4:4")


def _first_checked(images: Iterator[Any]) -> Iterator[Any]:
    """Start a raw stream now, so that its errors (missing labels, no images) surface up front."""
    first = next(images, None)
    return images if first is None else itertools.chain([first], images)


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Everything `prepare` takes besides RAW and DST (the CLI's flags)."""

    # resize settings; None: the dataset's defaults (`default_options`) for resizing, and for a
    # shard-only stage whatever the resize stage recorded (given options must match the record)
    resize: ResizeOptions | None = None
    shard_size: int = 1000  # samples per shard, the last may hold fewer
    seed: int = 0  # the global shuffle, --random-classes and the per-class draws
    workers: int | None = None  # worker processes; None: preprocess.progress's default
    labels: Path | None = None  # val labels (devkit, Kaggle CSV, val.txt); None: found in RAW
    task_index: int = 0  # this task's slice of a Slurm array
    num_tasks: int = 1  # tasks in the array
    stage: str = "all"  # one of STAGES
    splits: tuple[str, ...] = SPLITS  # which splits to prepare
    dataset: str | None = None  # one of sources.DATASETS; None: detected from RAW
    subset: Subset | None = None  # which classes and images to take; None: all

    @property
    def resizes(self) -> bool:
        return self.stage in ("all", "resize")

    @property
    def shards(self) -> bool:
        return self.stage in ("all", "shard")


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """What RAW holds and what this run takes of it, found once before any work."""

    dataset: str  # one of sources.DATASETS
    classes: list[str]  # the classes taken (a subset's, or all), sorted WNIDs
    subset: Subset | None  # None when everything is taken
    resize: ResizeOptions  # the options asked for, else the dataset's defaults


def prepare(
    raw: Path, dst: Path, options: PrepareOptions = PrepareOptions()
) -> tuple[dict[str, ResizeSummary], dict[str, ShardSummary]]:
    """Run the resize and/or shard stages for `options.splits`; returns their summaries by
    split."""
    raw, dst = Path(raw), Path(dst)
    check_prepare_options(raw, dst, options)
    found = identify_raw(raw, options)
    streams: dict[str, Iterator[Any]] = {}
    selections: dict[str, sources.Selection] = {}
    completions: dict[str, ResizeCompletion] = {}
    if options.resizes:
        streams, selections = open_raw_streams(raw, dst, found, options)
    else:
        completions = {
            split: check_resized(dst / "folders" / split, options.resize)
            for split in options.splits
        }
    record_dataset(raw, dst, found)
    resized: dict[str, ResizeSummary] = {}
    sharded: dict[str, ShardSummary] = {}
    for split in options.splits:
        folder = dst / "folders" / split
        if options.resizes:
            resized[split] = resize_split(
                folder, streams.pop(split), selections.get(split), found, options
            )
        if options.shards:
            sharded[split] = shard_split(dst, split, completions.get(split), found, options)
    if options.num_tasks == 1 and sharded:
        write_both_splits_info(dst)  # after both manifests: a partial DST has no such file
    return resized, sharded


def check_prepare_options(raw: Path, dst: Path, options: PrepareOptions) -> None:
    """Refuse a stage, split list, slicing, RAW or DST that cannot work, before reading RAW."""
    if options.stage not in STAGES:
        raise UserError(f"--stage {options.stage!r}: expected one of {', '.join(STAGES)}")
    splits = options.splits
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise UserError(f"--splits {' '.join(splits)}: expected one or both of {', '.join(SPLITS)}")
    if options.num_tasks > 1 and options.stage == "all":
        raise UserError(
            f"prepare with {options.num_tasks} tasks needs two array jobs, because sharding "
            f"needs every resize task finished: run with --stage resize, then (afterany) with "
            f"--stage shard, then `python -m preprocess merge {dst}`"
        )
    if not raw.exists():
        raise UserError(f"{raw} does not exist: pass the folder holding the raw download")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST {dst} is a file: pass a directory (it is created when missing)")
    if options.resize is not None:
        options.resize.check()


def identify_raw(raw: Path, options: PrepareOptions) -> RawDataset:
    """The dataset RAW holds, its classes and the subset's choice of them (checked)."""
    subset = options.subset
    subset = subset if subset is not None and not subset.is_everything else None
    if subset is not None:
        subset.check()
    layout = sources.detect_layout(raw)
    dataset = sources.detect_dataset(raw, options.dataset)
    every_class = sources.raw_classes(raw, dataset)
    classes = subset.choose_classes(every_class) if subset is not None else every_class
    logger.info(
        "%s: %s (%s layout), %d of %d classes", raw, dataset, layout, len(classes), len(every_class)
    )
    return RawDataset(dataset, classes, subset, options.resize or default_options(dataset))


def open_raw_streams(
    raw: Path, dst: Path, found: RawDataset, options: PrepareOptions
) -> tuple[dict[str, Iterator[Any]], dict[str, sources.Selection]]:
    """(split -> its started raw stream, split -> the subset's selection). Every split's source
    is checked before any work: a missing val fails now, not after train."""
    streams: dict[str, Iterator[Any]] = {}
    selections: dict[str, sources.Selection] = {}
    for split in options.splits:
        check_settings_match(dst / "folders" / split, found.resize)
        if found.subset is not None:
            selections[split] = sources.select_images(
                raw, split, found.subset, labels=options.labels, dataset=found.dataset
            )
        streams[split] = _first_checked(
            sources.iter_raw_images(
                raw,
                split,
                labels=options.labels,
                task_index=options.task_index,
                num_tasks=options.num_tasks,
                dataset=found.dataset,
                selection=selections.get(split),
            )
        )
    return streams, selections


def record_dataset(raw: Path, dst: Path, found: RawDataset) -> None:
    """DST/prepare.json (refusing another dataset or subset) and DST/LOC_synset_mapping.txt."""
    subset = found.subset
    check_prepare_record(
        dst, {"dataset": found.dataset, "subset": subset.rule() if subset is not None else None}
    )
    names = sources.raw_class_names(raw, found.dataset)
    write_class_names(
        raw,
        dst,
        {wnid: names[wnid] for wnid in found.classes if wnid in names},
        copy_raw=subset is None,
    )


def resize_split(
    folder: Path,
    stream: Iterator[Any],
    selection: sources.Selection | None,
    found: RawDataset,
    options: PrepareOptions,
) -> ResizeSummary:
    """The resize stage of one split: a folder per class (even empty), the subset's record,
    then the stream resized into DST/folders/{split}."""
    for wnid in found.classes:
        (folder / wnid).mkdir(parents=True, exist_ok=True)
    if selection is not None:  # what `shard` records in the manifest, and `verify` checks
        atomic_write_text(
            folder / SELECTION_NAME,
            json.dumps(selection.record, indent=1, sort_keys=True) + "\n",
        )
    return resize_stream(
        stream,
        folder,
        found.resize,
        workers=options.workers,
        task_index=options.task_index,
        num_tasks=options.num_tasks,
        description=f"resize {folder.name}",
    )


def shard_split(
    dst: Path,
    split: str,
    completion: ResizeCompletion | None,
    found: RawDataset,
    options: PrepareOptions,
) -> ShardSummary:
    """The shard stage of one split: the resize tasks' error lists, the folder manifest, then
    the shards in DST/{split}."""
    folder = dst / "folders" / split
    if completion is None:
        completion = check_resized(folder, None)
    for error_file in completion.error_files:
        count = len(error_file.read_text().splitlines()) if error_file.is_file() else 0
        print(f"{split}: {count} bad images left out, listed in {error_file}")
    # planned counts (bad images included, so `verify` reports them) and recorded settings
    planned = {wnid: 0 for wnid in count_folder_images(folder)}
    planned.update(completion.class_counts)
    write_folder_manifest(folder, planned, completion.options)
    return write_shards(
        folder,
        dst / split,
        split,
        shard_size=options.shard_size,
        seed=options.seed,
        workers=options.workers,
        task_index=options.task_index,
        num_tasks=options.num_tasks,
        short_side=completion.options.short_side,
        dataset=found.dataset,
        subset=read_selection(folder) if found.subset is not None else None,
    )


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
        help="raw data: the ILSVRC2012 tars, the Kaggle download, train/ val/ class folders, "
        "cifar-10-python.tar.gz / cifar-100-python.tar.gz, or the four MNIST-format IDX files",
    )
    parser.add_argument(
        "dst", type=Path, help="output: folders/, train/, val/ and LOC_synset_mapping.txt go here"
    )
    parser.add_argument(
        "--dataset",
        choices=sources.DATASETS,
        default=None,
        help="what RAW holds (default: detected); cifar100-coarse takes CIFAR-100's 20 "
        "superclasses; the MNIST family needs it when its files are not the genuine downloads",
    )
    _add_resize_arguments(parser)
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
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice: the global shuffle, --random-classes and the "
        "per-class draws (default 0)",
    )
    _add_subset_arguments(parser)
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


def _add_resize_arguments(parser: argparse.ArgumentParser) -> None:
    """--short-side/--only-shrink/--quality/--subsampling, None when not given (the dataset's
    defaults fill in)."""
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="output short side in pixels (default 256; CIFAR/MNIST keep their 32/28 px; the "
        "shard stage uses what resize recorded)",
    )
    parser.add_argument(
        "--only-shrink",
        action="store_true",
        default=None,
        help='never enlarge small images (ImageMagick "256^>" semantics)',
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=None,
        help="JPEG quality 1..100 (default 90; CIFAR/MNIST 100, near-lossless)",
    )
    parser.add_argument(
        "--subsampling",
        choices=sorted(SUBSAMPLING),
        default=None,
        help="JPEG chroma subsampling (default 4:2:0; CIFAR/MNIST 4:4:4)",
    )


def _add_subset_arguments(parser: argparse.ArgumentParser) -> None:
    """--classes, --random-classes and the per-class image counts (preprocess/subsets.py)."""
    subset = parser.add_argument_group(
        "subsets", "which classes and images to take (recorded in the manifest; verify checks it)"
    )
    subset.add_argument(
        "--classes",
        default="",
        metavar="N|FILE|NAME",
        help="the first N sorted WNIDs, a file of WNIDs, or a built-in list: "
        + ", ".join(BUILTIN_CLASS_LISTS),
    )
    subset.add_argument(
        "--random-classes",
        action="store_true",
        help="with --classes N: draw the N classes with --seed instead of taking the first N",
    )
    subset.add_argument(
        "--train-per-class", type=int, default=0, metavar="M", help="M train images per class"
    )
    subset.add_argument(
        "--val-per-class", type=int, default=0, metavar="K", help="K val images per class"
    )
    subset.add_argument(
        "--val-from-train",
        type=int,
        default=0,
        metavar="K",
        help="val = K raw train images per class, held out of train (raw val is not used)",
    )
    subset.add_argument(
        "--train-from-val",
        action="store_true",
        help="train = the raw val split (with --val-from-train K: the AlexNet blog post's split)",
    )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    task_index, num_tasks = resolve_slice(args.task_index, args.num_tasks)
    dataset = sources.detect_dataset(args.raw, args.dataset) if args.raw.exists() else None
    subset = Subset.build(
        args.classes,
        random_classes=args.random_classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        val_from_train=args.val_from_train,
        train_from_val=args.train_from_val,
        seed=args.seed,
    )
    options = PrepareOptions(
        resize=resize_options_from(args, dataset),
        splits=tuple(dict.fromkeys(args.splits)),
        shard_size=args.shard_size,
        seed=args.seed,
        workers=args.workers,
        labels=args.labels,
        task_index=task_index,
        num_tasks=num_tasks,
        stage=args.stage,
        dataset=dataset,
        subset=subset,
    )
    resized, sharded = prepare(args.raw, args.dst, options)
    for summary in resized.values():
        if summary.error_file is not None:
            print(f"{summary.failed} bad images listed in {summary.error_file}")
    print(summary_line(resized, sharded, time.perf_counter() - started))
    failed = any(summary.failed for summary in resized.values()) or any(
        summary.failed for summary in sharded.values()
    )
    return 1 if failed else 0


def resize_options_from(args: argparse.Namespace, dataset: str | None) -> ResizeOptions | None:
    """The resize flags given, the dataset's defaults for the rest; None when none is given."""
    defaults = default_options(dataset) if dataset is not None else DEFAULT_OPTIONS
    given = (args.short_side, args.only_shrink, args.quality, args.subsampling)
    if all(value is None for value in given):
        return None
    return ResizeOptions(
        defaults.short_side if args.short_side is None else args.short_side,
        bool(args.only_shrink),
        defaults.quality if args.quality is None else args.quality,
        defaults.subsampling if args.subsampling is None else args.subsampling,
    )
