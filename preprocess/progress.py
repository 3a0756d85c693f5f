"""Shared bits of every long preprocessing command: worker count, tqdm bars, the summary line."""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm


def default_workers() -> int:
    """All cores this process may run on (respects taskset/cgroup CPU affinity, e.g. under
    Slurm)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: all cores this task may use)",
    )


def resolve_workers(workers: int | None) -> int:
    if workers is None:
        return default_workers()
    if workers < 1:
        from core.errors import UserError

        raise UserError(f"--workers must be >= 1, got {workers}")
    return workers


# tqdm's monitor thread only tunes refresh intervals; without it the process holds no extra
# thread when it forks the worker pool.
tqdm.monitor_interval = 0


def progress_bar(total: int | None, description: str, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr (PREPROCESS_PROGRESS=0 turns bars off).

    Slurm log files fill up with carriage-return bars, so when stderr is not a terminal the bar
    updates at most every 30 s.
    """
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.2 if interactive else 30.0,
        disable=os.environ.get("PREPROCESS_PROGRESS") == "0",
        file=sys.stderr,
    )


def rate(count: int, seconds: float) -> float:
    """Items per second, 0 when no time passed."""
    return count / seconds if seconds > 0 else 0.0
