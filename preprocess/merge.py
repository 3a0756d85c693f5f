"""`merge`: combine the per-task manifests of a sliced (Slurm array) `shard` run into manifest.json.

    sbatch --array=0-7 --wrap "python -m preprocess shard train-256/ shards/train --split train"
    python -m preprocess merge shards/train        # once every array task has finished

Every task wrote the same `.shard_plan.json` and its own `manifest.task-{i:04d}-of-{n:04d}.json`.
Merging checks that the partial manifests belong to that plan, that together they list every
planned shard with the planned count, and that each tar is on disk with the recorded size; only
then does it write manifest.json and _info.json (byte-identical to a single-task run).
`preprocess verify DIR` rehashes every tar afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
from pathlib import Path

from core.errors import UserError
from core.shard_format import ShardEntry, shard_name, write_both_splits_info
from preprocess.shard_plan import PLAN_NAME, read_plan
from preprocess.shards import build_manifest, write_split_metadata

logger = logging.getLogger(__name__)

TASK_MANIFEST_PATTERN = re.compile(r"^manifest\.task-(\d{4})-of-(\d{4})\.json$")


def merge_manifests(directory: Path) -> Path:
    """Write DIR/manifest.json + _info.json from the partial manifests; UserError if incomplete."""
    directory = Path(directory)
    plan = read_plan(directory)
    if plan is None:
        raise UserError(
            f"{directory}: no {PLAN_NAME}: expected the output directory of a sliced "
            f"`preprocess shard ... --num-tasks N` run"
        )
    entries, class_counts, tasks_seen, num_tasks = _read_partial_manifests(directory, plan)
    _check_partials_cover_plan(directory, plan, entries, tasks_seen, num_tasks)
    manifest = build_manifest(
        plan,
        [entries[shard_name(plan["split"], i)] for i in range(len(plan["shard_counts"]))],
        class_counts,
    )
    return write_split_metadata(directory, manifest)


def merge_targets(directory: Path) -> list[Path]:
    """DIR itself when it holds a shard plan, else its train/ and val/ (a `prepare` output)."""
    directory = Path(directory)
    if (directory / PLAN_NAME).is_file():
        return [directory]
    targets = [
        directory / split for split in ("train", "val") if (directory / split / PLAN_NAME).is_file()
    ]
    return targets or [directory]  # merge_manifests explains what is missing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        type=Path,
        help="the DST of a sliced `shard` run, or of a sliced `prepare` (merges train/ and val/)",
    )


def run(args: argparse.Namespace) -> int:
    for target in merge_targets(args.directory):
        path = merge_manifests(target)
        plan = read_plan(target)
        print(f"merge: {plan['num_samples']} samples in {plan['num_shards']} shards; wrote {path}")
    write_both_splits_info(args.directory)  # a sliced `prepare`: timm's info for both splits
    return 0


def _read_partial_manifests(
    directory: Path, plan: dict
) -> tuple[dict[str, ShardEntry], collections.Counter, set[int], int]:
    """(shard name -> entry, samples per class, tasks seen, task count) of the current plan's
    manifest.task-*.json; UserError when one is unreadable, runs are mixed, or there is none."""
    entries: dict[str, ShardEntry] = {}
    class_counts: collections.Counter = collections.Counter()
    tasks_seen: set[int] = set()
    num_tasks = None
    for path in sorted(directory.iterdir()):
        match = TASK_MANIFEST_PATTERN.match(path.name)
        if not match:
            continue
        try:
            partial = json.loads(path.read_text())
            partial["shards"], partial["class_counts"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(
                f"{path}: unreadable partial manifest ({err}): "
                f"rerun shard task {int(match.group(1))} of {int(match.group(2))} "
                "(it rewrites it), then merge again"
            ) from None
        if partial.get("plan_sha256") != plan["plan_sha256"]:
            logger.warning(
                "%s belongs to an older plan (other input, seed or shard size): ignored", path
            )
            continue
        if num_tasks is not None and int(match.group(2)) != num_tasks:
            raise UserError(
                f"{directory}: partial manifests from runs with {num_tasks} "
                f"and {int(match.group(2))} tasks: "
                f"delete the manifest.task-*.json of the run you abandoned and merge again"
            )
        num_tasks = int(match.group(2))
        tasks_seen.add(int(match.group(1)))
        for shard in partial["shards"]:
            entries[shard["name"]] = ShardEntry(**shard)
        class_counts.update(partial["class_counts"])
    if num_tasks is None:
        raise UserError(
            f"{directory}: no manifest.task-*.json for the current plan: run the shard tasks first"
        )
    return entries, class_counts, tasks_seen, num_tasks


def _check_partials_cover_plan(
    directory: Path,
    plan: dict,
    entries: dict[str, ShardEntry],
    tasks_seen: set[int],
    num_tasks: int,
) -> None:
    """Every task reported and every planned shard is on disk as recorded; else UserError."""
    problems = []
    missing_tasks = sorted(set(range(num_tasks)) - tasks_seen)
    if missing_tasks:
        problems.append(
            f"tasks {missing_tasks} of {num_tasks} have not finished (no partial manifest)"
        )
    for index, count in enumerate(plan["shard_counts"]):
        name = shard_name(plan["split"], index)
        entry = entries.get(name)
        path = directory / name
        if entry is None:
            if index % num_tasks not in missing_tasks:
                problems.append(f"{name}: planned but listed by no task")
        elif entry.count != count:
            problems.append(f"{name}: holds {entry.count} samples, the plan says {count}")
        elif not path.is_file() or path.stat().st_size != entry.bytes:
            problems.append(f"{name}: missing or not {entry.bytes} bytes as its task recorded")
    if problems:
        raise UserError(
            f"{directory}: cannot merge: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            + ": rerun the unfinished tasks (the same command resumes), then merge again"
        )
