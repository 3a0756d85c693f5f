"""tools/bench_resize.py through its main(argv): help, bad arguments, and our resize timed on the
photos shipped in tools/photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench_resize import DEFAULT_PHOTOS, main

REPO = Path(__file__).resolve().parents[2]


def test_help_exits_0_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bench_times_our_resize_and_reports_ratios(capsys):
    assert main(["--images", "4", "--workers", "1", "--repeat", "1"]) == 0
    output = capsys.readouterr().out
    assert "preprocess resize, 1 worker" in output and "single-core rate" in output
    # the default corpus is the repository's own tools/photos, wherever the checkout lives
    assert DEFAULT_PHOTOS == REPO / "tools" / "photos"
    assert f"cycled from {DEFAULT_PHOTOS}" in output


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    assert main(["--images", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --images must be >= 1, got 0"
    assert main(["--images", "2", "--photos", str(tmp_path)]) == 2
    assert "no photos found: pass --photos DIR" in capsys.readouterr().err
