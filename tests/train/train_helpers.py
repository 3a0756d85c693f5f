"""Helpers shared by the training tests: argv for the tiny config and torchrun/subprocess
launchers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """argv for pipeline.train on the tiny data (W&B off unless a test turns it on)."""
    return [
        "--config",
        str(REPO / "configs/tiny.yaml"),
        f"data.train_dir={data / 'train'}",
        f"data.val_dir={data / 'val'}",
        f"train.run_dir={run_dir}",
        "log.wandb=disabled",
        "log.plots=false",
        "train.sanity_grid=false",
        *extra,
    ]


def torchrun(
    nproc: int, argv: list[str], timeout: float = 240, **popen
) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=N -m pipeline.train ARGV` on CPU (gloo)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_port=0",
        "--standalone",
        "-m",
        "pipeline.train",
        *argv,
    ]
    return subprocess.run(
        command,
        check=False,
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env


# Loaded through PYTHONPATH (`slow_reads_env`): every batch of the folder backend takes
# SLOW_READ_S more to load, so a run's steps take a known minimum time whatever the machine's
# speed, and a test that acts "after step N" acts well before the epoch ends.
SLOW_READS_HOOK = """
import os, time
import pipeline.data.folder as folder
original = folder.FolderBatches.__getitem__
def slow(self, item):
    time.sleep(float(os.environ["SLOW_READ_S"]))
    return original(self, item)
folder.FolderBatches.__getitem__ = slow
"""


def slow_reads_env(directory: Path, seconds: float) -> dict[str, str]:
    """The environment that loads SLOW_READS_HOOK (written into `directory`) in a child."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SLOW_READS_HOOK)
    return {"PYTHONPATH": str(directory), "SLOW_READ_S": str(seconds)}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ranks(
    world_size: int, argv: list[str], log_dir: Path, **extra_env: str
) -> list[subprocess.Popen]:
    """Start `python -m pipeline.train ARGV` once per rank with RANK/WORLD_SIZE/MASTER_* set, as
    srun without torchrun does (pipeline.distributed reads the same variables)."""
    port = free_port()
    processes = []
    for rank in range(world_size):
        env = child_env(
            **extra_env,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        log = open(log_dir / f"rank{rank}.log", "w")  # noqa: SIM115 (the rank process writes to it after we return)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.train", *argv],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return processes


def sigterm_ranks_when(ranks: list[subprocess.Popen], reached) -> list[int]:
    """Call `reached()` (it returns once the run is where the test wants it, or fails), SIGTERM
    every rank, and return their exit codes; a rank still running afterwards is killed."""
    import signal

    try:
        reached()
        for process in ranks:
            process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=120) for process in ranks]
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()


def start_torchrun(nproc: int, argv: list[str], log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_port=0",
        "--standalone",
        "-m",
        "pipeline.train",
        *argv,
    ]
    return subprocess.Popen(
        command, cwd=REPO, env=child_env(), stdout=open(log_path, "w"), stderr=subprocess.STDOUT
    )


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return children


def latest_step(run_dir: Path) -> int:
    """The highest step logged to RUN_DIR/metrics.jsonl so far (-1 when none)."""
    import json

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return -1
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written right now
    return max(steps, default=-1)


def run_gloo_ranks(world_size: int, function, *args, timeout: float = 120) -> list:
    """`function(dist, *args)` in `world_size` spawned processes joined by a gloo group (no
    torchrun); returns each rank's result (or the exception it raised), in rank order."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    port = free_port()
    with context.Manager() as manager:
        results = manager.dict()
        processes = [
            context.Process(
                target=_gloo_rank, args=(rank, world_size, port, results, function, args)
            )
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                raise TimeoutError(f"rank process {process.pid} did not finish in {timeout} s")
        return [results.get(rank, RuntimeError(f"rank {rank} died")) for rank in range(world_size)]


def _gloo_rank(rank, world_size, port, results, function, args) -> None:
    import datetime

    import torch.distributed as torch_dist

    from pipeline.distributed import DistInfo

    torch_dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results[rank] = function(
            DistInfo(
                rank=rank,
                local_rank=rank,
                world_size=world_size,
                local_world_size=world_size,
                backend="gloo",
            ),
            *args,
        )
    except Exception as err:  # noqa: BLE001 (handed back to the test)
        results[rank] = err
    finally:
        torch_dist.destroy_process_group()
