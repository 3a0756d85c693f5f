"""Experiment tracking on rank 0: W&B (real client), a JSONL metrics file and PNG plots.

    tracker = build_tracker(cfg, dist, run_dir, run_id)   # a NullTracker on ranks other than 0
    tracker.log({"train/loss": 2.3}, step, epoch)
    python -m pipeline.tracking plots RUN_DIR             # see pipeline/tracking/cli.py

Modules: tracker (W&B + JSONL), history (reading them back), plots (curves, prediction grid),
cli (`python -m pipeline.tracking`). Nothing here imports pipeline.train.
"""

from pipeline.tracking.tracker import NullTracker, Tracker, build_tracker

__all__ = ["NullTracker", "Tracker", "build_tracker"]
