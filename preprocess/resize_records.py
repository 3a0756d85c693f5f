"""What a resize leaves beside its outputs, to resume and to be checked.

DST/resize_settings.json (written before the first output: a rerun with other settings is
refused), DST/resize_manifest.json (planned images per class folder), and per task
resize.task-{i:04d}-of-{n:04d}.json, its checksum list and its error list;
`check_resize_complete` sums the task records of the last finished run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.fileio import atomic_write_text
from preprocess.progress import rate
from preprocess.resize_worker import DEFAULT_OPTIONS, ResizeOptions

ERRORS_NAME = "resize_errors.txt"


FOLDER_MANIFEST_NAME = "resize_manifest.json"


FOLDER_MANIFEST_KIND = "resized-folders"


SETTINGS_NAME = (
    "resize_settings.json"  # written when a resize starts: what every output is made with
)


TASK_RECORD_PATTERN = re.compile(r"^resize\.task-(\d{4})-of-(\d{4})\.json$")


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


def checksum_file_path(dst: Path, task_index: int = 0, num_tasks: int = 1) -> Path:
    """DST/resize_checksums.task-{i:04d}-of-{n:04d}.sha256: `sha256sum -c` format, one line per
    output."""
    return Path(dst) / f"resize_checksums.task-{task_index:04d}-of-{num_tasks:04d}.sha256"


def error_file_path(dst: Path, task_index: int = 0, num_tasks: int = 1) -> Path:
    """DST/resize_errors.txt, or one file per task for Slurm slices."""
    if num_tasks == 1:
        return dst / ERRORS_NAME
    return dst / f"resize_errors.task-{task_index:04d}-of-{num_tasks:04d}.txt"


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
    runs, unreadable = _read_task_records(dst)
    num_tasks = _newest_complete_run(dst, runs, unreadable)
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


def _read_task_records(dst: Path) -> tuple[dict[int, dict[int, tuple[dict, float]]], list[str]]:
    """({num_tasks: {task_index: (record, mtime)}}, names of unreadable records) in DST."""
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
    return runs, unreadable


def _newest_complete_run(
    dst: Path, runs: dict[int, dict[int, tuple[dict, float]]], unreadable: list[str]
) -> int:
    """The task count of the newest run whose every task left a record; UserError naming the
    missing tasks when none."""
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
    return max(complete, key=lambda n: max(mtime for _, mtime in runs[n].values()))
