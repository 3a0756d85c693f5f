"""The one small interface every tracker backend implements, and the rule they share on resume.

    class MyBackend(Backend):
        name = "mine"
        def log(self, metrics, step, epoch): ...       # the trainer's rows, as they come
        def log_files(self, paths, folder): ...        # plots (PNG), exported weights: at the end
        def finish(self, summary, status): ...         # "FINISHED" or "KILLED" (stopped, resumable)

A fourth (or fifth) tracker is one module with one such class, plus a line in
pipeline/tracking/tracker.py's `build_backends`.

On resume a backend never holds a (key, step) twice: the steps that the stopped launch logged
after its last checkpoint are logged again by the resumed launch (with the same values for
every metric that is a function of the weights: the resume is bit-exact), and MLflow cannot
delete a logged value (mlflow/mlflow#2973). So, as W&B does (it drops a step below its current
one), the first value logged at a (key, step) stands, and every backend reads what it already
holds at steps >= the resume step before it logs (`LoggedSteps`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

RunStatus = Literal["FINISHED", "KILLED"]  # KILLED: stopped by a signal, resumable


class Backend:
    """A tracker backend on global rank 0; the trainer talks to the fan-out (tracker.py)."""

    name: str = "backend"
    run_id: str = ""  # what a resumed launch passes back to continue the same run ("": none)

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        """Scalars at an optimizer step (the x axis of every backend); epoch rides along."""

    def log_files(self, paths: list[Path], folder: str) -> None:
        """Files under `folder` ("plots", "model"): PNGs and the exported weights."""

    def finish(self, summary: dict[str, float] | None, status: RunStatus) -> None:
        """Close the run; a KILLED run is continued by the next launch."""


class LoggedSteps:
    """The (key, step) pairs a backend already holds at or after the resume step, and the
    filter that keeps a row's new pairs only."""

    def __init__(self, pairs: Iterable[tuple[str, int]] = ()) -> None:
        self.pairs = set(pairs)

    def new(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """The metrics of this row not yet logged at `step`; they are recorded as logged."""
        fresh = {key: value for key, value in metrics.items() if (key, step) not in self.pairs}
        self.pairs.update((key, step) for key in fresh)
        return fresh
