"""Multi-process training on CPU with 2 gloo ranks: DDP correctness, exact eval, and resume
equivalence through a SIGTERM mid-epoch and a SIGKILL (all real processes, real signals)."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch
from train_helpers import (
    child_pids,
    latest_step,
    launch_ranks,
    sigterm_ranks_when,
    start_torchrun,
    tiny_args,
    torchrun,
)

from pipeline.checkpoint import load_checkpoint
from pipeline.train.cli import main

pytestmark = pytest.mark.slow

# 160 train images, global batch 8 over 2 ranks: 20 steps per epoch, 40 in all; dropout stays on
RECIPE = ("data.global_batch_size=8", "optim.lr=0.064", "train.epochs=2", "train.log_every=1")
TOTAL_STEPS = 40


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
    """An uninterrupted 2-rank torchrun run of RECIPE."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = torchrun(2, tiny_args(tiny_data, run_dir, *RECIPE))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_rank_ddp_lowers_the_loss_and_keeps_the_replicas_identical(reference_run):
    run_dir, stdout = reference_run
    losses = [r["train/loss"] for r in rows(run_dir) if "train/loss" in r]
    assert len(losses) == TOTAL_STEPS
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    state = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert state["step"] == TOTAL_STEPS and state["world_size"] == 2
    fingerprints = state["replica_fingerprints"]
    assert len(fingerprints) == 2 and torch.equal(fingerprints[0], fingerprints[1])
    assert stdout.count("final: val/top1=") == 1  # rank 0 only


def test_eval_over_two_ranks_with_uneven_shards_equals_one_rank(reference_run, tmp_path, capsys):
    """17 val images over 2 ranks at 4 per batch: 2 and 3 batches. The 2-rank eval at the end of the
    reference run must equal a 1-rank --evaluate of the same weights."""
    run_dir, stdout = reference_run
    two_rank = [r for r in rows(run_dir) if "val/top1" in r][-1]
    single = tmp_path / "single"
    argv = tiny_args(tiny_data_dir(run_dir), single, "data.global_batch_size=8")
    assert main([*argv, "--evaluate", "--resume", str(run_dir / "checkpoints/last.pt")]) == 0
    one_rank = json.loads((single / "eval.json").read_text())
    assert one_rank["val/num_samples"] == 17
    for key in ("val/top1", "val/top5", "val/macro_f1"):
        assert one_rank[key] == two_rank[key], key
    assert one_rank["val/loss"] == pytest.approx(two_rank["val/loss"], rel=1e-5)
    assert (single / "per_class_accuracy.csv").read_text() == (
        run_dir / "per_class_accuracy.csv"
    ).read_text()
    assert capsys.readouterr().out.strip().splitlines()[-1] in stdout


def tiny_data_dir(run_dir):
    """The data dirs the reference run used (from its saved config)."""
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return Path(cfg["data"]["train_dir"]).parent


def wait_for(predicate, timeout: float, what: str, processes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if any(p.poll() is not None for p in processes):
            raise AssertionError(f"a process exited before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigterm_mid_epoch_then_sigkill_then_resume_ends_with_the_uninterrupted_weights(
    reference_run, tiny_data, tmp_path
):
    reference_dir, _ = reference_run
    run_dir = tmp_path / "run"
    argv = tiny_args(tiny_data, run_dir, *RECIPE)

    # 1. srun-style launch (one process per rank); SIGTERM both ranks mid-epoch, as Slurm preemption
    # does
    ranks = launch_ranks(2, argv, tmp_path)
    codes = sigterm_ranks_when(
        ranks, lambda: wait_for(lambda: latest_step(run_dir) >= 3, 180, "step 3", ranks)
    )
    assert codes == [75, 75], (tmp_path / "rank0.log").read_text()[-3000:]
    stopped = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (
        stopped["epoch"] == 0
        and 3 <= stopped["step"] < 20
        and stopped["batch_in_epoch"] == stopped["step"]
    )
    assert "stopped by SIGTERM" in (tmp_path / "rank0.log").read_text()

    # 2. torchrun resumes mid-epoch with no flag; SIGKILL it and its workers mid-way through epoch 2
    launcher = start_torchrun(2, argv, tmp_path / "resume.log")
    try:
        wait_for(lambda: latest_step(run_dir) >= 23, 180, "step 23", [launcher])
        workers = child_pids(launcher.pid)
        for pid in workers:
            _kill(pid)
        launcher.kill()
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    killed = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert killed["step"] == 20 and killed["epoch"] == 1 and killed["batch_in_epoch"] == 0

    # 3. a rerun with the same run dir finishes from the epoch-1 checkpoint
    result = torchrun(2, argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resumed = load_checkpoint(run_dir / "checkpoints/last.pt")
    reference = load_checkpoint(reference_dir / "checkpoints/last.pt")
    assert resumed["step"] == reference["step"] == TOTAL_STEPS
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for index, buffers in reference["optimizer"]["state"].items():
        for name, value in buffers.items():
            assert torch.equal(resumed["optimizer"]["state"][index][name], value), (index, name)
    launches = (run_dir / "launches.jsonl").read_text().splitlines()
    assert len(launches) == 3 and json.loads(launches[1])["resumed_from"].endswith("last.pt")


def _kill(pid: int) -> None:
    import os

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_two_ranks_with_a_single_val_image_train_and_evaluate_it_exactly_once(tiny_data, tmp_path):
    """Rank 0's val block is empty ([0, 0) of 1 image over 2 ranks): it evaluates 0 batches and
    still joins the all-reduce; the final line counts the one image, and nobody hangs."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    (data / "train").symlink_to(tiny_data / "train")
    image = min((tiny_data / "val").glob("*/*.JPEG"))
    (data / "val" / image.parent.name).mkdir(parents=True)
    shutil.copy(image, data / "val" / image.parent.name / image.name)
    run_dir = tmp_path / "run"
    result = torchrun(
        2, tiny_args(data, run_dir, "train.max_steps=2", "log.plots=true"), timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("final: val/top1=") == 1
    last = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "val/top1" in line
    ][-1]
    assert last["val/top1"] in (0.0, 100.0)
    assert "(1 images)" in result.stdout + result.stderr
