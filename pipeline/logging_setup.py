"""Rank-aware stdlib logging: rank 0 at INFO, other ranks at WARNING, rank in every line."""

from __future__ import annotations

import logging
import sys

from pipeline.distributed import DistInfo


def setup_logging(dist: DistInfo, level: int | None = None) -> None:
    """Configure the root logger once per process (replaces earlier handlers)."""
    if level is None:
        level = logging.INFO if dist.is_main else logging.WARNING
    rank = f"[rank {dist.rank}/{dist.world_size}] " if dist.world_size > 1 else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter stays at WARNING even on rank 0
    for noisy in ("PIL", "matplotlib", "wandb", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
