"""Helpers shared by the training tests: argv for the tiny config and torchrun/subprocess launchers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """argv for pipeline.train on the tiny data (W&B off unless a test turns it on)."""
    return [
        "--config", str(REPO / "configs/tiny.yaml"),
        f"data.train_dir={data / 'train'}", f"data.val_dir={data / 'val'}",
        f"train.run_dir={run_dir}", "log.wandb=disabled", "log.plots=false", "train.sanity_grid=false",
        *extra,
    ]


def torchrun(nproc: int, argv: list[str], timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=N -m pipeline.train ARGV` on CPU (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=0",
               "--standalone", "-m", "pipeline.train", *argv]
    return subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout, **popen)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"})
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env
