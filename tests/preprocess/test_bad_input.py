"""Corrupted metadata and undecodable text give one clear line (or a reported problem), never a
traceback."""

from __future__ import annotations

from pathlib import Path

from imagefixtures import generated_jpeg
from stderr_lines import problem_lines

from core.shard_format import dali_index_name, shard_name
from preprocess.cli import main


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(problem_lines(error)) == 1, error
    return error


def _shards(class_folders, tmp_path: Path, *extra: str) -> Path:
    src, _ = class_folders
    out = tmp_path / "shards"
    assert main(["shard", str(src), str(out), "--split", "val", "--workers", "1", *extra]) == 0
    return out


def test_a_corrupted_dali_index_line_is_reported_by_verify_and_refused_by_grid(
    class_folders, tmp_path, capsys
):
    out = _shards(class_folders, tmp_path)
    index = out / dali_index_name(shard_name("val", 0))
    lines = index.read_text().splitlines()
    lines[1] = "jpg 512 1000"  # three fields: a torn write
    index.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["verify", str(out), "--workers", "1"]) == 1
    report = capsys.readouterr().out
    assert f"{index}:2: corrupted line" in report
    assert main(["grid", str(out), "-o", str(tmp_path / "grid.png"), "--count", "15"]) == 2
    assert "is corrupted" in _one_line_error(capsys)


def test_merge_names_an_unreadable_partial_manifest(class_folders, tmp_path, capsys):
    src, _ = class_folders
    out = tmp_path / "shards"
    for task in range(2):
        argv = ["shard", str(src), str(out), "--split", "val", "--shard-size", "4"]
        assert main([*argv, "--task-index", str(task), "--num-tasks", "2"]) == 0
    (out / "manifest.task-0001-of-0002.json").write_text('{"shards": [')
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    assert "manifest.task-0001-of-0002.json: unreadable partial manifest" in _one_line_error(capsys)


def test_label_and_class_list_files_that_are_not_utf8_are_one_line(tmp_path, capsys):
    val = tmp_path / "val"
    val.mkdir()
    (val / "ILSVRC2012_val_00000001.JPEG").write_bytes(generated_jpeg(1))
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_bytes(
        b"ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 \xff\xfe 1 2\n"
    )
    assert main(["sort-val", str(val), "--labels", str(labels)]) == 2
    assert "not utf-8" in _one_line_error(capsys).lower()
    classes = tmp_path / "synsets.txt"
    classes.write_bytes(b"n01440764 \xe9t\xe9\n")
    src = tmp_path / "folders"
    (src / "n01440764").mkdir(parents=True)
    (src / "n01440764" / "a.JPEG").write_bytes(generated_jpeg(2))
    argv = [
        "shard",
        str(src),
        str(tmp_path / "out"),
        "--split",
        "val",
        "--classes-from",
        str(classes),
    ]
    assert main(argv) == 2
    assert "not UTF-8" in _one_line_error(capsys)


def test_prepare_onto_a_file_is_one_line(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "train" / "n01440764").mkdir(parents=True)
    (raw / "train" / "n01440764" / "a.JPEG").write_bytes(generated_jpeg(1))
    (tmp_path / "file").write_text("x")
    assert main(["prepare", str(raw), str(tmp_path / "file"), "--splits", "train"]) == 2
    assert "is a file" in _one_line_error(capsys)


def test_a_broken_manifest_is_a_user_error_and_exits_2_with_one_line(
    class_folders, tmp_path, capsys
):
    from core.errors import EXIT_USAGE, UserError
    from core.shard_format import ManifestError

    assert issubclass(ManifestError, UserError)
    out = _shards(class_folders, tmp_path)
    capsys.readouterr()
    (out / "manifest.json").write_text('{"split": ')
    grid = ["grid", str(out), "-o", str(tmp_path / "grid.png")]
    assert main(grid) == EXIT_USAGE
    assert "manifest.json: not valid JSON" in _one_line_error(capsys)
