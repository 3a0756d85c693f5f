"""The tracker the training loop logs to: W&B (the real client) and RUN_DIR/metrics.jsonl on
global rank 0, a NullTracker that does nothing on every other rank.

W&B mode: logger.wandb=auto is online when WANDB_API_KEY is set and offline otherwise (runs land
in RUN_DIR/wandb/; `wandb sync RUN_DIR/wandb/offline-run-*` uploads them later). The run id is
stored in the checkpoint and passed back with resume="allow", so a resumed job continues the
same W&B run. The API key is read by the wandb client from the environment only: it is never
put into the config, the logs, the run dir or a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipeline.config import Config, config_to_dict
from pipeline.distributed import DistInfo
from pipeline.tracking.history import METRICS_FILE
from pipeline.tracking.plots import plot_curves, save_prediction_grid

logger = logging.getLogger(__name__)


class NullTracker:
    """What non-main ranks (and logger.wandb=disabled plus no run dir) get: every call does
    nothing."""

    run_id: str = ""

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        pass

    def save_batch_grid(self, images, labels, class_names: list[str]) -> None:
        pass

    def save_prediction_grid(self, images, labels, predictions, class_names: list[str]) -> None:
        pass

    def finish(self, summary: dict[str, float] | None = None, plots: bool = True) -> None:
        pass


class Tracker(NullTracker):
    """Rank 0: appends to RUN_DIR/metrics.jsonl and logs to W&B (unless disabled)."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None):
        self.run_dir = run_dir
        self.metrics_path = run_dir / METRICS_FILE
        self.plots_dir = run_dir / "plots"
        self.wandb_run = None
        self.run_id = run_id or ""
        mode = resolve_wandb_mode(cfg.log.wandb)
        if mode != "disabled":
            self.wandb_run = _start_wandb(cfg, run_dir, run_id, mode)
            self.run_id = self.wandb_run.id

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        row = {
            "step": int(step),
            "epoch": round(float(epoch), 4),
            **{k: float(v) for k, v in metrics.items()},
        }
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, "epoch": row["epoch"]}, step=int(step))

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

    def finish(self, summary: dict[str, float] | None = None, plots: bool = True) -> None:
        if self.wandb_run is not None:
            if summary:
                for key, value in summary.items():
                    self.wandb_run.summary[key] = value
            if plots:
                for image in sorted(self.plots_dir.glob("*.png")):
                    self.wandb_run.log({f"plots/{image.stem}": _wandb_image(image)})
            self.wandb_run.finish()
            self.wandb_run = None
        if plots:
            for path in plot_curves(self.run_dir):
                logger.info("wrote %s", path)


def _wandb_image(path: Path):
    import wandb

    return wandb.Image(str(path))


def resolve_wandb_mode(mode: str) -> str:
    """auto → online when WANDB_API_KEY is set, else offline; WANDB_MODE=disabled/offline in the env
    wins over auto."""
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "")
    if env_mode in ("offline", "disabled", "online"):
        return env_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _start_wandb(cfg: Config, run_dir: Path, run_id: str | None, mode: str):
    import wandb

    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.log.project,
        entity=cfg.log.entity or None,
        name=cfg.log.run_name or run_dir.resolve().name,
        id=run_id or None,  # None: wandb generates one, which the checkpoint then keeps
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=config_to_dict(cfg),
        settings=wandb.Settings(console="off", x_disable_stats=False),
    )


def build_tracker(cfg: Config, dist: DistInfo, run_dir: Path, run_id: str | None) -> NullTracker:
    """A Tracker on global rank 0, a NullTracker on every other rank."""
    if not dist.is_main:
        return NullTracker()
    return Tracker(cfg, run_dir, run_id)
