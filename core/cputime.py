"""CPU seconds of a process tree, for the benchmarks and the doctor (stdlib only: FFCV's venv
imports it too)."""

from __future__ import annotations

import os
from pathlib import Path


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads: DALI, FFCV) and its live
    descendants (DataLoader workers), from /proc. Unlike images/s it barely moves when others
    load the machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, frontier = 0.0, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        total += times.get(pid, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total
