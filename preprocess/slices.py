"""Slurm-array slicing: split any preprocessing command into disjoint, deterministic slices.

    sbatch --array=0-9 --wrap "python -m preprocess shard SRC DST --split train"   # 10 tasks
    python -m preprocess shard SRC DST --split train --task-index 3 --num-tasks 10  # by hand

Every task enumerates the same work in the same order and keeps item i when
i % num_tasks == task_index, so slices are disjoint, complete and independent of timing.
Without flags, the slice comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT, with
SLURM_ARRAY_TASK_MIN subtracted and SLURM_ARRAY_TASK_STEP divided out (`--array=1-10` has ids
1..10 → indices 0..9; `--array=1-9:2` has ids 1,3,5,7,9 → indices 0..4). An id list such as
`--array=0,4,7` has no single step and is refused on every task: use a range.
"""

from __future__ import annotations

import argparse
import os

from core.errors import UserError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"{name}={value!r} is not an integer: unset it or pass --task-index/--num-tasks"
        ) from None


def _slurm_index(slurm_id: int, num_tasks: int | None) -> int:
    """This task's 0-based index in its array: (id - min) / step, checked to be a contiguous
    range."""
    minimum = _env_int("SLURM_ARRAY_TASK_MIN") or 0
    maximum = _env_int("SLURM_ARRAY_TASK_MAX")
    step = _env_int("SLURM_ARRAY_TASK_STEP") or 1
    if step < 1:
        raise UserError(
            f"SLURM_ARRAY_TASK_STEP={step}: expected >= 1; pass --task-index/--num-tasks"
        )
    if (
        num_tasks is not None
        and maximum is not None
        and (maximum - minimum) // step + 1 != num_tasks
    ):
        raise UserError(
            f"the Slurm array ids {minimum}..{maximum} (step {step}) are not a range of "
            f"{num_tasks} tasks (SLURM_ARRAY_TASK_COUNT): an id list like --array=0,4,7 cannot be "
            f"sliced; submit a range (--array=0-{num_tasks - 1}) or pass --task-index/--num-tasks"
        )
    if (slurm_id - minimum) % step:
        raise UserError(
            f"SLURM_ARRAY_TASK_ID={slurm_id} is not min {minimum} + a multiple of step {step}: "
            f"submit a range (--array=A-B[:S]) or pass --task-index/--num-tasks"
        )
    return (slurm_id - minimum) // step


def resolve_slice(task_index: int | None, num_tasks: int | None) -> tuple[int, int]:
    """(task_index, num_tasks) from the flags, else from the Slurm array variables, else (0, 1)."""
    slurm_count = _env_int("SLURM_ARRAY_TASK_COUNT")
    if num_tasks is None:
        num_tasks = slurm_count
    if task_index is None:
        slurm_id = _env_int("SLURM_ARRAY_TASK_ID")
        if slurm_id is not None:
            task_index = _slurm_index(slurm_id, slurm_count)
    if num_tasks is None and task_index is None:
        return 0, 1
    if num_tasks is None:
        raise UserError(f"task index {task_index} given without a task count: pass --num-tasks N")
    if task_index is None:
        raise UserError(
            f"{num_tasks} tasks given without a task index: "
            f"pass --task-index I (0 <= I < {num_tasks})"
        )
    if num_tasks < 1:
        raise UserError(f"--num-tasks must be >= 1, got {num_tasks}")
    if not 0 <= task_index < num_tasks:
        raise UserError(
            f"task index {task_index} is outside 0..{num_tasks - 1}: "
            f"for a Slurm array --array=A-B the index is "
            f"(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP"
        )
    return task_index, num_tasks


def in_slice(index: int, task_index: int, num_tasks: int) -> bool:
    """True when work item `index` belongs to task `task_index` of `num_tasks` (round robin)."""
    return index % num_tasks == task_index


def add_slice_arguments(parser: argparse.ArgumentParser) -> None:
    """--task-index/--num-tasks, shared by resize, shard and prepare."""
    group = parser.add_argument_group("Slurm array slices")
    group.add_argument(
        "--task-index",
        type=int,
        default=None,
        help="this task's slice, 0-based "
        "(default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else 0)",
    )
    group.add_argument(
        "--num-tasks",
        type=int,
        default=None,
        help="number of slices (default: SLURM_ARRAY_TASK_COUNT, else 1)",
    )
