"""Exactly-once across a change of world (issue 20, item 4), with real gloo processes: an epoch
interrupted on 2 ranks and finished on 1, or begun on 1 and finished on 2, under another global
batch, reads every sample of the epoch's reference set exactly once (data.record_samples)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from train_helpers import (
    latest_step,
    launch_ranks,
    sigterm_ranks_when,
    slow_reads_env,
    tiny_args,
    torchrun,
)

from core.shard_format import read_manifest
from pipeline.checkpoint import load_checkpoint
from pipeline.data.plans import IndexPlan, ShardReadPlan
from pipeline.data.remainder import sequence_keys
from pipeline.train.cli import main

RECORD = ("data.record_samples=true", "train.epochs=1", "train.log_every=1")


def consumed_keys(run_dir: Path, epoch: int) -> list[int]:
    """Every key the record holds for `epoch`, over all ranks and both runs."""
    keys = []
    for path in sorted((run_dir / "samples").glob(f"rank-*-epoch-{epoch}.jsonl")):
        keys += [key for line in path.read_text().splitlines() for key in json.loads(line)["keys"]]
    return keys


@pytest.mark.slow
def test_an_epoch_stopped_by_sigterm_on_2_ranks_and_finished_on_1_reads_every_file_once(
    tiny_data, tmp_path
):
    """folder: 2 ranks x 8 (10 batches), SIGTERM after step 3; the rest on 1 rank x 12. Each
    batch of the stopped run takes 0.1 s more to load, so the 7 steps after step 3 last 0.7 s or
    more and the signal lands mid-epoch whatever the machine's speed."""
    run_dir = tmp_path / "run"
    slow = slow_reads_env(tmp_path / "hook", 0.1)
    ranks = launch_ranks(2, tiny_args(tiny_data, run_dir, *RECORD), tmp_path, **slow)

    def reached_step_3() -> None:
        deadline = time.monotonic() + 180
        while latest_step(run_dir) < 3 and time.monotonic() < deadline:
            assert all(process.poll() is None for process in ranks)
            time.sleep(0.1)

    codes = sigterm_ranks_when(ranks, reached_step_3)
    assert codes == [75, 75], (tmp_path / "rank0.log").read_text()[-3000:]
    stopped = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert stopped["epoch"] == 0 and 3 <= stopped["batch_in_epoch"] < 10
    assert len(consumed_keys(run_dir, 0)) == 16 * stopped["batch_in_epoch"]

    assert main(tiny_args(tiny_data, run_dir, *RECORD, "data.global_batch_size=12")) == 0
    seed = stopped["config"]["train"]["seed"]
    expected = [IndexPlan(160, 8, r, 2, True, seed).rank_indices(0).tolist() for r in range(2)]
    keys = consumed_keys(run_dir, 0)
    assert sorted(keys) == sorted(expected[0] + expected[1])  # every file once, none twice
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["epoch"] >= 1  # epoch 0 finished


@pytest.mark.slow
def test_a_wds_epoch_begun_on_1_rank_and_finished_on_2_reads_every_sample_once(
    tiny_shards, tmp_path
):
    """wds, 2 loader workers and a shuffle buffer of 8: 1 rank x 16 stopped at batch 3 of 10
    (train.max_steps writes the same mid-epoch checkpoint as a signal); the rest on 2 ranks x 6,
    whose last batch is short."""
    run_dir = tmp_path / "run"
    wds = ("data.backend=wds", "data.num_workers=2", "data.shuffle_buffer=8")
    assert main(tiny_args(tiny_shards, run_dir, *RECORD, *wds, "train.max_steps=3")) == 0
    stopped = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (stopped["epoch"], stopped["batch_in_epoch"]) == (0, 3)

    resumed = torchrun(
        2, tiny_args(tiny_shards, run_dir, *RECORD, *wds, "data.global_batch_size=12")
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "not yet read are spread over them" in resumed.stdout + resumed.stderr
    manifest = read_manifest(tiny_shards / "train")
    seed = stopped["config"]["train"]["seed"]
    paths = tuple(shard.name for shard in manifest.shards)
    counts = tuple(shard.count for shard in manifest.shards)
    plan = ShardReadPlan(paths, counts, 16, 0, 1, 2, True, seed)
    expected = sequence_keys(plan, 0, *plan.rank_samples())
    keys = consumed_keys(run_dir, 0)
    assert sorted(keys) == sorted(expected.tolist()) and len(np.unique(keys)) == 160


def test_a_checkpoint_without_data_plan_replays_its_config_and_another_key_kind_is_one_line():
    from pipeline.config import build_config, config_to_dict
    from pipeline.distributed import DistInfo
    from pipeline.errors import CheckpointError
    from pipeline.train.resume import TrainState, plan_interrupted_epoch, recorded_links

    cfg = build_config({"data": {"backend": "folder", "global_batch_size": 12}})
    old = config_to_dict(build_config({"data": {"backend": "wds", "global_batch_size": 16}}))
    del old["data"]["shuffle_buffer"]  # an older checkpoint: this run's value fills it in
    data = {"epoch": 1, "batch_in_epoch": 3, "world_size": 2, "config": old}
    (link,) = recorded_links(data, cfg, world_size=1)
    assert (link.backend, link.world_size, link.batch_size, link.batches) == ("wds", 2, 8, 3)
    assert link.shuffle_buffer == cfg.data.shuffle_buffer
    plan = IndexPlan(160, 12, 0, 1, True, 0)
    with pytest.raises(CheckpointError, match="read from shards and this run reads class folders"):
        plan_interrupted_epoch(
            TrainState(epoch=1, batch_in_epoch=3), data, cfg, DistInfo(), 13, plan
        )
