"""slurm/preprocess.sbatch via slurm/submit_preprocess.sh on a real Slurm: a 2-task array run of
`prepare` gives byte-for-byte the shards and manifests of one local `prepare` run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

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


def test_array_job_shards_are_identical_to_one_local_prepare_run(
    slurm_cluster, tiny_images, tmp_path
):
    local, sliced, logs = tmp_path / "local", tmp_path / "sliced", tmp_path / "logs"
    logs.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess",
            "prepare",
            str(tiny_images),
            str(local),
            *PREPARE_OPTIONS,
        ],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    submit = subprocess.run(
        [
            str(REPO / "slurm" / "submit_preprocess.sh"),
            str(tiny_images),
            str(sliced),
            "--tasks",
            "2",
            "--",
            *PREPARE_OPTIONS,
        ],
        env={
            **slurm_cluster.env,
            "PYTHON": sys.executable,
            "SBATCH_ARGS": f"--cpus-per-task=1 --output={logs}/%x-%A_%a.out",
        },
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    jobs = dict(item.split("=") for item in submit.stdout.split())
    assert set(jobs) == {"resize", "shard", "finish"}
    assert (
        slurm_cluster.job_field(jobs["shard"], "Dependency")
        == f"afterok:{jobs['resize']}_*(unfulfilled)"
    )

    def job_logs() -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()}" for path in sorted(logs.iterdir()))

    # Wait stage by stage, so that a failed resize task fails the test now, not at the timeout.
    for stage in ("shard", "finish"):
        state = slurm_cluster.wait_for_job(jobs[stage], 180)
        assert state == "COMPLETED", f"{stage} job {jobs[stage]} ended {state}:\n{job_logs()}"
    log_text = job_logs()
    # Each array task took its own slice (2 resize + 2 shard tasks) and the final job merged + verified.
    assert log_text.count("(array ids 0-1, 2 tasks): python -m preprocess prepare") == 4
    assert "merged and verified" in log_text
    for split in ("train", "val"):
        expected = shard_files(local / split)
        assert any(name.endswith(".tar") for name in expected)
        assert shard_files(sliced / split) == expected, f"{split} shards differ from the local run"
