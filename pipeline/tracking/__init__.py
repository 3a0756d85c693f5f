"""Experiment tracking on rank 0: metrics.jsonl always, W&B, TensorBoard and MLflow as log.* says,
and PNG plots; a NullTracker on every other rank.

    tracker = build_tracker(cfg, dist, run_dir, run_ids, resume_step)   # NullTracker off rank 0
    tracker.log({"train/loss": 2.3}, step, epoch)
    python -m pipeline.tracking plots RUN_DIR             # see pipeline/tracking/cli.py

Modules: base (the backend interface and the resume rule), tracker (the fan-out the trainer
holds), one module per backend (jsonl_backend, wandb_backend, tensorboard_backend,
mlflow_backend), history (reading runs back), plots (curves, prediction grid), cli
(`python -m pipeline.tracking`). Nothing here imports pipeline.train.
"""

from pipeline.tracking.tracker import NullTracker, Tracker, build_tracker

__all__ = ["NullTracker", "Tracker", "build_tracker"]
