"""kill -9 part-way through `shard` and `prepare`, then rerun: the output equals an uninterrupted
run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from imagefixtures import generated_jpeg, tree_digest

from preprocess.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _write_corpus(root: Path, count: int) -> None:
    for index in range(count):
        folder = root / f"n{index % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{index:04d}.JPEG").write_bytes(generated_jpeg(index, (160, 120)))


def _published(root: Path) -> dict[str, str]:
    """Every file a reader uses (hidden resume records and per-task records aside)."""
    return {
        name: digest
        for name, digest in tree_digest(root).items()
        if not Path(name).name.startswith(".")
    }


def _kill_part_way(command: list[str], progress: Callable[[], int], at_least: int) -> int:
    """Run `command`, SIGKILL its whole process group once progress() >= at_least; progress then."""
    env = {**os.environ, "PREPROCESS_PROGRESS": "0", "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "preprocess", *command],
        env=env,
        cwd=PROJECT_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while progress() < at_least and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)  # main and workers at once, like a node failure
    finally:
        process.wait()
    return progress()


@pytest.mark.slow
def test_shard_resumes_after_kill_9_to_byte_identical_shards(tmp_path, capsys):
    src, killed, reference = tmp_path / "src", tmp_path / "killed", tmp_path / "reference"
    total = 240
    _write_corpus(src, total)
    arguments = ["--split", "train", "--shard-size", "1", "--workers", "1"]
    done = _kill_part_way(
        ["shard", str(src), str(killed), *arguments],
        lambda: len(list(killed.glob("*.tar"))),
        at_least=10,
    )
    assert 10 <= done < total, "the run must be killed part-way"
    assert not (killed / "manifest.json").exists()
    (killed / ".imagenet-train-000239.tar.12345.shard-tmp").write_bytes(b"half a tar")
    assert main(["shard", str(src), str(killed), *arguments]) == 0
    skipped = int(re.search(r"skipped (\d+)", capsys.readouterr().out).group(1))
    # every finished shard is kept; the one killed between its rename and its record is redone
    assert done - 1 <= skipped <= done
    assert main(["shard", str(src), str(reference), *arguments]) == 0
    assert _published(killed) == _published(reference)
    assert not list(killed.glob("*.shard-tmp"))
    assert main(["verify", str(killed), "--workers", "1"]) == 0


@pytest.mark.slow
def test_prepare_resumes_after_kill_9_to_the_same_folders_and_shards(tmp_path, capsys):
    raw, killed, reference = tmp_path / "raw", tmp_path / "killed", tmp_path / "reference"
    total = 200
    _write_corpus(raw / "train", total)
    arguments = ["--splits", "train", "--short-side", "64", "--shard-size", "50", "--workers", "2"]
    done = _kill_part_way(
        ["prepare", str(raw), str(killed), *arguments],
        lambda: len(list((killed / "folders" / "train").glob("*/*.JPEG"))),
        at_least=20,
    )
    assert 20 <= done < total, "the run must be killed part-way"
    # a file cut short by the crash (no fsync reached the disk): resume must redo it
    victim = next((killed / "folders" / "train").glob("*/*.JPEG"))
    victim.write_bytes(victim.read_bytes()[:100])
    assert main(["prepare", str(raw), str(killed), *arguments]) == 0
    assert "skipped" in capsys.readouterr().out
    assert main(["prepare", str(raw), str(reference), *arguments]) == 0
    assert _published(killed) == _published(reference)
    assert main(["verify", str(killed), "--decode", "--workers", "1"]) == 0
