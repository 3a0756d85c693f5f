"""Surviving the cluster, with real processes and real signals on 2 CPU gloo ranks: a stopped
rank and a stuck loader worker are named and the run exits 75; a kill -9 loses at most
train.save_every_minutes; `python -m launch --max-restarts 1` finishes after a killed rank."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import REPO, child_env, child_pids, latest_step, slow_reads_env, tiny_args

from pipeline.checkpoint import load_checkpoint
from pipeline.train.cli import main

pytestmark = pytest.mark.slow

# 160 images, global batch 8 over 2 ranks: 20 steps per epoch
RECIPE = ("data.global_batch_size=8", "train.epochs=2", "train.log_every=1")

# Loaded in every process of a test run through PYTHONPATH: rank STALL_RANK's loader worker
# sleeps forever on its 5th batch (a stuck NFS read, as the loader sees it).
STALL_HOOK = """
import os, time
if os.environ.get("STALL_RANK") is not None and os.environ.get("RANK") == os.environ["STALL_RANK"]:
    import pipeline.data.folder as folder
    original = folder.FolderBatches.__getitem__
    calls = []
    def stuck(self, item):
        calls.append(1)
        if len(calls) == 5:
            time.sleep(10**6)
        return original(self, item)
    folder.FolderBatches.__getitem__ = stuck
"""


def start_launch(argv: list[str], log: Path, *launch: str, **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "launch", "--nproc", "2", "--no-preflight", *launch]
    return subprocess.Popen(
        [*command, "--", "-m", "pipeline.train", *argv],
        cwd=REPO,
        env=child_env(**env),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def worker_of_rank(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> int:
    """The pid of the training worker with RANK=rank among the launcher's children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in child_pids(launcher.pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank}")


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while latest_step(run_dir) < step:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no step {step}: {log.read_text()[-3000:]}"
        time.sleep(0.1)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("stall", ["SIGSTOP", "loader thread asleep"])
def test_a_stalled_rank_is_named_within_a_minute_the_run_exits_75_and_a_rerun_finishes(
    stall, tiny_data, tmp_path
):
    run_dir, log = tmp_path / "run", tmp_path / "launch.log"
    argv = tiny_args(tiny_data, run_dir, *RECIPE, "train.stall_timeout_s=20", "data.num_workers=1")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL_HOOK)
    env = {"PYTHONPATH": str(hook)} if stall != "SIGSTOP" else {}
    if stall != "SIGSTOP":
        env["STALL_RANK"] = "1"
    launcher = start_launch(argv, log, "--shutdown-timeout", "5", **env)
    stopped = None
    try:
        wait_for_step(run_dir, 3, launcher, log)
        started = time.monotonic()
        if stall == "SIGSTOP":
            stopped = worker_of_rank(launcher, 1)
            os.kill(stopped, signal.SIGSTOP)
        code = launcher.wait(timeout=90)
        elapsed = time.monotonic() - started
    finally:
        if stopped is not None:
            kill(stopped)
        if launcher.poll() is None:
            launcher.kill()
    text = log.read_text()
    assert code == 75, text[-3000:]
    assert elapsed < 60, elapsed
    lines = [line for line in text.splitlines() if line.startswith("watchdog: stalled:")]
    assert len(lines) == 1, text[-3000:]
    phase = "forward_backward" if stall == "SIGSTOP" else "data_wait"
    assert "rank 1 on " in lines[0] and "rank 0" not in lines[0], lines[0]
    if stall != "SIGSTOP":
        assert f"({phase}, step" in lines[0], lines[0]
    assert str(run_dir / "stacks") in lines[0]
    assert (run_dir / "stacks/rank-0.txt").read_text().count("Thread") >= 2  # every thread
    if stall != "SIGSTOP":  # the stuck rank dumped its own: the main thread waits for a batch
        # from its loader threads (pipeline/data/threads.py), one of which sleeps in the hook
        stacks = (run_dir / "stacks/rank-1.txt").read_text()
        assert "_take_in_turn" in stacks and "in stuck" in stacks, stacks

    # the rerun (one rank here: cheaper, and a changed world on top) resumes and finishes
    assert main(tiny_args(tiny_data, run_dir, *RECIPE)) == 0
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["epoch"] == 2


def test_a_kill_9_loses_at_most_the_save_interval_and_the_resume_matches_an_uninterrupted_run(
    tiny_data, tmp_path
):
    """One rank, train.save_every_minutes=0.01 (0.6 s): SIGKILL mid-epoch, right after a save by
    the clock; last.pt is that mid-epoch checkpoint, at most 0.6 s (plus a step and a save) older
    than the kill, and the resumed run ends bit-identical to one uninterrupted run."""
    timed = ("data.global_batch_size=4", "train.epochs=2", "train.log_every=1")
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    argv = tiny_args(tiny_data, run_dir, *timed, "train.save_every_minutes=0.01")
    # every batch takes 30 ms more to load, so an epoch lasts seconds and the 0.6 s save clock
    # fires inside it, whatever the machine's speed
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *argv, "data.num_workers=0"],
        cwd=REPO,
        env=child_env(**slow_reads_env(tmp_path / "hook", 0.03)),
        stdout=open(log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    mid_epoch_save = re.compile(r"saved \S+last\.pt \(epoch \d, step \d+, batch [1-9]")
    try:
        deadline = time.monotonic() + 240
        while not mid_epoch_save.search(log.read_text()):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        process.kill()
        killed_at = time.time()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    last = run_dir / "checkpoints/last.pt"
    saved = load_checkpoint(last)
    assert saved["epoch"] in (0, 1) and 0 < saved["batch_in_epoch"] < 40, saved["batch_in_epoch"]
    assert killed_at - last.stat().st_mtime < 0.6 + 5, killed_at - last.stat().st_mtime

    # both in child processes as the killed run was, on one thread each: a conv's float sums
    # depend on the thread count, and the test process may use another
    resumed = tiny_args(tiny_data, run_dir, *timed, "train.save_every_minutes=0.01")
    whole_run = tiny_args(tiny_data, tmp_path / "whole", *timed)
    for arguments in (resumed, whole_run):
        command = [sys.executable, "-m", "pipeline.train", *arguments, "data.num_workers=0"]
        finished = subprocess.run(
            command, check=False, cwd=REPO, env=child_env(), capture_output=True
        )
        assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    whole = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    parts = load_checkpoint(last)
    assert whole["step"] == parts["step"] == 80
    for key, value in whole["model"].items():
        assert torch.equal(parts["model"][key], value), key


def test_launch_with_max_restarts_finishes_on_its_own_after_a_rank_is_killed(tiny_data, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "launch.log"
    argv = tiny_args(tiny_data, run_dir, *RECIPE, "train.save_every_minutes=0.01")
    launcher = start_launch(argv, log, "--max-restarts", "1")
    try:
        wait_for_step(run_dir, 25, launcher, log)  # in the middle of epoch 1
        kill(worker_of_rank(launcher, 1))
        code = launcher.wait(timeout=240)
    finally:
        for pid in child_pids(launcher.pid):
            kill(pid)
        if launcher.poll() is None:
            launcher.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert text.count("resumed from") >= 1 and "final: val/top1=" in text
    state = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (state["epoch"], state["step"]) == (2, 40)
    launches = (run_dir / "launches.jsonl").read_text().splitlines()
    assert len(launches) == 2 and json.loads(launches[1])["resumed_from"]
