"""pipeline.doctor on real processes: 2 gloo ranks under torchrun (--quick, tiny data), and a rank
that cannot reach the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import REPO, child_env, free_port

from pipeline.config import load_config
from pipeline.models import build_model

pytestmark = pytest.mark.slow


def doctor_command(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "pipeline.doctor",
        "--config",
        str(REPO / "configs/tiny.yaml"),
        f"data.train_dir={data / 'train'}",  # the shards; the class folders are found next to them
        f"data.val_dir={data / 'val'}",
        "data.backend=wds",
        "data.global_batch_size=8",
        f"train.run_dir={run_dir}",
        "--quick",
        *extra,
    ]


@pytest.fixture(scope="module")
def two_ranks(prepared_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("doctor-2") / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        *doctor_command(prepared_data, run_dir),
    ]
    result = subprocess.run(
        command,
        check=False,
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    report_path = run_dir / "doctor.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return result, report


def checks_of(report: dict, section: str) -> dict[str, dict]:
    return {check["name"]: check for check in report["sections"][section]}


def test_two_gloo_ranks_report_every_section_once_with_per_rank_numbers(two_ranks):
    result, report = two_ranks
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("pipeline.doctor: ") == 1  # the table comes from rank 0 only
    assert "2 rank(s), 1 node(s), gloo on cpu" in result.stdout
    assert report["world"]["world_size"] == 2 and report["world"]["backend"] == "gloo"
    assert len(report["world"]["devices"]) == 2
    data = checks_of(report, "data")
    assert data["wds"]["values"]["configured"] is True
    assert data["folder"]["values"]["directory"].endswith(str(Path("folders") / "train"))
    for label in ("wds", "folder"):
        rates = data[label]["values"]["images_per_s_per_rank"]
        assert len(rates) == 2 and min(rates) > 0
    assert data["read"]["values"]["layout"] == "shards"
    assert sum(rank["bytes"] for rank in data["read"]["values"]["per_rank"]) > 0
    model = checks_of(report, "model")
    assert len(model["step"]["values"]["images_per_s_per_rank"]) == 2
    assert min(model["ddp step"]["values"]["images_per_s_per_rank"]) > 0


def test_two_gloo_ranks_measure_the_all_reduce_at_the_gradient_size_and_name_the_slowest(
    two_ranks,
):
    _, report = two_ranks
    collectives = checks_of(report, "collectives")
    all_reduce = collectives["all-reduce"]
    assert all_reduce["status"] == "ok"
    values = all_reduce["values"]
    assert values["backend"] == "gloo" and values["group_size"] == 2
    assert values["bus_gb_per_s"] > 0 and values["median_s"] > 0
    assert len(values["per_rank_median_s"]) == 2
    cfg = load_config(REPO / "configs/tiny.yaml")
    assert values["gradient_bytes"] == 4 * sum(
        p.numel() for p in build_model(cfg.model, 8).parameters()
    )
    assert collectives["across nodes"]["status"] == "skip"  # one node
    assert collectives["gloo side group"]["status"] == "info"  # gloo is the training backend
    slowest = collectives["slowest link"]["values"]
    assert slowest["rank"] in (0, 1) and slowest["from_rank"] == 1 - slowest["rank"]
    assert slowest["gb_per_s"] > 0 and len(slowest["links"]) == 2
    verdict = report["verdict"]
    assert verdict["rates_images_per_s_per_rank"]["all-reduce"] > 0
    assert verdict["bound"] in ("disk", "decode", "all-reduce", "compute")


def test_a_rank_that_cannot_reach_the_others_fails_within_the_timeout_in_one_line(
    prepared_data, tmp_path
):
    """Rank 0 of a world of 2 whose rank 1 never starts: the process group cannot form."""
    env = child_env(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    result = subprocess.run(
        [sys.executable, *doctor_command(prepared_data, tmp_path / "run", "--timeout", "3")],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: doctor: collectives/process group: rank 0 of 2 ")
    report = json.loads((tmp_path / "run" / "doctor.json").read_text())
    assert report["status"] == "fail" and len(report["failures"]) == 1
