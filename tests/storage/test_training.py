"""The done-test of training from object storage: a 2-rank gloo run over shards on the S3
server, stopped mid-epoch (SIGTERM, as Slurm preemption) and resumed, takes the same steps
with the same losses to the same final weights as an uninterrupted run over the same shards
on local disk, and the store sends each shard once to the node (counted at the proxy)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from train_helpers import REPO, latest_step, launch_ranks, sigterm_ranks_when, torchrun

from pipeline.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# 64 train images, global batch 4 over 2 ranks: 16 steps per epoch, 32 in all
RECIPE = (
    "data.backend=wds",
    "data.global_batch_size=4",
    "data.num_workers=1",
    "data.shuffle_buffer=8",
    "train.epochs=2",
    "train.log_every=1",
    "log.wandb=disabled",
    "log.plots=false",
    "train.sanity_grid=false",
)
TOTAL_STEPS = 32


def argv(train: str, val: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "configs/tiny.yaml"),
        f"data.train_dir={train}",
        f"data.val_dir={val}",
        f"train.run_dir={run_dir}",
        *RECIPE,
        *extra,
    ]


def wait_for_step(run_dir: Path, step: int, processes, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while latest_step(run_dir) < step:
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise AssertionError(f"no step {step} in {run_dir} (a rank exited or timed out)")
        time.sleep(0.05)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def test_two_ranks_over_s3_stopped_and_resumed_equal_the_local_run_downloading_each_shard_once(
    s3_env, moto_s3, training_bucket, training_shards, tmp_path
):
    local_dir = tmp_path / "local"
    result = torchrun(2, argv(training_shards / "train", training_shards / "val", local_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    run_dir = tmp_path / "s3"
    remote = argv(
        f"{training_bucket}/train",
        f"{training_bucket}/val",
        run_dir,
        "data.cache_gb=1",
        f"data.cache_dir={tmp_path / 'node-cache'}",
    )
    ranks = launch_ranks(2, remote, tmp_path)
    codes = sigterm_ranks_when(ranks, lambda: wait_for_step(run_dir, 3, ranks))
    assert codes == [75, 75], (tmp_path / "rank0.log").read_text()[-3000:]
    stopped = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert 0 < stopped["batch_in_epoch"] and stopped["step"] < TOTAL_STEPS  # mid-epoch
    result = torchrun(2, remote)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert losses(run_dir) == losses(local_dir) and len(losses(local_dir)) == TOTAL_STEPS
    resumed = load_checkpoint(run_dir / "checkpoints/last.pt")
    reference = load_checkpoint(local_dir / "checkpoints/last.pt")
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    downloads = Counter(r.path.rsplit("/", 1)[-1] for r in s3_env.requests("GET", ".tar"))
    assert len(downloads) == 8 + 2 and set(downloads.values()) == {1}, downloads
    recorded = (run_dir / "config.yaml").read_text() + (run_dir / "launches.jsonl").read_text()
    assert moto_s3.access_key not in recorded and moto_s3.secret_key not in recorded
