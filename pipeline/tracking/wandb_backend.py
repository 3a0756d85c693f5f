"""W&B, the real client: online with WANDB_API_KEY, offline otherwise (RUN_DIR/wandb/).

log.wandb=auto is online when WANDB_API_KEY is set and offline otherwise (`wandb sync
RUN_DIR/wandb/offline-run-*` uploads later). The run id is stored in the checkpoint and passed
back with resume="allow", so a resumed job continues the same W&B run; W&B itself drops a step
below its current one, the rule every backend follows (pipeline/tracking/base.py). The API key
is read by the wandb client from the environment only: it is never put into the config, the
logs, the run dir or a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import Config, WandbMode, config_to_dict
from pipeline.tracking.base import Backend, RunStatus


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, cfg: Config, run_dir: Path, run_id: str, mode: WandbMode) -> None:
        import wandb  # deferred: the client takes ~1 s to import, and log.wandb=disabled skips it

        self.wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
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
        self.run_id = self.run.id

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        self.run.log({**metrics, "epoch": round(float(epoch), 4)}, step=int(step))

    def log_files(self, paths: list[Path], folder: str) -> None:
        images = {
            f"{folder}/{p.stem}": self.wandb.Image(str(p)) for p in paths if p.suffix == ".png"
        }
        if images:
            self.run.log(images)

    def finish(self, summary: dict[str, float] | None, status: RunStatus) -> None:
        for key, value in (summary or {}).items():
            self.run.summary[key] = value
        self.run.finish()  # a KILLED (stopped) run is resumed under the same id


def resolve_wandb_mode(mode: WandbMode) -> WandbMode:
    """auto → online when WANDB_API_KEY is set, else offline; WANDB_MODE=disabled/offline in the env
    wins over auto."""
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "")
    if env_mode in ("offline", "disabled", "online"):
        return env_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"
