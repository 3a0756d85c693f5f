"""slurm/train.sbatch with DOCTOR=1 on a real two-node Slurm: the doctor runs in place of the
trainer on 2 nodes x 2 gloo ranks (through launch/ and torchrun c10d, as training would), measures
the all-reduce within and across the nodes, and leaves doctor.json in the run dir."""

from __future__ import annotations

import json
import sys

import pytest
from slurm_cluster import REPO, free_port

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SBATCH = REPO / "slurm" / "train.sbatch"
JOB_TIMEOUT_S = 300


def test_doctor_1_runs_the_doctor_on_every_rank_of_a_two_node_job(
    slurm_cluster, tiny_images, tmp_path
):
    run_dir, output = tmp_path / "run", tmp_path / "job.out"
    overrides = " ".join(
        [
            f"data.train_dir={tiny_images / 'train'}",
            f"data.val_dir={tiny_images / 'val'}",
            "data.global_batch_size=8",
            "--quick",
        ]
    )
    exports = {
        "PYTHON": sys.executable,
        "PROJECT_DIR": str(REPO),
        "NPROC_PER_NODE": "2",
        "CONFIG": "configs/tiny.yaml",
        "RUN_DIR": str(run_dir),
        "OVERRIDES": overrides,
        "DOCTOR": "1",
        "RDZV_TIMEOUT": "120",
        "RDZV_PORT": str(free_port()),  # not 29500 + job id: another test cluster may share it
        "OMP_NUM_THREADS": "1",
    }
    export = ",".join(["ALL", *(f"{key}={value}" for key, value in exports.items())])
    job = (
        slurm_cluster.run(
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--gpus-per-node=0",
            f"--output={output}",
            f"--export={export}",
            str(SBATCH),
        )
        .stdout.strip()
        .split(";")[0]
    )
    state = slurm_cluster.wait_for_job(job, JOB_TIMEOUT_S)
    log = output.read_text()
    assert state == "COMPLETED", f"job {job} ended {state}:\n{log}"
    assert "-m pipeline.doctor --config configs/tiny.yaml" in log
    assert log.count("pipeline.doctor: configs/tiny.yaml on 4 rank(s), 2 node(s), gloo") == 1
    assert "doctor finished (exit 0)" in log and "final: val/top1=" not in log
    report = json.loads((run_dir / "doctor.json").read_text())
    assert report["world"]["world_size"] == 4 and report["world"]["nodes"] == 2
    collectives = {check["name"]: check for check in report["sections"]["collectives"]}
    for name in ("all-reduce", "within nodes", "across nodes"):
        assert collectives[name]["status"] == "ok", collectives[name]
        assert collectives[name]["values"]["bus_gb_per_s"] > 0
    assert collectives["within nodes"]["values"]["group_size"] == 2
    assert collectives["across nodes"]["values"]["group_size"] == 2
    kinds = {link["kind"] for link in collectives["slowest link"]["values"]["links"]}
    assert kinds == {"ring", "ring_across_nodes"}
    assert not (run_dir / "checkpoints").exists()  # nothing trained
