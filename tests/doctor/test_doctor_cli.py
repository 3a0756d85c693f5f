"""pipeline.doctor through main(argv) in-process on one rank (CPU, gloo-free), --quick, on tiny
data in prepare's layout: every section in the table and in doctor.json, with real numbers, and
one-line failures."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.doctor.cli import main
from pipeline.doctor.report import SCHEMA, SECTIONS
from pipeline.doctor.verdict import BOUNDS
from pipeline.models import build_model

REPO = Path(__file__).resolve().parents[2]
STATUSES = {"ok", "warn", "fail", "skip", "info"}
ENVIRONMENT_CHECKS = {
    "torch + driver",
    "devices",
    "precision",
    "nccl",
    "failure handling",
    "dali",
    "pillow",
    "disk",
    "memory",
    "cpu cores",
}


RAMP = ("data.res_start=64", "data.res_ramp_start=1", "data.res_ramp_end=3")


def doctor_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "configs/tiny.yaml"),
        f"data.train_dir={data / 'folders' / 'train'}",
        f"data.val_dir={data / 'folders' / 'val'}",
        "data.global_batch_size=8",
        f"train.run_dir={run_dir}",
        "--quick",
        *extra,
    ]


@pytest.fixture(scope="module")
def one_rank(prepared_data, tmp_path_factory):
    """One in-process --quick run with a resolution ramp (64 px for epochs 0-2, 96 px for epoch
    3): (exit code, stdout, doctor.json)."""
    run_dir = tmp_path_factory.mktemp("doctor") / "run"
    ramp = ("data.train_crop=96", "data.val_crop=96", "data.val_resize=110", *RAMP)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(doctor_args(prepared_data, run_dir, *ramp))
    return code, out.getvalue(), json.loads((run_dir / "doctor.json").read_text())


def checks_of(report: dict, section: str) -> dict[str, dict]:
    return {check["name"]: check for check in report["sections"][section]}


def test_one_rank_report_holds_every_section_in_the_table_and_the_json(one_rank):
    code, stdout, report = one_rank
    assert code == 0, stdout
    lines = stdout.splitlines()
    assert lines[0].startswith("pipeline.doctor: ") and "1 rank(s)" in lines[0]
    for section in SECTIONS:
        assert any(line.startswith(section) for line in lines), section
    table = lines[: next(i for i, line in enumerate(lines) if line.startswith("report: "))]
    assert all(len(line) <= 100 for line in table)
    assert report["schema"] == SCHEMA and report["exit_code"] == 0
    assert report["status"] in ("ok", "warn") and report["failures"] == []
    assert set(report["sections"]) == set(SECTIONS)
    for section, checks in report["sections"].items():
        assert checks, section
        for check in checks:
            assert set(check) == {"section", "name", "status", "summary", "values"}
            assert check["section"] == section and check["status"] in STATUSES
            assert check["summary"] and "\n" not in check["summary"]
    assert ENVIRONMENT_CHECKS <= set(checks_of(report, "environment"))
    assert report["world"]["world_size"] == 1 and report["world"]["device"] == "cpu"
    assert report["config"]["data"]["global_batch_size"] == 8


def test_one_rank_measures_the_configured_and_the_other_backends_with_real_numbers(one_rank):
    _, _, report = one_rank
    data = checks_of(report, "data")
    read = data["read"]["values"]
    assert read["layout"] == "folders" and read["nodes"][0]["bytes_per_s"] > 0
    assert read["per_rank"][0]["files"] > 0 and read["bytes_per_image"] > 100  # real JPEGs
    assert data["folder"]["values"]["configured"] is True
    assert data["wds"]["values"]["configured"] is False  # found at DST/train by prepare's layout
    assert data["wds"]["values"]["directory"].endswith("train")
    for label in ("folder", "wds"):
        assert data[label]["status"] == "ok"
        assert data[label]["values"]["images_per_s_per_rank"][0] > 0
        assert data[label]["values"]["cpu_ms_per_image_per_rank"][0] > 0
    assert data["ROI JPEG decoder"]["status"] in ("ok", "warn")
    # the fixture's JPEGs are Pillow's plain ones, not preprocess's: no restart markers
    markers = data["JPEG restart markers"]
    assert markers["status"] == "warn" and markers["values"] == {"sampled": 32, "marked": 0}
    assert set(data["cores to feed the step"]["values"]["cores_per_rank"]) >= {"folder", "wds"}
    model = checks_of(report, "model")["step"]["values"]
    assert model["images_per_s_per_rank"][0] > 0 and model["peak_memory_gb"] > 0
    assert model["per_rank_batch"] == 8


def test_a_resolution_ramp_gets_the_steps_images_per_s_at_each_size_and_over_the_run(one_rank):
    _, out, report = one_rank
    ramp = checks_of(report, "model")["step by size"]
    rates = {int(size): rate for size, rate in ramp["values"]["images_per_s_by_size"].items()}
    assert sorted(rates) == [64, 96] and all(rate > 0 for rate in rates.values())
    # 3 epochs at 64 px and 1 at 96: the run's rate is the epoch-time-weighted mean
    expected = 4 / (3 / rates[64] + 1 / rates[96])
    assert ramp["values"]["mean"] == pytest.approx(expected, rel=0.01)
    assert "64 px" in ramp["summary"] and "(3 epochs)" in ramp["summary"]
    assert "step by size" in out


def test_the_gradient_size_is_the_configured_models_parameter_count(one_rank, prepared_data):
    _, _, report = one_rank
    cfg = load_config(REPO / "configs/tiny.yaml")
    parameters = sum(p.numel() for p in build_model(cfg.model, 8).parameters())
    collective = checks_of(report, "collectives")["all-reduce"]
    assert collective["status"] == "skip" and "world of one" in collective["summary"]
    assert collective["values"]["gradient_bytes"] == 4 * parameters


def test_the_verdict_names_a_bound_with_its_numbers_and_a_change(one_rank):
    _, stdout, report = one_rank
    verdict = report["verdict"]
    assert verdict["bound"] in BOUNDS
    rates = verdict["rates_images_per_s_per_rank"]
    assert set(rates) == set(BOUNDS)
    assert rates["all-reduce"] is None  # a world of one does not all-reduce
    assert rates[verdict["bound"]] == min(rate for rate in rates.values() if rate)
    assert verdict["expected_images_per_s"] == pytest.approx(rates[verdict["bound"]], rel=0.01)
    assert verdict["change"]["text"] and verdict["comm_hook"] is None
    assert f"  {'ok' if verdict['bound'] == 'compute' else 'warn':<5} bound" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_config_on_a_machine_without_it_fails_in_one_line_with_exit_1(
    prepared_data, tmp_path, capsys
):
    target = tmp_path / "elsewhere" / "report.json"  # --json replaces RUN_DIR/doctor.json
    code = main(
        doctor_args(prepared_data, tmp_path / "run", "train.device=cuda", "--json", str(target))
    )
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cuda" in errors[0].lower(), captured.err
    assert errors[0].startswith("error: doctor: environment/devices: ")
    assert not (tmp_path / "run" / "doctor.json").exists()
    report = json.loads(target.read_text())
    assert report["schema"] == SCHEMA
    assert report["status"] == "fail" and report["exit_code"] == 1
    assert report["failures"] == [errors[0].removeprefix("error: doctor: ")]
    # no measurement ran on a device the config cannot have
    assert all(check["status"] == "skip" for check in report["sections"]["model"])
    assert "environment" in captured.out  # the table still shows what this node has


def test_a_missing_train_dir_fails_the_data_check_and_names_the_key(tmp_path, capsys):
    code = main(
        [
            "--config",
            str(REPO / "configs/tiny.yaml"),
            f"data.train_dir={tmp_path / 'nowhere'}",
            f"train.run_dir={tmp_path / 'run'}",
            "--quick",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "error: doctor: data/read: rank 0: data.train_dir=" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data.no_such_key=1"], "unknown config key data.no_such_key"),
        (["--timeout", "0"], "--timeout 0 must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["--config", str(REPO / "configs/tiny.yaml"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
