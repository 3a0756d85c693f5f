"""`prepare`: the ILSVRC tars, the Kaggle layout and plain folders give the same shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from imagefixtures import tree_digest
from rawfixtures import build_folder_layout, build_ilsvrc_tars, build_kaggle_layout
from stderr_lines import problem_lines

from core.shard_format import read_manifest
from preprocess.cli import main


def published(directory: Path) -> dict[str, str]:
    return {
        name: digest
        for name, digest in tree_digest(directory).items()
        if not Path(name).name.startswith(".")
    }


@pytest.mark.slow
def test_tars_kaggle_and_folders_give_identical_shards(tmp_path, capsys):
    builders = {
        "tars": build_ilsvrc_tars,
        "kaggle": build_kaggle_layout,
        "folders": build_folder_layout,
    }
    outputs = {}
    for name, build in builders.items():
        layout = build(tmp_path / f"raw-{name}")
        dst = tmp_path / f"out-{name}"
        argv = [
            "prepare",
            str(layout.root),
            str(dst),
            "--short-side",
            "32",
            "--shard-size",
            "5",
            "--workers",
            "1",
        ]
        assert main(argv) == 0, capsys.readouterr()
        outputs[name] = dst
    train = read_manifest(outputs["tars"] / "train")
    val = read_manifest(outputs["tars"] / "val")
    assert train.num_samples == 12 and val.num_samples == 8  # 4 classes x 3 train, x 2 val
    assert train.classes == val.classes == layout.classes and train.short_side == 32
    for split in ("train", "val"):
        tars = {name: published(outputs[name] / split) for name in builders}
        tar_only = {
            name: {k: v for k, v in files.items() if k.endswith((".tar", ".idx"))}
            for name, files in tars.items()
        }
        assert tar_only["tars"] == tar_only["kaggle"] == tar_only["folders"], split
    assert (outputs["kaggle"] / "LOC_synset_mapping.txt").is_file()
    assert main(["verify", str(outputs["kaggle"]), "--decode", "--workers", "1"]) == 0
    report = capsys.readouterr().out
    for part in (
        "kaggle/train (shards)",
        "kaggle/val (shards)",
        "folders/train (folders)",
        "folders/val (folders)",
    ):
        assert part in report
    # resized class folders are kept for the folder backend, with every class in both splits
    assert (
        sorted(p.name for p in (outputs["tars"] / "folders" / "val").iterdir() if p.is_dir())
        == layout.classes
    )


@pytest.mark.slow
def test_prepare_repairs_oddballs_reports_broken_files_and_resumes(tmp_path, capsys):
    layout = build_kaggle_layout(tmp_path / "raw", oddballs=True)
    dst = tmp_path / "out"
    argv = [
        "prepare",
        str(layout.root),
        str(dst),
        "--short-side",
        "32",
        "--shard-size",
        "4",
        "--workers",
        "2",
    ]
    assert main(argv) == 1  # the truncated and the empty file
    first = capsys.readouterr().out
    assert "failed 2" in first and "repaired 4" in first
    errors = (dst / "folders" / "train" / "resize_errors.txt").read_text()
    assert errors.count("\n") == 2
    repaired = [
        key
        for key, kind in layout.oddballs.items()
        if kind in ("cmyk", "png-as-jpeg", "grayscale", "rgba")
    ]
    manifest = read_manifest(dst / "train")
    assert manifest.num_samples == len(layout.train) - 2
    keys = set()
    import tarfile

    for shard in manifest.shards:
        with tarfile.open(dst / "train" / shard.name) as tar:
            keys |= {member.name.split(".")[0] for member in tar}
    assert set(repaired) <= keys

    assert main(argv) == 1  # the same two still fail; everything else is skipped
    second = capsys.readouterr().out
    assert "written 0" in second and f"skipped {len(layout.train) - 2}" in second
    record = json.loads((dst / "train" / "manifest.json").read_text())
    assert record["num_samples"] == len(layout.train) - 2


@pytest.mark.slow
def test_a_two_stage_slurm_array_prepare_and_merge_equal_a_single_run(
    tmp_path, monkeypatch, capsys
):
    layout = build_ilsvrc_tars(tmp_path / "raw")
    common = ["--short-side", "32", "--shard-size", "3", "--workers", "1"]
    assert main(["prepare", str(layout.root), str(tmp_path / "single"), *common]) == 0
    sliced = tmp_path / "sliced"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert (
        main(["prepare", str(layout.root), str(sliced), *common]) == 2
    )  # one job cannot do both stages
    assert "--stage resize, then (afterany) with --stage shard" in capsys.readouterr().err
    for stage in ("resize", "shard"):
        for task in range(2):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
            assert main(["prepare", str(layout.root), str(sliced), *common, "--stage", stage]) == 0
    assert main(["merge", str(sliced)]) == 0
    for split in ("train", "val"):
        single = published(tmp_path / "single" / split)
        merged = {
            name: digest
            for name, digest in published(sliced / split).items()
            if ".task-" not in name
        }
        assert merged == single, split


def _prepare(raw: Path, dst: Path, *extra: str) -> int:
    return main(["prepare", str(raw), str(dst), "--shard-size", "5", "--workers", "1", *extra])


def test_the_shard_stage_refuses_until_every_resize_task_has_left_its_completion_record(
    tmp_path, capsys
):
    layout = build_folder_layout(tmp_path / "raw")
    dst = tmp_path / "out"
    sliced = ("--short-side", "32", "--num-tasks", "2")
    assert _prepare(layout.root, dst, *sliced, "--stage", "resize", "--task-index", "0") == 0
    assert (dst / "folders" / "train" / "resize.task-0000-of-0002.json").is_file()
    capsys.readouterr()
    # task 1 never ran: sharding half the images would pass for a complete split
    assert _prepare(layout.root, dst, "--stage", "shard") == 2
    error = capsys.readouterr().err
    assert "resize tasks [1] of 2 have not finished" in error and len(problem_lines(error)) == 1
    assert not (dst / "train" / "manifest.json").exists()
    assert _prepare(layout.root, dst, *sliced, "--stage", "resize", "--task-index", "1") == 0
    assert _prepare(layout.root, dst, "--stage", "shard") == 0
    assert read_manifest(dst / "train").num_samples == 12
    folder_manifest = json.loads((dst / "folders" / "train" / "resize_manifest.json").read_text())
    assert folder_manifest["num_images"] == 12 and folder_manifest["short_side"] == 32
    assert main(["verify", str(dst)]) == 0


def test_prepare_refuses_to_resume_with_other_resize_settings_and_shards_with_the_recorded_ones(
    tmp_path, capsys
):
    layout = build_folder_layout(tmp_path / "raw")
    dst = tmp_path / "out"
    assert _prepare(layout.root, dst, "--short-side", "40", "--stage", "resize") == 0
    capsys.readouterr()
    assert _prepare(layout.root, dst, "--short-side", "32") == 2
    error = capsys.readouterr().err
    assert "short_side=40" in error and "short_side=32" in error
    assert _prepare(layout.root, dst, "--short-side", "32", "--stage", "shard") == 2
    # a shard stage without --short-side takes the size the images were made with
    assert _prepare(layout.root, dst, "--stage", "shard") == 0
    assert read_manifest(dst / "train").short_side == 40
    assert read_manifest(dst / "val").short_side == 40
    assert main(["verify", str(dst), "--decode", "--workers", "1"]) == 0


def test_the_shard_stage_after_bad_images_shards_the_rest_and_names_the_error_lists(
    tmp_path, capsys
):
    layout = build_kaggle_layout(tmp_path / "raw", oddballs=True)
    dst = tmp_path / "out"
    sliced = ("--short-side", "32", "--num-tasks", "2", "--stage")
    statuses = [
        _prepare(layout.root, dst, *sliced, "resize", "--task-index", str(task)) for task in (0, 1)
    ]
    assert 1 in statuses  # the tasks holding the truncated and the empty file report them
    capsys.readouterr()
    assert _prepare(layout.root, dst, *sliced, "shard", "--task-index", "0") == 0
    assert _prepare(layout.root, dst, *sliced, "shard", "--task-index", "1") == 0
    out = capsys.readouterr().out
    listed = sorted((dst / "folders" / "train").glob("resize_errors.task-*.txt"))
    assert listed and all(f"listed in {path}" in out for path in listed)
    assert sum(len(path.read_text().splitlines()) for path in listed) == 2
    assert main(["merge", str(dst)]) == 0
    assert read_manifest(dst / "train").num_samples == len(layout.train) - 2


def test_prepare_checks_every_split_before_resizing_any(tmp_path, capsys):
    layout = build_folder_layout(tmp_path / "raw", val_sorted=False)
    (layout.root / "LOC_val_solution.csv").unlink()  # val cannot be labelled
    dst = tmp_path / "out"
    assert _prepare(layout.root, dst, "--short-side", "32") == 2
    assert "no val labels" in capsys.readouterr().err
    assert not list((dst / "folders").rglob("*.JPEG")) if (dst / "folders").exists() else True
    assert _prepare(layout.root, dst, "--short-side", "32", "--splits", "train") == 0
    assert read_manifest(dst / "train").num_samples == 12 and not (dst / "val").exists()


def test_an_array_with_more_tasks_than_images_or_shards_still_equals_a_single_run(tmp_path, capsys):
    layout = build_folder_layout(tmp_path / "raw", per_class=2, val_per_class=1)  # 8 + 4 images
    common = ("--short-side", "32")
    assert _prepare(layout.root, tmp_path / "single", *common) == 0
    sliced = tmp_path / "sliced"
    tasks = 10  # more than the 4 val images and the 2 train shards
    for stage in ("resize", "shard"):
        for task in range(tasks):
            argv = [*common, "--stage", stage, "--task-index", str(task), "--num-tasks", str(tasks)]
            assert _prepare(layout.root, sliced, *argv) == 0, capsys.readouterr()
    assert main(["merge", str(sliced)]) == 0
    for split in ("train", "val"):
        merged = {
            name: digest
            for name, digest in published(sliced / split).items()
            if ".task-" not in name
        }
        assert merged == published(tmp_path / "single" / split), split
    assert main(["verify", str(sliced)]) == 0
