"""launch/: the torchrun wrapper's checks and commands, the preflight, and what reaches workers."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.torchrun import LaunchError, main, parse_endpoint

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["-m", "pipeline.train", "--config", "configs/tiny.yaml"]


def launched_commands(capsys) -> list[list[str]]:
    """The torchrun command lines `main --dry-run` printed, preflight first."""
    out = capsys.readouterr().out
    return [
        shlex.split(
            line.split(": ", 1)[1] if "preflight:" not in line else line.split("preflight: ", 1)[1]
        )
        for line in out.splitlines()
        if line.startswith("launch: ")
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_one_node_dry_run_prints_a_standalone_torchrun_with_the_given_process_count(capsys):
    assert main(["--nproc", "3", "--dry-run", "--", *TRAIN]) == 0
    preflight, train = launched_commands(capsys)
    assert train[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in train and "--nnodes=1" in train and "--nproc-per-node=3" in train
    assert train[-len(TRAIN) :] == TRAIN
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2" in train
    assert "--shutdown-timeout=120" in train
    assert preflight[preflight.index("-m", 3) : preflight.index("-m", 3) + 2] == [
        "-m",
        "launch.preflight",
    ]


def test_several_nodes_use_c10d_on_the_endpoint_with_an_id_and_bounded_timeouts(capsys):
    assert (
        main(
            [
                "--nproc",
                "8",
                "--nnodes",
                "4",
                "--rdzv-endpoint",
                "127.0.0.1:29400",
                "--rdzv-id",
                "exp7",
                "--rdzv-timeout",
                "45",
                "--no-preflight",
                "--dry-run",
                "--",
                *TRAIN,
            ]
        )
        == 0
    )
    (train,) = launched_commands(capsys)
    assert "--standalone" not in train
    for flag in [
        "--nnodes=4",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:29400",
        "--rdzv-id=exp7",
        "--rdzv-conf=join_timeout=45,read_timeout=45",
        "--max-restarts=0",
    ]:
        assert flag in train, flag


def test_preflight_forms_the_same_world_under_its_own_rendezvous_id(capsys):
    assert (
        main(
            [
                "--nproc",
                "2",
                "--nnodes",
                "2",
                "--rdzv-endpoint",
                "localhost:29400",
                "--rdzv-id",
                "job9",
                "--dry-run",
                "--",
                *TRAIN,
            ]
        )
        == 0
    )
    preflight, train = launched_commands(capsys)
    assert "--rdzv-id=job9-preflight" in preflight and "--rdzv-id=job9" in train
    assert "--rdzv-endpoint=localhost:29400" in preflight


def test_several_nodes_without_an_endpoint_are_refused_instead_of_using_localhost(capsys):
    assert main(["--nproc", "8", "--nnodes", "2", "--dry-run", "--", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "--nnodes 2 needs --rdzv-endpoint HOST:PORT" in err and "no localhost default" in err


def test_an_unresolvable_rendezvous_host_is_refused_naming_it(capsys):
    assert (
        main(
            [
                "--nproc",
                "1",
                "--nnodes",
                "2",
                "--rdzv-endpoint",
                "no-such-node.invalid:29400",
                "--dry-run",
                "--",
                *TRAIN,
            ]
        )
        == 2
    )
    assert "rendezvous host 'no-such-node.invalid' does not resolve" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("node001", "is not HOST:PORT"),
        (":29500", "is not HOST:PORT"),
        ("node001:http", "port 'http' is not a number"),
        ("node001:0", "port 0 is outside 1-65535"),
        ("node001:70000", "port 70000 is outside 1-65535"),
        ("fe80::1:29500", "is not HOST:PORT"),
    ],
)
def test_malformed_endpoints_are_refused_with_what_was_received(endpoint, message):
    with pytest.raises(LaunchError, match=message):
        parse_endpoint(endpoint)


def test_endpoints_parse_host_names_ipv4_and_bracketed_ipv6():
    assert parse_endpoint("node001:29500") == ("node001", 29500)
    assert parse_endpoint("10.0.0.1:1") == ("10.0.0.1", 1)
    assert parse_endpoint("[fe80::1]:65535") == ("fe80::1", 65535)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nproc", "1", "--nnodes", "0"], "--nnodes 0: need at least 1 node"),
        (["--nproc", "0"], "--nproc 0: need at least 1 process per node"),
        (["--nproc", "1", "--rdzv-timeout", "0"], "--rdzv-timeout 0: must be at least 1 second"),
        (["--nproc", "1", "--rdzv-id", "a b"], "--rdzv-id 'a b': use a non-empty id"),
    ],
)
def test_nonsense_counts_timeouts_and_ids_exit_2_with_what_was_received(argv, message, capsys):
    assert main([*argv, "--dry-run", "--", *TRAIN]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["--nproc", "2"])
    assert exit_info.value.code == 2


def test_no_gpu_and_no_process_count_asks_for_nproc(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the default process count is its GPU count")
    assert main(["--dry-run", "--", *TRAIN]) == 2
    assert "pass --nproc N" in capsys.readouterr().err


@pytest.mark.slow
def test_preflight_all_reduces_across_two_cpu_processes_and_reports_the_world(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "launch.preflight",
            f"--report-file={report}",
            "--timeout=60",
        ],
        cwd=REPO,
        env=child_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "preflight ok: world_size=2 backend=gloo nodes=1 all_reduce=2" in result.stdout
    assert "gloo side group" in result.stdout  # the trainer's CPU group answered too
    data = json.loads(report.read_text())
    assert data["stage"] == "done" and data["world_size"] == 2
    assert data["gloo_all_reduce_s"] >= 0
    assert data["nodes"] == [
        {"node": 0, "host": socket.gethostname(), "ranks": [0, 1], "devices": ["cpu", "cpu"]}
    ]


@pytest.mark.slow
def test_a_rendezvous_nobody_joins_fails_within_the_bound_naming_host_and_port():
    port = free_port()  # this node hosts the store there, but the second node never comes
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            "--nproc",
            "1",
            "--nnodes",
            "2",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-timeout",
            "5",
            "--",
            "-m",
            "launch.preflight",
        ],
        check=False,
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,  # the bound: 5 s of rendezvous plus start-up; a hang fails the test here
    )
    assert result.returncode == 1
    assert (
        f"rendezvous at 127.0.0.1:{port} (id imagenet-preflight) did not form 2 nodes within 5 s"
        in result.stderr
    )
    assert "launch: /" not in result.stdout.replace("launch: preflight:", ""), (
        "training must not start"
    )


@pytest.mark.slow
def test_sigusr1_sent_to_the_launcher_reaches_the_workers(tmp_path):
    """torchrun alone lets SIGUSR1 kill itself; through launch/ the worker gets it and can save."""
    marker = tmp_path / "worker.txt"
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import signal, sys, time, pathlib\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "def stop(signum, frame):\n"
        "    marker.write_text(f'got {signal.Signals(signum).name}')\n"
        "    sys.exit(75)\n"
        "signal.signal(signal.SIGUSR1, stop)\n"
        "marker.write_text('ready')\n"
        "time.sleep(120)\n"
    )
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch",
            "--nproc",
            "1",
            "--no-preflight",
            "--shutdown-timeout",
            "30",
            "--",
            str(worker),
        ],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text() == "ready"):
            assert launcher.poll() is None and time.monotonic() < deadline, (
                launcher.stdout.read() if launcher.poll() is not None else "worker never started"
            )
            time.sleep(0.2)
        launcher.send_signal(signal.SIGUSR1)
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert marker.read_text() == "got SIGUSR1"
    assert launcher.returncode != 0


def test_elastic_options_pass_through_to_torchrun(capsys):
    argv = ["--nproc", "2", "--max-restarts", "3", "--nnodes", "1:2", "--rdzv-endpoint"]
    assert main([*argv, "127.0.0.1:29400", "--dry-run", "--no-preflight", "--", *TRAIN]) == 0
    train = capsys.readouterr().out.split("launch: ", 1)[1].split()
    assert "--max-restarts=3" in train and "--nnodes=1:2" in train
    assert main(["--nproc", "1", "--nnodes", "3:2", "--dry-run", "--", *TRAIN]) == 2
    assert "MIN <= MAX" in capsys.readouterr().err


def test_nccl_failure_handling_is_set_for_gpu_runs_with_the_dump_in_the_run_dir(monkeypatch):
    from launch.torchrun import worker_environment

    for name in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_DUMP_ON_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    env = worker_environment("cuda", "/runs/a", visible_gpus=0)
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert int(env["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == "/runs/a/nccl_trace/rank_"
    assert env["TORCH_FR_DUMP_TEMP_FILE"] == env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"]
    assert worker_environment("auto", "/runs/a", visible_gpus=8) == env
    assert worker_environment("cpu", "/runs/a", visible_gpus=8) == {}
    assert worker_environment("auto", "/runs/a", visible_gpus=0) == {}
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")  # the user's choice wins
    assert worker_environment("cuda", "/r", 1)["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"


def test_the_launcher_exits_75_only_when_the_group_stopped_to_be_resumed():
    from launch.torchrun import failed_status

    assert failed_status({75}) == 75  # every rank checkpointed on a signal
    assert failed_status({75, -9}) == 75  # the watchdog's verdict; the stalled rank was killed
    assert failed_status({75, 1}) == 1  # a rank crashed: not a resumable stop
    assert failed_status({-9}) == 1  # killed, with no verdict or checkpoint
    assert failed_status({1}) == 1
