"""tools/bench_train: the step and the loader at each size of a resolution ramp."""

from __future__ import annotations

import json

from tools.bench_train import main

SMALL = ["--batch-size", "4", "--steps", "2", "--warmup", "1", "--num-workers", "0"]
NARROW = ["--width-mult", "0.25", "--classifier-width", "32", "--num-classes", "10"]


def test_sizes_give_one_step_and_one_loader_line_per_size_and_a_json_row_each(tmp_path, capsys):
    report = tmp_path / "bench.json"
    argv = [*SMALL, *NARROW, "--sizes", "64", "96", "--skip", "ddp", "--json", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [line.split(" at ")[1].split(" ")[0] for line in out.splitlines() if " at " in line] == [
        "64",
        "64",
        "96",
        "96",
    ]
    results = json.loads(report.read_text())
    assert [row["image_size"] for row in results["sizes"]] == [64, 96]
    assert all(row["step_images_per_s"] > 0 for row in results["sizes"])
    assert all(row["loader"]["images_per_s"] > 0 for row in results["sizes"])
    assert results["step_images_per_s"] == results["sizes"][0]["step_images_per_s"]


def test_a_size_below_the_models_minimum_is_one_line(capsys):
    assert main([*SMALL, "--sizes", "64", "32", "--skip", "ddp", "loader"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--sizes=32 is too small for alexnet" in error
