"""slurm/preprocess.sbatch via slurm/submit_preprocess.sh on a real Slurm: a 2-task array run of
`prepare` gives byte-for-byte the shards and manifests of one local `prepare` run, also with
relative paths and with an undecodable image; an unfinished stage fails the chain loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

WNID_WITH_BAD_IMAGE = "n01443537"
PREPARE_OPTIONS = ["--short-side", "64", "--shard-size", "5", "--workers", "1"]


def shard_files(directory: Path) -> dict[str, bytes]:
    """Tars, DALI indexes, manifest.json and _info.json of one split, by name."""
    wanted = [
        *directory.glob("*.tar"),
        *directory.glob("*.idx"),
        directory / "manifest.json",
        directory / "_info.json",
    ]
    return {path.name: path.read_bytes() for path in wanted}


def prepare_locally(raw: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "preprocess", "prepare", str(raw), str(dst), *PREPARE_OPTIONS],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def submit_chain(
    cluster, raw: str, dst: str, logs: Path, cwd: Path, options: list[str]
) -> dict[str, str]:
    """Run the real submit_preprocess.sh with 2 tasks from `cwd`; returns
    {"resize": id, "shard": id, "finish": id}."""
    logs.mkdir(exist_ok=True)
    submit = subprocess.run(
        [str(REPO / "slurm" / "submit_preprocess.sh"), raw, dst, "--tasks", "2", "--", *options],
        env={
            **cluster.env,
            "PYTHON": sys.executable,
            "SBATCH_ARGS": f"--cpus-per-task=1 --output={logs}/%x-%A_%a.out",
        },
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    jobs = dict(item.split("=") for item in submit.stdout.split())
    assert set(jobs) == {"resize", "shard", "finish"}
    return jobs


def job_logs(logs: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text()}" for path in sorted(logs.iterdir()))


def test_array_job_with_relative_paths_gives_the_shards_of_one_local_prepare_run(
    slurm_cluster, tiny_images, tmp_path
):
    local, logs = tmp_path / "local", tmp_path / "logs"
    result = prepare_locally(tiny_images, local)
    assert result.returncode == 0, result.stderr

    # RAW and DST relative to the submitting directory, which is not the jobs' PROJECT_DIR.
    relative_raw = os.path.relpath(tiny_images, tmp_path)
    assert relative_raw.startswith("..")
    jobs = submit_chain(slurm_cluster, relative_raw, "out/sliced", logs, tmp_path, PREPARE_OPTIONS)
    sliced = tmp_path / "out" / "sliced"
    assert slurm_cluster.job_field(jobs["shard"], "Dependency").startswith(
        f"afterany:{jobs['resize']}"
    )
    # Wait stage by stage, so that a failed resize task fails the test now, not at the timeout.
    for stage in ("shard", "finish"):
        state = slurm_cluster.wait_for_job(jobs[stage], 180)
        assert state == "COMPLETED", f"{stage} job {jobs[stage]} ended {state}:\n{job_logs(logs)}"
    log_text = job_logs(logs)
    # Each array task took its own slice (2 resize + 2 shard tasks) and the final job merged and
    # verified.
    assert log_text.count("(array ids 0-1, 2 tasks): python -m preprocess prepare") == 4
    assert f"prepare {sliced} " not in log_text  # RAW, not DST, follows `prepare`
    assert f"python -m preprocess prepare {tiny_images} {sliced} --stage resize" in log_text
    assert "merged and verified" in log_text
    assert "could not be decoded" not in log_text
    for split in ("train", "val"):
        expected = shard_files(local / split)
        assert any(name.endswith(".tar") for name in expected)
        assert shard_files(sliced / split) == expected, f"{split} shards differ from the local run"


def test_an_undecodable_image_does_not_stall_the_chain_and_the_finish_job_names_it(
    slurm_cluster, raw_with_an_undecodable_image, tmp_path
):
    raw = raw_with_an_undecodable_image
    local, sliced, logs = tmp_path / "local", tmp_path / "sliced", tmp_path / "logs"
    result = prepare_locally(raw, local)
    # prepare's documented status for "finished, some images failed": shards are still written
    assert result.returncode == 1, result.stderr
    assert "1 bad images listed in" in result.stdout

    jobs = submit_chain(slurm_cluster, str(raw), str(sliced), logs, tmp_path, PREPARE_OPTIONS)
    # With afterok the shard job would wait forever (wait_for_job says DependencyNeverSatisfied).
    state = slurm_cluster.wait_for_job(jobs["shard"], 180)
    assert state == "COMPLETED", f"shard job {jobs['shard']} ended {state}:\n{job_logs(logs)}"
    # The finish job ends like the local prepare: exit 1, "finished, some images failed".
    state = slurm_cluster.wait_for_job(jobs["finish"], 180)
    assert state == "FAILED", f"finish job {jobs['finish']} ended {state}:\n{job_logs(logs)}"
    assert slurm_cluster.job_field(jobs["finish"], "ExitCode") == "1:0"
    log_text = job_logs(logs)
    assert "resize task 0: exit 0" in log_text or "resize task 1: exit 0" in log_text
    assert "exit 1 (recorded in" in log_text  # the task that met the bad image
    assert "merged and verified" in log_text
    assert "warning: 1 image(s) could not be decoded and are not in the shards" in log_text
    assert f"{WNID_WITH_BAD_IMAGE}_truncated.JPEG" in log_text.split("could not be decoded")[1]
    for split in ("train", "val"):
        expected = shard_files(local / split)
        assert shard_files(sliced / split) == expected, f"{split} shards differ from the local run"
    # every good image is in the shards: 4 classes x 4 train, 4 x 2 val
    assert sum(name.endswith(".tar") for name in shard_files(sliced / "train")) == 4  # 16 / 5


def test_a_resize_stage_that_did_not_finish_fails_the_chain_naming_the_tasks(
    slurm_cluster, tiny_images, tmp_path
):
    logs = tmp_path / "logs"
    # --quality 0 is refused by every resize task (exit 2): the stage did not finish.
    jobs = submit_chain(
        slurm_cluster, str(tiny_images), str(tmp_path / "out"), logs, tmp_path, ["--quality", "0"]
    )
    for stage in ("shard", "finish"):
        state = slurm_cluster.wait_for_job(jobs[stage], 120)
        assert state == "FAILED", f"{stage} job {jobs[stage]} ended {state}:\n{job_logs(logs)}"
    log_text = job_logs(logs)
    assert "--quality must be in 1..100, got 0" in log_text
    assert (
        "error: not sharding: the resize stage is incomplete: 2 task(s) did not finish" in log_text
    )
    for task in (0, 1):
        assert f"resize task {task} of 2 (job {jobs['resize']}_{task} on " in log_text
    assert "error: not merging" in log_text
    assert "shard task 0 of 2: no exit record" in log_text
    assert "run slurm/submit_preprocess.sh again with the same arguments" in log_text
    assert not (tmp_path / "out" / "train").exists()
