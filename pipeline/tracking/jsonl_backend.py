"""RUN_DIR/metrics.jsonl: one JSON row per log call, {"step", "epoch", key: value, ...}.

Always on (rank 0): the curves (pipeline/tracking/plots.py), the demo, the tests and the W&B-less
user read it. A row is appended and flushed at once, so a killed job keeps every row but the one
being written; a torn last line is cut off when the next launch opens the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.tracking.base import Backend, LoggedSteps, RunStatus
from pipeline.tracking.history import METRICS_FILE


class JsonlBackend(Backend):
    name = "jsonl"

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        self.run_id = str(self.path)
        # {step: {key: value}} of the rows at steps >= resume_step (a killed launch's last rows)
        self.held_rows = held_rows(self.path, resume_step)
        self.logged = LoggedSteps(
            (key, step) for step, row in self.held_rows.items() for key in row
        )

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        fresh = self.logged.new(metrics, step)
        if not fresh:
            return
        row = {"step": int(step), "epoch": round(float(epoch), 4)}
        row.update({key: float(value) for key, value in fresh.items()})
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def finish(self, summary: dict[str, float] | None, status: RunStatus) -> None:
        pass  # every row is on disk already


def held_rows(path: Path, resume_step: int | None) -> dict[int, dict[str, float]]:
    """{step: {key: value}} of the rows at steps >= resume_step; cuts a torn last line (a killed
    write)."""
    if resume_step is None or not path.is_file():
        return {}
    text = path.read_text()
    if text and not text.endswith("\n"):
        complete = text[: text.rfind("\n") + 1]
        with open(path, "r+") as handle:
            handle.truncate(len(complete.encode()))
            os.fsync(handle.fileno())
        text = complete
    rows: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        row = json.loads(line)
        if row["step"] >= resume_step:
            values = rows.setdefault(row["step"], {})
            values.update(
                {key: value for key, value in row.items() if key not in ("step", "epoch")}
            )
    return rows
