"""slurm/train.sbatch on a real two-node Slurm: a 2 x 2 gloo job, preemption + requeue, a bad host,
a signal before the training step.

Each job runs the real script end to end: sbatch → one srun task per node → launch/ (preflight,
then torchrun c10d on the first node's NodeAddr) → pipeline.train on 4 CPU ranks.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import REPO, free_port

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SBATCH = REPO / "slurm" / "train.sbatch"
# 64 train images, global batch 8 → 8 steps per epoch; 8 epochs = 64 steps: several seconds of
# training to signal into, short on CPU. Every step is logged so metrics.jsonl shows progress.
EPOCHS = 8
STEPS = 64
JOB_TIMEOUT_S = 240


def training_overrides(data: Path) -> str:
    return " ".join(
        [
            f"data.train_dir={data / 'train'}",
            f"data.val_dir={data / 'val'}",
            f"train.epochs={EPOCHS}",
            "data.global_batch_size=8",
            "train.log_every=1",
            "train.sanity_grid=false",
            "log.plots=false",
        ]
    )


def submit_training(
    cluster, data: Path, run_dir: Path, output: Path, *, wandb: str = "disabled", **env: str
) -> str:
    """sbatch the real script as a 2-node x 2-process CPU job; returns the job id."""
    exports = {
        "PYTHON": sys.executable,
        "PROJECT_DIR": str(REPO),
        "NPROC_PER_NODE": "2",
        "CONFIG": "configs/tiny.yaml",
        "RUN_DIR": str(run_dir),
        "OVERRIDES": f"{training_overrides(data)} log.wandb={wandb}",
        "RDZV_TIMEOUT": "120",
        # Not the script's default 29500 + job id % 10000: another test cluster on the same
        # machine numbers its jobs from 1 too, and its job N would share the rendezvous.
        "RDZV_PORT": str(free_port()),
        **env,
    }
    export = ",".join(["ALL", *(f"{key}={value}" for key, value in exports.items())])
    result = cluster.run(
        "sbatch",
        "--parsable",
        "--nodes=2",
        "--gpus-per-node=0",
        f"--output={output}",
        f"--export={export}",
        str(SBATCH),
    )
    return result.stdout.strip().split(";")[0]


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_step(run_dir: Path) -> int:
    return max(row["step"] for row in read_metrics(run_dir))


def usr2_then_requeued(slurm_cluster, job: str) -> None:
    """What Slurm's --signal=B:USR2 does: USR2 to the batch shell only; then wait for the
    job's requeue."""
    slurm_cluster.run("scancel", "--signal=USR2", "--batch", job)
    wait_until(
        lambda: slurm_cluster.job_field(job, "Restarts") == "1",
        JOB_TIMEOUT_S,
        "the requeue",
        slurm_cluster,
    )


def wait_for_first_step(cluster, job: str, run_dir: Path, output: Path) -> None:
    """Until the run logs a training step; fails at once, with the job's log, if the job ends."""

    def progressed() -> bool:
        if any("train/loss" in row for row in read_metrics(run_dir)):
            return True
        state = cluster.job_state(job)
        if state not in {"PENDING", "CONFIGURING", "RUNNING"}:
            log = output.read_text() if output.exists() else "(no output)"
            raise AssertionError(f"job {job} ended {state} before its first step:\n{log}")
        return False

    wait_until(progressed, JOB_TIMEOUT_S, "the first logged training step", cluster, poll_s=0.2)


def wait_until(condition, timeout_s: float, what: str, cluster=None, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError(
        f"timed out waiting for {what}" + (f"\n{cluster.log_tail()}" if cluster else "")
    )


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, tiny_images, tmp_path_factory):
    """One complete 2 x 2 run of the real script: (job id, run dir, output file)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run_dir, output = root / "run", root / "job.out"
    job = submit_training(slurm_cluster, tiny_images, run_dir, output)
    state = slurm_cluster.wait_for_job(job, JOB_TIMEOUT_S)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{output.read_text()}"
    return job, run_dir, output


def test_two_node_job_of_two_processes_each_trains_with_world_size_four(
    slurm_cluster, uninterrupted
):
    job, run_dir, output = uninterrupted
    assert slurm_cluster.job_field(job, "Restarts") == "0"  # a clean finish is not requeued
    log = output.read_text()
    assert "preflight ok: world_size=4 backend=gloo nodes=2" in log
    assert re.search(
        r"--nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=127\.0\.0\.1:\d+ "
        rf"--rdzv-id={job} ",
        log,
    ), log
    assert "world 4" in log  # pipeline.train's start-up line
    assert "final: val/top1=" in log
    assert "training finished (exit 0): not requeueing" in log
    assert (run_dir / "checkpoints" / "last.pt").stat().st_size > 0
    steps = [row["step"] for row in read_metrics(run_dir)]
    assert max(steps) == STEPS
    assert steps == sorted(steps)


def test_usr2_checkpoints_requeues_and_resumes_to_the_same_step_count(
    slurm_cluster, tiny_images, uninterrupted, tmp_path
):
    _, reference_dir, _ = uninterrupted
    run_dir, output = tmp_path / "run", tmp_path / "job.out"
    # W&B offline: the requeued job must continue the same run (the id is in the checkpoint).
    job = submit_training(
        slurm_cluster, tiny_images, run_dir, output, wandb="offline", PREFLIGHT="0"
    )
    wait_for_first_step(slurm_cluster, job, run_dir, output)
    # What Slurm does --signal=B:USR2@S before the time limit: signal the batch shell only.
    usr2_then_requeued(slurm_cluster, job)
    stopped_at = last_step(run_dir)
    assert stopped_at < STEPS, "the run finished before the signal: it did not test preemption"
    # Slurm holds a requeued job for about 2 minutes (BeginTime); release it now.
    wait_until(
        lambda: slurm_cluster.job_state(job) == "PENDING",
        60,
        "the requeued job to be pending",
        slurm_cluster,
    )
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    state = slurm_cluster.wait_for_job(job, JOB_TIMEOUT_S)
    log = output.read_text()
    assert state == "COMPLETED", f"job {job} ended {state}:\n{log}"
    assert "got SIGUSR2: passing USR2 to the training step" in log
    assert "stopped by SIGUSR2 at step" in log
    assert f"requeueing job {job}" in log
    assert f"job {job} restart 1" in log
    assert "resumed from" in log
    assert "training finished (exit 0): not requeueing" in log
    assert last_step(run_dir) == last_step(reference_dir) == STEPS
    # Steps logged before the stop are not repeated after the resume, and none are missing.
    train_steps = [row["step"] for row in read_metrics(run_dir) if "train/loss" in row]
    assert train_steps == list(range(1, STEPS + 1))
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2, wandb_runs
    assert len({path.name.rsplit("-", 1)[1] for path in wandb_runs}) == 1, wandb_runs


def test_unreachable_rendezvous_host_fails_the_job_naming_host_and_port(
    slurm_cluster, tiny_images, tmp_path
):
    output = tmp_path / "job.out"
    # 192.0.2.1 is TEST-NET-1: reserved, never assigned, so nothing answers there.
    job = submit_training(
        slurm_cluster,
        tiny_images,
        tmp_path / "run",
        output,
        RDZV_HOST="192.0.2.1",
        RDZV_PORT="29999",
        RDZV_TIMEOUT="10",
    )
    # The bound: rendezvous timeout (10 s) plus start-up; wait_for_job fails the test past it.
    state = slurm_cluster.wait_for_job(job, 120)
    log = output.read_text()
    assert state == "FAILED", log
    assert "error: preflight failed" in log
    assert "rendezvous at 192.0.2.1:29999" in log and "did not form 2 nodes within 10 s" in log
    assert "training failed" in log and "not requeueing" in log
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_first_node_that_does_not_resolve_fails_the_script_naming_it(slurm_cluster, tmp_path):
    """No localhost fallback: the real script with a node list whose first host is unknown."""
    result = subprocess.run(
        ["bash", str(SBATCH)],
        env={
            **slurm_cluster.env,
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "ghost1.invalid,ghost2.invalid",
            "SLURM_NNODES": "2",
            "PROJECT_DIR": str(REPO),
            "CONFIG": "configs/tiny.yaml",
        },
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "rendezvous host ghost1.invalid (NodeAddr ghost1.invalid) does not resolve" in result.stderr
    )
    assert "set RDZV_HOST" in result.stderr
    assert "srun" not in result.stdout + result.stderr  # failed before launching anything


def test_sigterm_checkpoints_but_does_not_requeue(slurm_cluster, tiny_images, tmp_path):
    """scancel means stop: the trainer still saves, but the script leaves the job ended."""
    run_dir, output = tmp_path / "run", tmp_path / "job.out"
    job = submit_training(slurm_cluster, tiny_images, run_dir, output, PREFLIGHT="0")
    wait_for_first_step(slurm_cluster, job, run_dir, output)
    slurm_cluster.run("scancel", "--signal=TERM", "--batch", job)
    state = slurm_cluster.wait_for_job(job, JOB_TIMEOUT_S)
    log = output.read_text()
    assert state == "FAILED", log
    assert slurm_cluster.job_field(job, "Restarts") == "0"
    assert "got SIGTERM: passing USR2 to the training step" in log
    assert "stopped by SIGUSR2 at step" in log
    assert "not requeueing (scancel means stop" in log
    assert (run_dir / "checkpoints" / "last.pt").stat().st_size > 0
    assert last_step(run_dir) < STEPS


def catches_signal(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (a bash trap sets one)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it has exited
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def test_usr2_before_the_training_step_starts_requeues_without_starting_it(
    slurm_cluster, tmp_path, request
):
    """The real script in a real job's context, signalled while it asks slurmctld for the first
    node's address: slurmctld is paused (SIGSTOP, by our own pid) so that question cannot be
    answered, which holds the script before srun for as long as the test needs."""
    holder = slurm_cluster.run(
        "sbatch", "--parsable", f"--output={tmp_path}/holder.out", "--wrap", "sleep 300"
    ).stdout.strip()
    job = holder.split(";")[0]
    wait_until(
        lambda: slurm_cluster.job_state(job) == "RUNNING", 60, "the job to run", slurm_cluster
    )
    request.addfinalizer(lambda: slurm_cluster.run("scancel", job, check=False))
    controller = slurm_cluster.processes["slurmctld"]
    controller.send_signal(signal.SIGSTOP)
    try:
        script = subprocess.Popen(
            ["bash", str(SBATCH)],
            env={
                **slurm_cluster.env,
                "SLURM_JOB_ID": job,
                "SLURM_JOB_NODELIST": "node1",
                "SLURM_NNODES": "1",
                "PROJECT_DIR": str(REPO),
                "CONFIG": "configs/tiny.yaml",
                "PYTHON": sys.executable,
            },
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        request.addfinalizer(lambda: script.poll() is None and script.kill())
        wait_until(lambda: catches_signal(script.pid, signal.SIGUSR2), 10, "the script's USR2 trap")
        script.send_signal(signal.SIGUSR2)
        time.sleep(1)  # the script is still waiting on `scontrol show node`
        assert script.poll() is None
    finally:
        controller.send_signal(signal.SIGCONT)
    stdout, stderr = script.communicate(timeout=60)
    assert script.returncode == 0, stdout + stderr
    assert "got SIGUSR2 before the training step started" in stdout
    assert f"SIGUSR2 arrived before the training step started: requeueing job {job}" in stdout
    assert "launch: " not in stdout + stderr  # srun (and the launcher) never started
    wait_until(
        lambda: slurm_cluster.job_field(job, "Restarts") == "1", 60, "the requeue", slurm_cluster
    )


def test_a_last_pt_corrupted_between_requeues_falls_back_and_the_job_finishes_on_its_own(
    slurm_cluster, tiny_images, tmp_path
):
    """A node dies while last.pt is copied: the requeued job moves the bad file aside, resumes
    from the previous good checkpoint and finishes, with nobody there to act."""
    run_dir, output = tmp_path / "run", tmp_path / "job.out"
    job = submit_training(slurm_cluster, tiny_images, run_dir, output, PREFLIGHT="0")
    wait_for_first_step(slurm_cluster, job, run_dir, output)
    # past epoch 1's checkpoint (step 8), so a previous good one exists when last.pt is replaced
    wait_until(lambda: last_step(run_dir) >= 10, JOB_TIMEOUT_S, "step 10", slurm_cluster, 0.1)
    usr2_then_requeued(slurm_cluster, job)
    assert last_step(run_dir) < STEPS, "the run finished before the signal"
    wait_until(lambda: slurm_cluster.job_state(job) == "PENDING", 60, "the requeue", slurm_cluster)
    last = run_dir / "checkpoints" / "last.pt"
    size = last.stat().st_size
    with open(last, "r+b") as handle:  # truncated to half, as a copy cut short leaves it
        handle.truncate(size // 2)
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    state = slurm_cluster.wait_for_job(job, JOB_TIMEOUT_S)
    log = output.read_text()
    assert state == "COMPLETED", f"job {job} ended {state}:\n{log}"
    assert "failed its check" in log and "moved aside" in log, log[-3000:]
    moved = sorted((run_dir / "checkpoints").glob("last.pt.bad-*"))
    assert [path.stat().st_size for path in moved if path.suffix != ".sha256"][:1] == [size // 2]
    assert "training finished (exit 0): not requeueing" in log
    assert last_step(run_dir) == STEPS
