"""`bench_loader --source loopback` (tools/bench_source.py) through main(argv): nginx serves the
benchmark shards on 127.0.0.1, and one run prints the local, cold and warm rows and their ratios
(figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tools.bench_loader import main

PHOTO = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "photo.jpg"


@pytest.mark.skipif(
    not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()), reason="needs nginx"
)
def test_one_run_reports_local_cold_and_warm_rows_and_the_source_bandwidth(tmp_path, capsys):
    argv = ["--images", "64", "--workers", "0", "--batch-size", "16", "--seconds", "0.2"]
    argv += ["--rounds", "1", "--sizes", "32", "--source", "loopback"]
    (tmp_path / "photos").mkdir()
    shutil.copy(PHOTO, tmp_path / "photos" / "photo.jpg")
    argv += ["--photos", str(tmp_path / "photos"), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--json", str(tmp_path / "out.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if " px: " in line]
    assert rows == ["wds-local", "wds-cold", "wds-warm"]
    assert "MB/s (loopback)" in out and "cold " in out and "warm " in out
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert all(entry["images_per_s"] > 0 for entry in results.values())
