"""sort-val: move (or hard-link) the 50,000 flat val images into nXXXXXXXX/ class folders.

    python -m preprocess sort-val VAL_DIR --labels ILSVRC2012_devkit_t12.tar.gz
    python -m preprocess sort-val VAL_DIR --labels LOC_val_solution.csv --dry-run
    python -m preprocess sort-val VAL_DIR --labels val.txt --classes LOC_synset_mapping.txt
    python -m preprocess sort-val VAL_DIR --labels LOC_val_solution.csv --link --out VAL_SORTED

The label format (devkit tarball/folder/meta.mat + ground truth, Kaggle CSV, caffe val.txt) is
detected on its own; see preprocess/labels.py.

Safe to rerun: every file is moved with one atomic rename (or one hard link), so the state on
disk is the journal. A file already in its class folder is recognised and left alone; a run
that was interrupted half-way completes on the next run; a rerun after success does nothing.
Before anything moves, the files and the labels are compared: a file with no label, a label
with no file, or a file already in the wrong class folder is an error, and nothing is moved.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from core.classes import read_class_list
from core.errors import UserError
from core.fileio import file_names
from preprocess.labels import read_val_labels, val_stem
from preprocess.progress import progress_bar

logger = logging.getLogger(__name__)

SortMode = Literal["move", "link"]
ERROR_EXAMPLES = 3  # names listed per problem in an error message


@dataclasses.dataclass(frozen=True)
class SortPlan:
    mode: SortMode  # move (rename) or hard-link
    out_dir: Path  # where the class folders are (VAL_DIR itself unless --out)
    operations: list[tuple[Path, Path]]  # (flat source, class-folder destination) still to do
    already_sorted: int  # files found in their class folder already
    class_counts: dict[str, int]  # WNID → files once sorted


@dataclasses.dataclass(frozen=True)
class SortResult:
    plan: SortPlan
    done: int  # files moved or linked by this run
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "val_dir", type=Path, metavar="VAL_DIR", help="folder holding the flat val images"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        action="append",
        required=True,
        metavar="FILE_OR_DEVKIT",
        help="ILSVRC2012_devkit_t12.tar.gz, the devkit folder, LOC_val_solution.csv or val.txt "
        "(give --labels twice for meta.mat and ILSVRC2012_validation_ground_truth.txt)",
    )
    parser.add_argument(
        "--classes",
        type=Path,
        metavar="LOC_synset_mapping.txt",
        help="class list for a caffe val.txt (default: LOC_synset_mapping.txt beside it)",
    )
    parser.add_argument(
        "--link", action="store_true", help="hard-link instead of moving (sources stay)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="put the class folders here (default: VAL_DIR)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; move nothing")
    parser.add_argument(
        "--expect-classes", type=int, default=1000, help="warn unless there are this many classes"
    )
    parser.add_argument(
        "--expect-per-class",
        type=int,
        default=50,
        help="warn unless each class has this many files",
    )


def run(args: argparse.Namespace) -> int:
    labels_source: Path | list[Path] = (
        args.labels[0] if len(args.labels) == 1 else list(args.labels)
    )
    classes = read_class_list(args.classes) if args.classes is not None else None
    result = sort_val(
        args.val_dir,
        read_val_labels(labels_source, classes=classes),
        out_dir=args.out,
        mode="link" if args.link else "move",
        dry_run=args.dry_run,
        expect_classes=args.expect_classes,
        expect_per_class=args.expect_per_class,
        ignore=args.labels,
    )
    plan = result.plan
    verb = {"move": "moved", "link": "linked"}[plan.mode]
    if args.dry_run:
        print(
            f"dry run: would {plan.mode} {len(plan.operations)} files into "
            f"{len(plan.class_counts)} class folders under {plan.out_dir} "
            f"({plan.already_sorted} already sorted); nothing was changed"
        )
    else:
        print(
            f"sort-val: {verb} {result.done} files into {len(plan.class_counts)} class folders "
            f"under {plan.out_dir}, {plan.already_sorted} already sorted, in {result.seconds:.1f} s"
        )
    return 0


def sort_val(
    val_dir: Path,
    labels: Mapping[str, str],
    *,
    out_dir: Path | None = None,
    mode: SortMode = "move",
    dry_run: bool = False,
    expect_classes: int | None = 1000,
    expect_per_class: int | None = 50,
    ignore: Sequence[Path] = (),
) -> SortResult:
    """Plan, check and carry out the sort; with `dry_run`, print the plan instead.

    Args:
        labels: val file stem → WNID (preprocess.labels.read_val_labels).
        ignore: files in VAL_DIR that are not images (e.g. the label file itself).
    """
    started = time.perf_counter()
    plan = plan_sort(val_dir, labels, out_dir=out_dir, mode=mode, ignore=ignore)
    warn_on_unexpected_counts(plan.class_counts, expect_classes, expect_per_class)
    if dry_run:
        for source, destination in plan.operations:
            print(f"{plan.mode} {source} -> {destination}")
        return SortResult(plan, 0, time.perf_counter() - started)
    done = apply_plan(plan)
    return SortResult(plan, done, time.perf_counter() - started)


def plan_sort(
    val_dir: Path,
    labels: Mapping[str, str],
    *,
    out_dir: Path | None = None,
    mode: SortMode = "move",
    ignore: Sequence[Path] = (),
) -> SortPlan:
    """Compare the files in VAL_DIR (flat and already sorted) with the labels; raise UserError on
    any mismatch."""
    val_dir = Path(val_dir)
    if not val_dir.is_dir():
        raise UserError(
            f"VAL_DIR {val_dir} is not a directory: "
            "expected the folder of flat ILSVRC2012_val_*.JPEG files"
        )
    out_dir = Path(out_dir) if out_dir is not None else val_dir
    flat, placed = _list_val_files(val_dir, out_dir, ignore)
    _check_against_labels(val_dir, labels, flat, placed)
    operations = [
        (paths[0], out_dir / labels[stem] / paths[0].name)
        for stem, paths in flat.items()
        if stem not in placed
    ]
    if operations:
        _require_same_filesystem(val_dir, out_dir, mode)
    class_counts = dict(sorted(Counter(labels.values()).items()))
    return SortPlan(
        mode, out_dir, operations, already_sorted=len(placed), class_counts=class_counts
    )


def _list_val_files(
    val_dir: Path, out_dir: Path, ignore: Sequence[Path]
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(stem → flat files in VAL_DIR, stem → files already inside a class folder of OUT_DIR)."""
    ignored = {path.resolve() for path in ignore}
    ignored_names = {path.name for path in ignored}

    # os.scandir, not Path.iterdir + is_file: one syscall per directory instead of one per file
    flat: dict[str, list[Path]] = {}  # stem → flat files with that stem
    for name in _file_names(val_dir):
        if name in ignored_names and (val_dir / name).resolve() in ignored:
            continue  # the label file itself
        flat.setdefault(val_stem(name), []).append(val_dir / name)
    placed: dict[str, list[Path]] = {}  # stem → files already inside a class folder of out_dir
    if out_dir.is_dir():
        folders = sorted(
            entry.name
            for entry in os.scandir(out_dir)
            if entry.is_dir() and not entry.name.startswith(".")
        )
        for folder in folders:
            for name in _file_names(out_dir / folder):
                placed.setdefault(val_stem(name), []).append(out_dir / folder / name)
    return flat, placed


def _check_against_labels(
    val_dir: Path,
    labels: Mapping[str, str],
    flat: dict[str, list[Path]],
    placed: dict[str, list[Path]],
) -> None:
    """UserError listing unlabelled, missing, misplaced and duplicated files; nothing moves."""
    present = {**flat, **placed}.keys()
    unlabelled = sorted(
        path.name
        for found in (flat, placed)
        for stem, paths in found.items()
        if stem not in labels
        for path in paths
    )
    missing = sorted(stem for stem in labels if stem not in present)
    misplaced = sorted(
        f"{path.parent.name}/{path.name} (labelled {labels[stem]})"
        for stem, paths in placed.items()
        if stem in labels
        for path in paths
        if path.parent.name != labels[stem]
    )
    duplicated = sorted(
        stem
        for stem in present
        if len(flat.get(stem, ())) > 1
        or len(placed.get(stem, ())) > 1
        or (stem in flat and stem in placed and not _same_file(flat[stem][0], placed[stem][0]))
    )
    problems = [
        _describe(unlabelled, "file not in the labels", "files not in the labels"),
        _describe(missing, "label with no file", "labels with no file"),
        _describe(misplaced, "file in the wrong class folder", "files in the wrong class folder"),
        _describe(
            duplicated,
            "name present twice (flat and sorted, or two extensions)",
            "names present twice (flat and sorted, or two extensions)",
        ),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise UserError(
            f"{val_dir} and the labels disagree: {'; '.join(problems)}. Nothing was moved: "
            "check --labels is the ILSVRC2012 val ground truth for these files"
        )


def apply_plan(plan: SortPlan) -> int:
    """Carry out the plan: one atomic rename (or hard link) per file. Returns how many were done."""
    made: set[Path] = set()
    done = 0
    bar = progress_bar(len(plan.operations), f"sort-val ({plan.mode})", unit="file")
    for source, destination in plan.operations:
        if destination.parent not in made:
            destination.parent.mkdir(parents=True, exist_ok=True)
            made.add(destination.parent)
        if destination.exists():  # appeared since planning: never overwrite
            raise UserError(f"{destination} appeared while sorting: rerun sort-val to continue")
        if plan.mode == "link":
            os.link(source, destination)
        else:
            os.rename(source, destination)
        done += 1
        bar.update(1)
    bar.close()
    return done


def warn_on_unexpected_counts(
    class_counts: Mapping[str, int], expect_classes: int | None, expect_per_class: int | None
) -> bool:
    """Log one warning line unless there are `expect_classes` classes of `expect_per_class` files
    each."""
    if not class_counts:
        return False
    per_class = set(class_counts.values())
    classes_ok = expect_classes is None or len(class_counts) == expect_classes
    per_class_ok = expect_per_class is None or per_class == {expect_per_class}
    if classes_ok and per_class_ok:
        return False
    spread = f"{min(per_class)}" if len(per_class) == 1 else f"{min(per_class)}-{max(per_class)}"
    logger.warning(
        "labels cover %d classes x %s files each; ILSVRC2012 val is %s x %s: fine for a subset, "
        "otherwise check --labels",
        len(class_counts),
        spread,
        expect_classes,
        expect_per_class,
    )
    return True


def _file_names(directory: Path) -> list[str]:
    """Sorted names of the regular (or symlinked) non-hidden files in `directory`."""
    return file_names(directory)


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _describe(names: list[str], singular: str, plural: str) -> str:
    if not names:
        return ""
    first = ", ".join(names[:ERROR_EXAMPLES]) + (", ..." if len(names) > ERROR_EXAMPLES else "")
    return f"{len(names)} {singular if len(names) == 1 else plural} (first: {first})"


def _require_same_filesystem(val_dir: Path, out_dir: Path, mode: SortMode) -> None:
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if os.stat(val_dir).st_dev != os.stat(existing).st_dev:
        raise UserError(
            f"--out {out_dir} is on another filesystem than {val_dir}: "
            f"a {mode} must stay on one filesystem "
            "(renames and hard links are what make sort-val atomic); "
            "choose --out on the same filesystem"
        )
