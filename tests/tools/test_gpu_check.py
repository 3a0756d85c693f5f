"""`make gpu-check` in its CPU mode (what CI runs: every part reported, a JSON per part and a
summary), a part that breaks without stopping the rest, and `make gpu-wheels`' folder: split
wheels that join again, and an install with --no-index into a fresh virtual environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tools import gpu_check
from tools.gpu_install import install_wheels
from tools.gpu_wheels import MANIFEST, PARTS_SUFFIX, WheelsError, join_parts, split_wheel

REPO = Path(__file__).resolve().parents[2]
PART_NAMES = [
    "install",
    "environment",
    "gpu-tests",
    "data",
    "doctor",
    "bench-train",
    "bench-loader",
]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **extra}
    env.pop("WANDB_API_KEY", None)
    return env


@pytest.mark.slow
def test_make_gpu_check_in_cpu_mode_reports_every_part_in_one_folder(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "gpu-check",
            f"PYTHON={sys.executable}",
            f"GPU_CHECK_OUT={out}",
            f"GPU_WHEELS={tmp_path / 'no-wheels'}",
            f"GPU_CHECK_ARGS=--quick --data-dir {tmp_path / 'data'} --site {tmp_path / 'site'}",
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [part["name"] for part in summary["parts"]] == PART_NAMES
    assert summary["quick"] is True and summary["cuda"] is False
    parts = {}
    for name in PART_NAMES:
        part = json.loads((out / f"{name}.json").read_text())
        assert part["name"] == name and part["status"] in ("ok", "skipped"), part
        assert part["status"] == "ok" or part["reason"], part  # a skip says why
        parts[name] = part

    assert "does not exist" in parts["install"]["reason"]
    assert parts["environment"]["results"]["cuda_available"] is False
    tests = parts["gpu-tests"]
    assert tests["status"] == "skipped" and "needs a CUDA GPU" in tests["reason"]
    counts = tests["results"]["counts"]
    assert counts["skipped"] >= 7 and counts["passed"] == counts["failed"] == 0
    assert (out / "gpu-tests.xml").is_file()

    doctor = json.loads((out / "doctor-report.json").read_text())
    assert doctor["schema"] == "imagenet-doctor/1" and doctor["exit_code"] == 0
    assert parts["doctor"]["results"]["verdict"]["bound"] == doctor["verdict"]["bound"]
    bench = json.loads((out / "bench-train-cpu.json").read_text())
    assert bench["step_images_per_s"] > 0 and bench["loader"]["backend"] == "folder"
    assert 0 <= bench["loader"]["data_wait_frac"] <= 1
    loader = parts["bench-loader"]["results"]
    assert loader["images_per_s"]["folder"] > 0 and "dali-mixed" in loader["skipped"]
    assert loader["images_per_s"]["folder-threads"] > 0 and loader["images_per_s"]["decode"] > 0
    assert json.loads((out / "bench-loader-results.json").read_text())["results"]["folder@224"]

    table = (out / "summary.md").read_text()
    for name in PART_NAMES:
        assert f"| {name} | {parts[name]['status']} |" in table
    assert table in result.stdout


def test_a_part_that_breaks_is_reported_failed_and_the_next_part_still_runs(tmp_path, monkeypatch):
    ran = []

    def broken(context, part):
        raise KeyError("no such thing")

    def fine(context, part):
        ran.append(part.name)
        part.headline = "measured"

    monkeypatch.setattr(
        gpu_check, "PARTS", [("environment", fine), ("doctor", broken), ("bench-train", fine)]
    )
    code = gpu_check.main(["--out", str(tmp_path), "--data-dir", str(tmp_path / "data")])
    assert code == 1 and ran == ["environment", "bench-train"]
    failed = json.loads((tmp_path / "doctor.json").read_text())
    assert failed["status"] == "failed" and failed["reason"] == "KeyError: 'no such thing'"
    assert "| bench-train | ok |" in (tmp_path / "summary.md").read_text()


def test_a_split_wheel_joins_back_byte_for_byte_and_a_missing_part_is_one_line(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    original = os.urandom(250_000)
    wheel = wheels / "demo_pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(original)
    parts = split_wheel(wheel, 0.1)  # 0.1 MiB: three parts
    assert len(parts) == 3 and not wheel.exists()
    assert all(part.stat().st_size <= 0.1 * 2**20 for part in parts)
    record = json.loads((wheels / (wheel.name + PARTS_SUFFIX)).read_text())
    assert record["bytes"] == len(original) and record["parts"] == [p.name for p in parts]
    joined = join_parts(wheels, tmp_path / "joined")
    assert joined == [tmp_path / "joined" / wheel.name]
    assert joined[0].read_bytes() == original
    parts[1].unlink()
    with pytest.raises(WheelsError, match=r"part demo_pkg-1.0-py3-none-any.whl.part001 .*missing"):
        join_parts(wheels, tmp_path / "again")


def index_reachable() -> bool:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/braceexpand/"
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.network
def test_make_gpu_wheels_folder_installs_with_no_index_into_a_fresh_venv(tmp_path):
    if not index_reachable():
        pytest.skip("the package index is unreachable from here")
    wheels = tmp_path / "wheels"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    download = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "gpu-wheels",
            f"PYTHON={sys.executable}",
            f"GPU_WHEELS={wheels}",
            f"PYTHON_VERSION={version}",
            "SPLIT_MB=0.02",  # 20 KiB: webdataset's wheel is split, braceexpand's is not
            "GPU_WHEELS_ARGS=--packages webdataset braceexpand --no-deps",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert download.returncode == 0, download.stdout[-3000:] + download.stderr[-3000:]
    manifest = json.loads((wheels / MANIFEST).read_text())
    assert manifest["python_version"] == version and manifest["no_deps"] is True
    assert any(entry["wheel"].startswith("webdataset-") for entry in manifest["split"])
    assert not list(wheels.glob("webdataset-*.whl"))  # only its parts travel
    assert list(wheels.glob("braceexpand-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    # no pip configuration at all: the folder alone must be enough
    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    offline["PIP_CONFIG_FILE"] = os.devnull
    done = install_wheels(wheels, python, tmp_path / "site", tmp_path, env=offline)
    assert "--no-index" in done["command"] and done["on_pythonpath"] is False
    assert any(name.startswith("webdataset-") for name in done["rebuilt"])
    probe = (
        "import braceexpand, importlib.metadata as m; "
        "print(m.version('webdataset'), list(braceexpand.braceexpand('a{0..1}')))"
    )
    check = subprocess.run(
        [python, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=offline,
    )
    installed = check.stdout.split()[0]
    assert installed.startswith("1.") and "['a0', 'a1']" in check.stdout
