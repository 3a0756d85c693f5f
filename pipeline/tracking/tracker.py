"""What the trainer logs to: on global rank 0 a `Tracker` that fans out to every configured
backend (metrics.jsonl always; W&B, TensorBoard, MLflow as log.* says), a `NullTracker` that does
nothing on every other rank.

    tracker = build_tracker(cfg, dist, run_dir, run_ids, resume_step)   # run_ids: the checkpoint's
    tracker.log({"train/loss": 2.3}, step, epoch)
    tracker.finish(summary, plots=True)         # curves, grids and exported weights to each backend

A backend that raises (a server gone, a full disk) is warned about once, with its name and the
error, and dropped for the rest of the launch: no tracker ever stops training. A backend that
cannot start is the same warning at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config
from pipeline.distributed import DistInfo
from pipeline.tracking.base import Backend, RunStatus
from pipeline.tracking.jsonl_backend import JsonlBackend
from pipeline.tracking.plots import plot_curves, save_prediction_grid

logger = logging.getLogger(__name__)


class NullTracker:
    """What non-main ranks get: every call does nothing."""

    takes_weights = False  # no backend here wants the exported weights

    def run_id(self, name: str) -> str:
        return ""

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        pass

    def save_batch_grid(self, images, labels, class_names: list[str]) -> None:
        pass

    def save_prediction_grid(self, images, labels, predictions, class_names: list[str]) -> None:
        pass

    def log_files(self, paths: list[Path], folder: str) -> None:
        pass

    def finish(
        self, summary: dict[str, float] | None = None, plots: bool = True, stopped: bool = False
    ) -> None:
        pass


class Tracker(NullTracker):
    """Rank 0: the grids and curves in RUN_DIR/plots, and every call to each live backend."""

    def __init__(self, run_dir: Path, backends: list[Backend]) -> None:
        self.run_dir = run_dir
        self.plots_dir = run_dir / "plots"
        self.backends = list(backends)
        # metrics.jsonl is the record: the rows a killed launch wrote there at or after the
        # resume step stand, and a tracker that missed one (killed between the two writes) gets
        # those values, not the rerun's (timings differ; the rest is bit-exact anyway)
        self.held_rows = next(
            (b.held_rows for b in self.backends if isinstance(b, JsonlBackend)), {}
        )
        # MLflow keeps the exported weights as an artifact; the trainer exports only for it
        self.takes_weights = any(backend.name == "mlflow" for backend in self.backends)

    def run_id(self, name: str) -> str:
        """The run id of backend `name` ("" when it is off or failed)."""
        return next((b.run_id for b in self.backends if b.name == name), "")

    def call_each(self, action: str, call: Callable[[Backend], None]) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as err:  # noqa: BLE001 (any failure of a tracker: training goes on)
                self.backends.remove(backend)
                logger.warning(
                    "tracker %s failed to %s (%s: %s): it is off for the rest of this launch; "
                    "training goes on",
                    backend.name,
                    action,
                    type(err).__name__,
                    (str(err).strip().splitlines() or [""])[0],
                )

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        held = self.held_rows.get(step)
        if held:
            metrics = {key: held.get(key, value) for key, value in metrics.items()}
        self.call_each(f"log step {step}", lambda backend: backend.log(metrics, step, epoch))

    def log_files(self, paths: list[Path], folder: str) -> None:
        self.call_each(f"store {folder}", lambda backend: backend.log_files(paths, folder))

    def save_batch_grid(self, images, labels, class_names: list[str]) -> None:
        """The sanity grid of an augmented train batch (pipeline.data.grid.save_batch_grid)."""
        from pipeline.data.grid import save_batch_grid

        path = save_batch_grid(images, labels, class_names, self.plots_dir / "train_batch.png")
        logger.info("wrote sanity grid of an augmented train batch to %s", path)

    def save_prediction_grid(self, images, labels, predictions, class_names: list[str]) -> None:
        path = save_prediction_grid(
            images, labels, predictions, class_names, self.plots_dir / "predictions.png"
        )
        logger.info("wrote prediction grid to %s", path)

    def finish(
        self, summary: dict[str, float] | None = None, plots: bool = True, stopped: bool = False
    ) -> None:
        """Curves from metrics.jsonl, then every PNG in RUN_DIR/plots to each backend, then each
        run closed (KILLED when `stopped`: the next launch continues it)."""
        if plots:
            for path in plot_curves(self.run_dir):
                logger.info("wrote %s", path)
            self.log_files(sorted(self.plots_dir.glob("*.png")), "plots")
        status: RunStatus = "KILLED" if stopped else "FINISHED"
        self.call_each("finish", lambda backend: backend.finish(summary, status))
        self.backends = []


def build_backends(
    cfg: Config, run_dir: Path, run_ids: dict[str, str], resume_step: int | None
) -> list[Backend]:
    """metrics.jsonl, then W&B, TensorBoard and MLflow as log.* turns them on. A backend that
    cannot start is a warning, and the run goes on without it."""
    from pipeline.tracking.wandb_backend import resolve_wandb_mode

    starters: list[tuple[str, Callable[[], Backend]]] = [
        ("jsonl", lambda: JsonlBackend(run_dir, resume_step))
    ]
    mode = resolve_wandb_mode(cfg.log.wandb)
    if mode != "disabled":
        from pipeline.tracking.wandb_backend import WandbBackend

        starters.append(
            ("wandb", lambda: WandbBackend(cfg, run_dir, run_ids.get("wandb", ""), mode))
        )
    if cfg.log.tensorboard:
        from pipeline.tracking.tensorboard_backend import TensorBoardBackend

        starters.append(("tensorboard", lambda: TensorBoardBackend(run_dir, resume_step)))
    if cfg.log.mlflow:
        from pipeline.tracking.mlflow_backend import MlflowBackend

        starters.append(
            (
                "mlflow",
                lambda: MlflowBackend(cfg, run_dir, run_ids.get("mlflow", ""), resume_step),
            )
        )
    backends = []
    for name, start in starters:
        try:
            backends.append(start())
        except Exception as err:  # noqa: BLE001 (a tracker never stops training)
            logger.warning(
                "tracker %s could not start (%s: %s): training goes on without it",
                name,
                type(err).__name__,
                (str(err).strip().splitlines() or [""])[0],
            )
    return backends


def build_tracker(
    cfg: Config,
    dist: DistInfo,
    run_dir: Path,
    run_ids: dict[str, str] | None = None,
    resume_step: int | None = None,
) -> NullTracker:
    """A Tracker on global rank 0, a NullTracker on every other rank.

    Args:
        run_ids: the checkpoint's run ids by backend name ("wandb", "mlflow"), to continue those
            runs; empty for a fresh run.
        resume_step: the checkpoint's step; None for a fresh run.
    """
    if not dist.is_main:
        return NullTracker()
    return Tracker(run_dir, build_backends(cfg, run_dir, run_ids or {}, resume_step))
