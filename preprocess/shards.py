"""`shard`: class folders → globally shuffled WebDataset tars, manifest, _info.json, DALI indexes.

    python -m preprocess shard train-256/ shards/train --split train --shard-size 1000 --seed 0
    python -m preprocess shard val-256/ shards/val --split val
    sbatch --array=0-7 --wrap "python -m preprocess shard train-256/ shards/train --split train"
    python -m preprocess merge shards/train          # after a sliced (Slurm array) run

What is written, and why:

- Samples are sorted by (WNID, key), then shuffled once with `random.Random(seed)`: DALI's and
  WebDataset's readers shuffle only inside a buffer, so the order across the whole split must be
  mixed at write time. Shard i holds samples [i*shard_size, (i+1)*shard_size): equal counts
  except the last.
- Each tar is byte-deterministic: members `{key}.jpg`, `{key}.cls`, `{key}.json` in that order,
  GNU format, mtime 0, uid/gid 0, empty user/group names, mode 0644, compact sorted-key JSON. The
  same input and seed give byte-identical tars, whatever the worker count or slicing.
- Next to each tar, `imagenet-{split}-{index:06d}.idx` in DALI's tools/wds2idx.py v1.2 format:
  "v1.2 <samples>" then one line per sample listing, per member, "ext offset size name", where
  offset is the member's data offset in the tar. fn.readers.webdataset(index_paths=...) reads it.
- Writes are atomic (temp file + os.replace). The order on disk makes partial work never look
  complete: `.shard_plan.json` first (what every shard must hold), then per shard the .idx, the
  tar and a `.{tar}.json` record (count, bytes, sha256, plan digest); `manifest.json` and
  `_info.json` last. A rerun recomputes the plan and skips a shard only when its record matches
  the plan and the tar's size and sha256 match the record; anything else is rewritten.
- Slurm slices: every task computes the same plan and writes the shards with
  index % num_tasks == task_index plus `manifest.task-{i:04d}-of-{n:04d}.json`; `preprocess merge
  DIR` checks all shards are present and writes manifest.json + _info.json.
- Inputs must be RGB JPEGs (run `preprocess resize` first). The `.json` member records the
  original's name and size from the comment `resize` leaves in each JPEG (else the file's own).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import UserError
from core.fileio import atomic_write_text, remove_stale_temps
from core.shard_format import (
    MANIFEST_NAME,
    SHARD_PATTERN,
    SPLITS,
    TIMM_INFO_NAME,
    Manifest,
    ShardEntry,
    dali_index_name,
    write_manifest,
    write_timm_info,
)
from preprocess.parallel import run_bounded
from preprocess.progress import add_workers_argument, progress_bar, rate, resolve_workers
from preprocess.shard_plan import PLAN_NAME, WritePlan, build_plan, read_class_list, read_plan
from preprocess.shard_tars import TEMP_SUFFIX, ShardResult, record_path, write_shard
from preprocess.slices import add_slice_arguments, in_slice, resolve_slice

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ShardSummary:
    split: str
    samples: int  # samples in this task's shards
    shards: int  # shards this task is responsible for
    written: int
    skipped: int
    failed: int  # shards not written because an input was bad
    seconds: float
    errors: tuple[tuple[str, str], ...] = ()
    manifest: Path | None = None  # manifest.json when this run completed the split

    def line(self) -> str:
        text = (
            f"shard {self.split}: {self.samples} images in {self.shards} shards, "
            f"{self.seconds:.1f} s ({rate(self.samples, self.seconds):.1f} images/s), "
            f"written {self.written}, skipped {self.skipped} already complete, "
            f"failed {self.failed}"
        )
        if self.manifest is not None:
            text += f"; manifest {self.manifest}"
        return text


def _write_shard_chunk(jobs: Sequence[tuple]) -> list[ShardResult]:
    return [write_shard(*job) for job in jobs]


def task_manifest_name(task_index: int, num_tasks: int) -> str:
    return f"manifest.task-{task_index:04d}-of-{num_tasks:04d}.json"


def _remove_stale_outputs(dst: Path, split: str, num_shards: int) -> None:
    """A changed plan: the old manifest and any shard past the new count are no longer true."""
    for name in (MANIFEST_NAME, TIMM_INFO_NAME):
        (dst / name).unlink(missing_ok=True)
    for path in dst.glob(f"imagenet-{split}-*.tar"):
        stem_index = path.stem.rsplit("-", 1)[-1]
        if stem_index.isdigit() and int(stem_index) >= num_shards:
            logger.info("removing %s: the new plan has only %d shards", path, num_shards)
            for stale in (path, dst / dali_index_name(path.name), record_path(dst, path.name)):
                stale.unlink(missing_ok=True)


def owned_shards(task_index: int, num_tasks: int) -> Callable[[Path], bool]:
    """Which output paths are the tars of task `task_index` of `num_tasks`: the `owned` test for
    `remove_stale_temps` (other array tasks may be writing theirs right now)."""

    def owned(path: Path) -> bool:
        match = SHARD_PATTERN.match(path.name)
        return match is not None and in_slice(int(match.group(2)), task_index, num_tasks)

    return owned


def build_manifest(
    plan: WritePlan | dict, entries: Sequence[ShardEntry], class_counts: dict[str, int]
) -> Manifest:
    """The split's Manifest from the plan (object or its JSON) and every shard's entry."""
    data = plan.to_json() if isinstance(plan, WritePlan) else plan
    classes = list(data["classes"])
    return Manifest(
        split=data["split"],
        classes=classes,
        shards=sorted(entries, key=lambda entry: entry.name),
        class_counts={wnid: int(class_counts.get(wnid, 0)) for wnid in classes},
        seed=int(data["seed"]),
        class_names=dict(data.get("class_names") or {}),
        short_side=data.get("short_side"),
        only_shrink=data.get("only_shrink"),
        dataset=str(data.get("dataset") or ""),
        subset=data.get("subset"),
    )


def write_split_metadata(dst: Path, manifest: Manifest) -> Path:
    """manifest.json then _info.json (timm's format for this one split)."""
    path = write_manifest(dst, manifest)
    write_timm_info(dst, {manifest.split: manifest})
    return path


def _check_destination_split(dst: Path, split: str) -> None:
    """Refuse to shard `split` into a directory that holds the other split's plan or manifest."""
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST {dst} is a file: pass a directory for the {split} shards")
    recorded = []
    plan = read_plan(dst)
    if plan is not None:
        recorded.append(plan.get("split"))
    try:
        recorded.append(json.loads((dst / MANIFEST_NAME).read_text()).get("split"))
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    other = next((name for name in recorded if name is not None and name != split), None)
    if other is not None:
        raise UserError(
            f"{dst} holds the {other} split's shards, but this run is --split {split}: "
            f"writing here would replace their manifest; "
            f"pass the {split} directory (e.g. {dst.parent / split})"
        )


def _check_other_split(plan: WritePlan, dst: Path) -> None:
    """Train and val must share one class list, or the same label would mean different classes."""
    for other in SPLITS:
        sibling = dst.parent / other
        if other == plan.split or not (sibling / MANIFEST_NAME).is_file():
            continue
        try:
            other_classes = read_class_list(sibling)
        except UserError:
            continue  # a broken sibling manifest is `verify`'s business, not this run's
        if other_classes != plan.classes:
            missing = sorted(set(other_classes) - set(plan.classes))
            raise UserError(
                f"{plan.split} has {len(plan.classes)} class folders but {sibling} was sharded "
                f"with {len(other_classes)} classes (missing here: {missing[:3]}...): "
                f"labels would disagree between the splits; pass --classes-from {sibling}"
            )


def write_shards(
    src: Path,
    dst: Path,
    split: str,
    *,
    shard_size: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    short_side: int | None = None,
    classes: list[str] | None = None,
    dataset: str = "",
    subset: dict | None = None,
) -> ShardSummary:
    """Shard class folders `src` into `dst` (this task's shards only); see the module doc.

    Args:
        classes: the full class list (label = position); default: SRC's folders, checked
            against the other split's manifest next to DST when there is one.
        dataset, subset: what `prepare` read and chose, recorded in the manifest.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    _check_destination_split(dst, split)
    plan = build_plan(src, split, shard_size, seed, short_side, classes, dataset, subset)
    if classes is None:
        _check_other_split(plan, dst)
    prepare_destination(dst, plan, task_index, num_tasks)
    mine = [index for index in range(len(plan.shards)) if in_slice(index, task_index, num_tasks)]
    results = write_planned_shards(src, dst, plan, mine, workers)
    errors = tuple(error for result in results for error in result.errors)
    for source, reason in errors:
        print(f"{source}: {reason}")
    done = [result for result in results if result.entry is not None]
    failed = len(results) - len(done)
    manifest_path = None
    if not failed:
        manifest_path = write_task_manifest(dst, plan, done, task_index, num_tasks)
    return ShardSummary(
        split=split,
        samples=sum(len(plan.shards[index]) for index in mine),
        shards=len(mine),
        written=sum(1 for result in done if not result.skipped),
        skipped=sum(1 for result in done if result.skipped),
        failed=failed,
        seconds=time.perf_counter() - started,
        errors=errors,
        manifest=manifest_path,
    )


def prepare_destination(dst: Path, plan: WritePlan, task_index: int, num_tasks: int) -> None:
    """Make DST, remove this task's stale temps, and (re)write the plan when it changed."""
    dst.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(
        dst, TEMP_SUFFIX, None if num_tasks == 1 else owned_shards(task_index, num_tasks)
    )
    previous = read_plan(dst)
    if previous is None or previous.get("plan_sha256") != plan.digest:
        if previous is not None:
            logger.info(
                "%s: input, seed or shard size changed since the last run: rewriting every shard",
                dst,
            )
        _remove_stale_outputs(dst, plan.split, len(plan.shards))
        atomic_write_text(
            dst / PLAN_NAME, json.dumps(plan.to_json(), indent=1, sort_keys=True) + "\n"
        )


def write_planned_shards(
    src: Path, dst: Path, plan: WritePlan, mine: Sequence[int], workers: int | None
) -> list[ShardResult]:
    """Write the shards `mine` of `plan` on a bounded process pool, with a progress bar."""
    split = plan.split
    jobs = [([(src, dst, split, index, plan.shards[index], plan.digest)]) for index in mine]
    results: list[ShardResult] = []
    samples_mine = sum(len(plan.shards[index]) for index in mine)
    with progress_bar(samples_mine, f"shard {split}") as bar:
        for chunk in run_bounded(
            _write_shard_chunk, jobs, min(resolve_workers(workers), max(1, len(jobs)))
        ):
            for result in chunk:
                results.append(result)
                bar.update(len(plan.shards[result.index]))
    return results


def write_task_manifest(
    dst: Path, plan: WritePlan, done: Sequence[ShardResult], task_index: int, num_tasks: int
) -> Path | None:
    """manifest.json + _info.json for a whole run (returns the manifest's path), or this
    slice's `manifest.task-*.json` for `merge` (returns None)."""
    class_counts: collections.Counter = collections.Counter()
    for result in done:
        class_counts.update(result.class_counts)
    if num_tasks == 1:
        return write_split_metadata(
            dst, build_manifest(plan, [r.entry for r in done], class_counts)
        )
    partial = {
        "task_index": task_index,
        "num_tasks": num_tasks,
        "plan_sha256": plan.digest,
        "shards": [
            dataclasses.asdict(result.entry) for result in sorted(done, key=lambda r: r.index)
        ],
        "class_counts": dict(sorted(class_counts.items())),
    }
    atomic_write_text(
        dst / task_manifest_name(task_index, num_tasks),
        json.dumps(partial, indent=1, sort_keys=True) + "\n",
    )
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", type=Path, help="class folders: SRC/n01440764/*.JPEG (resized RGB JPEGs)"
    )
    parser.add_argument(
        "dst", type=Path, help="output directory for this split's tars, e.g. shards/train"
    )
    parser.add_argument(
        "--split", required=True, choices=SPLITS, help="which split this is (names the tars)"
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        help="samples per shard, the last may hold fewer (default 1000)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the global shuffle (default 0)"
    )
    parser.add_argument(
        "--classes-from",
        type=Path,
        default=None,
        help="the full class list when SRC lacks some class folders: a shard directory, a "
        "LOC_synset_mapping.txt or class folders (default: SRC's own folders)",
    )
    add_workers_argument(parser)
    add_slice_arguments(parser)


def run(args: argparse.Namespace) -> int:
    task_index, num_tasks = resolve_slice(args.task_index, args.num_tasks)
    summary = write_shards(
        args.src,
        args.dst,
        args.split,
        shard_size=args.shard_size,
        seed=args.seed,
        workers=args.workers,
        task_index=task_index,
        num_tasks=num_tasks,
        classes=read_class_list(args.classes_from) if args.classes_from is not None else None,
    )
    print(summary.line())
    if summary.failed:
        print(
            f"shard: {summary.failed} shards not written because of the bad inputs above",
            flush=True,
        )
        return 1
    if num_tasks > 1:
        print(
            f"task {task_index} of {num_tasks} done: when every task has finished, "
            f"run `python -m preprocess merge {args.dst}`"
        )
    return 0
