"""Run one demo stage's command: its output teed to WORKDIR/logs/<stage>.log (and the console);
a failure raises `StageFailed` naming the stage, the most telling line and the log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


class StageFailed(Exception):
    """A stage's command failed; the message names the stage and its log."""


# A line that names the cause: "error: ..." from our CLIs, or a worker's "[rank0]: SomeError: ...".
CAUSE_LINE = re.compile(r"^(\[rank\d+\]:\s*)?(error:|\w*(Error|Exception)\b:?)")


GLOG_LINE = re.compile(r"^[IWE]\d{4} ")  # torchrun's own "W1123 00:13:40 ..." log lines


def cause_line(output: str) -> str:
    """The most telling line of a failed command's output: the first error, else the last line.

    torchrun ends a failure with its own ChildFailedError report, so the worker's first
    exception is the useful line, not the last one.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if CAUSE_LINE.match(line) and "ChildFailedError" not in line:
            return line
    meaningful = [line for line in lines if line.strip("=-") and not GLOG_LINE.match(line)]
    return (meaningful or lines or ["(no output)"])[-1]


def run_stage(
    stage: str, command: list[str], log_path: Path, *, env: dict[str, str], echo: bool
) -> str:
    """Run one stage's command, teeing its output to `log_path` (and the console); return the
    output."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    chunks: list[bytes] = []
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        try:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPOSITORY_ROOT,
            )
        except OSError as err:
            raise StageFailed(f"stage '{stage}' could not start {command[0]}: {err}") from err
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            chunks.append(chunk)
            log.write(chunk)
            log.flush()
            if echo:
                echo_bytes(chunk)
        returncode = process.wait()
    output = b"".join(chunks).decode(errors="replace")
    if returncode != 0:
        raise StageFailed(
            f"stage '{stage}' failed with exit status {returncode}: {cause_line(output)!r}; "
            f"full log: {log_path}"
        )
    return output


def echo_bytes(chunk: bytes) -> None:
    """Pass a stage's raw output through (progress bars' carriage returns included)."""
    stream = getattr(sys.stdout, "buffer", None)  # absent when stdout is a StringIO or a notebook
    if stream is not None:
        stream.write(chunk)
        stream.flush()
    else:
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()


def stage_environment() -> dict[str, str]:
    """The environment the stages run in: unbuffered output, one thread per rank, W&B quiet."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # 2 ranks on a small CPU: one intra-op thread each avoids oversubscription (torchrun would
    # set this too, with a warning).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("WANDB_CONSOLE", "off")
    return env
