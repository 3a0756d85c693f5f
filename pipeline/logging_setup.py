"""Rank-aware stdlib logging: rank 0 at INFO, other ranks at WARNING, rank in every line."""

from __future__ import annotations

import logging

from core.logs import configure_logging
from pipeline.distributed import DistInfo


def setup_logging(dist: DistInfo, level: int | None = None) -> None:
    """Configure the root logger once per process (replaces earlier handlers)."""
    if level is None:
        level = logging.INFO if dist.is_main else logging.WARNING
    rank = f"[rank {dist.rank}/{dist.world_size}] " if dist.world_size > 1 else ""
    configure_logging(level, f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s")
