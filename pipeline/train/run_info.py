"""What every launch of a run records: the resolved config, the command, the git SHA, the world."""

from __future__ import annotations

import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from core.remote import scrub
from pipeline.config import Config, dump_config
from pipeline.distributed import DistInfo


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return (
            out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
            if out.returncode == 0
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def record_launch(
    cfg: Config,
    dist: DistInfo,
    run_dir: Path,
    argv: list[str],
    resumed_from: Path | None,
    facts: dict | None = None,
) -> None:
    """Rank 0 writes the resolved config.yaml and appends this launch to launches.jsonl, with
    `facts` (the model's architecture and parameter count, ...)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    entry = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": scrub(shlex.join([sys.executable, "-m", "pipeline.train", *argv])),
        "git_sha": git_sha(),
        "world_size": dist.world_size,
        "backend": dist.backend,
        "device": dist.device,
        "torch": torch.__version__,
        "resumed_from": str(resumed_from) if resumed_from else None,
        **(facts or {}),
    }
    with open(run_dir / "launches.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")
