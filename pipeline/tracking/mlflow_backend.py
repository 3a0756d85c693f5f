"""log.mlflow=URI: an MLflow run on a tracking server (http://host:5000) or a local store
(sqlite:///mlflow.db, a folder), through the real client.

The experiment is log.project, the run name log.run_name (else the run dir's name). Params are
the resolved config, flattened (`optim.lr`); metrics are the trainer's rows at the same steps as
W&B and metrics.jsonl, with `epoch` beside them; at the end the plots and the exported weights
are artifacts (plots/, model/). The run id is stored in the checkpoint, so a resumed launch
continues the same run; what it already holds at or after the resume step is not logged again
(pipeline/tracking/base.py). Credentials come from MLflow's own environment variables
(MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN): never from the config
(pipeline.config rejects a URI holding them), so they reach no log, config or checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pipeline.config import Config, config_to_dict
from pipeline.tracking.base import Backend, LoggedSteps, RunStatus

logger = logging.getLogger(__name__)

# MLflow's client retries a failed request 7 times with exponential backoff (minutes in all) and
# waits 120 s for an answer: training would stall that long on a server that went away. A
# tracker must never hold training up, so fewer and shorter tries, unless the user set them.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

PARAMS_PER_REQUEST = 100  # MLflow's log_batch limit for params
METRICS_PER_REQUEST = 1000  # ... and for metrics


class MlflowBackend(Backend):
    name = "mlflow"

    def __init__(self, cfg: Config, run_dir: Path, run_id: str, resume_step: int | None) -> None:
        # deferred: the client imports in ~1 s, and only runs with log.mlflow pay for it
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.Metric = Metric
        self.client = MlflowClient(tracking_uri=cfg.log.mlflow)
        name = cfg.log.run_name or run_dir.resolve().name
        existing = self.find_run(run_id, MlflowException)
        if existing is None:
            self.run_id = self.client.create_run(
                self.experiment_id(cfg.log.project),
                run_name=name,
                tags={"mlflow.source.name": "pipeline.train", "run_dir": str(run_dir.resolve())},
            ).info.run_id
            held: dict[str, str] = {}
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            held = dict(existing.data.params)
        self.logged = LoggedSteps(self.held_pairs(existing, resume_step))
        params = flatten(config_to_dict(cfg))
        changed = sorted(key for key in params if key in held and held[key] != params[key])
        if changed:  # MLflow refuses to change a logged param; the trainer warns about the config
            logger.warning("mlflow: params %s keep the first launch's values", ", ".join(changed))
        fresh = [Param(key, value) for key, value in params.items() if key not in held]
        for start in range(0, len(fresh), PARAMS_PER_REQUEST):
            self.client.log_batch(self.run_id, params=fresh[start : start + PARAMS_PER_REQUEST])

    def find_run(self, run_id: str, not_found: type[Exception]):
        """The stored run when this store still has it, else None (a new run is started)."""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except not_found:
            logger.warning(
                "mlflow: run %s from the checkpoint is not in this tracking store: starting a new "
                "run",
                run_id,
            )
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name)

    def held_pairs(self, run, resume_step: int | None) -> list[tuple[str, int]]:
        """(key, step) of the run's metrics at steps >= resume_step: one history request per key."""
        if run is None or resume_step is None:
            return []
        return [
            (key, metric.step)
            for key in run.data.metrics
            for metric in self.client.get_metric_history(self.run_id, key)
            if metric.step >= resume_step
        ]

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        fresh = self.logged.new({**metrics, "epoch": round(float(epoch), 4)}, step)
        now = int(time.time() * 1000)
        batch = [self.Metric(key, float(value), now, int(step)) for key, value in fresh.items()]
        for start in range(0, len(batch), METRICS_PER_REQUEST):
            self.client.log_batch(self.run_id, metrics=batch[start : start + METRICS_PER_REQUEST])

    def log_files(self, paths: list[Path], folder: str) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def finish(self, summary: dict[str, float] | None, status: RunStatus) -> None:
        self.client.set_terminated(self.run_id, status=status)


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 0.01}} → {"optim.lr": "0.01"}: MLflow params are strings."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
