"""pipeline.predict on a trained tiny run: --evaluate equals the trainer's exact eval (raw, EMA,
flip-TTA), the top-5 printed and written by class name, and an unreadable image named in one line
while the rest still runs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from train_helpers import tiny_args

from pipeline.predict import main
from pipeline.train.cli import main as train_main


def trainer_eval(tiny_data, run_dir, tmp_path, *extra) -> dict:
    """`pipeline.train --evaluate --resume best.pt` (the trainer's exact eval): its eval.json."""
    eval_dir = tmp_path / "trainer-eval"
    argv = tiny_args(tiny_data, eval_dir, "train.ema_decay=0.9", *extra)
    assert train_main([*argv, "--evaluate", "--resume", str(run_dir / "checkpoints/best.pt")]) == 0
    return json.loads((eval_dir / "eval.json").read_text())


@pytest.mark.parametrize("flip_tta", [False, True])
def test_evaluate_on_the_val_folders_equals_the_trainers_exact_eval(
    flip_tta, tiny_run, tiny_data, tmp_path, capsys
):
    tta = ["--flip-tta"] if flip_tta else []
    expected = trainer_eval(tiny_data, tiny_run, tmp_path, f"eval.flip_tta={flip_tta}")
    checkpoint = str(tiny_run / "checkpoints/best.pt")
    for weights, prefix in (("raw", "val/"), ("ema", "val/ema_")):
        output = tmp_path / f"{weights}.json"
        argv = ["--checkpoint", checkpoint, "--evaluate", str(tiny_data / "val"), "--quiet"]
        assert main([*argv, "--weights", weights, "--output", str(output), *tta]) == 0
        metrics = json.loads(output.read_text())["metrics"]
        assert metrics["val/num_samples"] == 17
        assert metrics["val/top1"] == expected[f"{prefix}top1"], weights
        assert metrics["val/top5"] == expected[f"{prefix}top5"], weights
    assert f"evaluate: val/top1={expected['val/ema_top1']:.2f}" in capsys.readouterr().out


def test_images_and_folders_get_their_top5_by_name_and_an_unreadable_one_is_one_line(
    tiny_run, tiny_data, tmp_path, capsys
):
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    goldfish = sorted((tiny_data / "val/n01443537").iterdir())
    shutil.copy(goldfish[0], photos / "nested/fish.jpg")
    (photos / "broken.jpg").write_bytes(b"this is not a JPEG")
    single = goldfish[1]
    output = tmp_path / "out.csv"
    argv = ["--checkpoint", str(tiny_run / "checkpoints/best.pt"), str(single), str(photos)]
    assert main([*argv, "--output", str(output), "--batch-size", "1"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "broken.jpg" in line]
    assert len(errors) == 1 and "cannot read this image" in errors[0]
    assert "1 of 3 images could not be read" in captured.err
    assert str(photos / "nested/fish.jpg") in captured.out
    assert "%  goldfish, Carassius auratus (n01443537)" in captured.out

    rows = list(csv.DictReader(output.open()))
    assert [row["path"] for row in rows] == [str(single), str(photos / "nested/fish.jpg")]
    for row in rows:
        probabilities = [float(row[f"top{rank}_prob"]) for rank in range(1, 5)]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)  # 4 classes: all of them
        names = {row[f"top{rank}_name"] for rank in range(1, 5)}
        assert names == {
            "tench, Tinca tinca",
            "goldfish, Carassius auratus",
            "great white shark",
            "tiger shark, Galeocerdo cuvieri",
        }


def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    checkpoint = str(tiny_run / "checkpoints/best.pt")
    not_a_checkpoint = tmp_path / "weights.pt"
    not_a_checkpoint.write_bytes(b"junk")
    for argv, expected in (
        ([checkpoint, str(tmp_path / "nothing-here")], "does not exist: pass image files"),
        ([str(not_a_checkpoint), str(tmp_path)], f"cannot read checkpoint {not_a_checkpoint}"),
        ([checkpoint, str(tmp_path), "--output", "x.txt"], "name a .csv or .json file"),
        ([checkpoint], "pass images or folders to classify, or --evaluate DIR"),
    ):
        assert main(["--checkpoint", *argv]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and expected in error[0], error
