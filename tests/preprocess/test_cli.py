"""The CLI through preprocess.cli.main: help, Slurm slice defaults, grid, exit codes."""

from __future__ import annotations

import pytest
from imagefixtures import make_class_folders
from PIL import Image

from core.errors import UserError
from preprocess.cli import COMMANDS, main
from preprocess.shards import write_shards
from preprocess.slices import in_slice, resolve_slice


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_slice_defaults_come_from_the_slurm_array_variables(monkeypatch):
    for name in SLURM_ARRAY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert resolve_slice(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")  # --array=1-4
    assert resolve_slice(None, None) == (3, 4)
    assert resolve_slice(0, 2) == (0, 2)  # flags win
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    with pytest.raises(UserError, match="outside 0..3"):
        resolve_slice(None, None)


SLURM_ARRAY_VARIABLES = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
)


def test_an_array_with_a_step_gives_consecutive_indices_and_an_id_list_is_refused(monkeypatch):
    for name in SLURM_ARRAY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # --array=1-5:2 → ids 1, 3, 5, three tasks
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")
    indices = []
    for slurm_id in (1, 3, 5):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(slurm_id))
        indices.append(resolve_slice(None, None))
    assert indices == [(0, 3), (1, 3), (2, 3)]
    # --array=0,4,7: Slurm reports min 0, max 7, step 1, count 3: refused on every task
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "1")
    for slurm_id in (0, 4, 7):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(slurm_id))
        with pytest.raises(UserError, match="id list"):
            resolve_slice(None, None)


def test_slices_are_disjoint_and_cover_everything():
    owners = [[task for task in range(3) if in_slice(index, task, 3)] for index in range(10)]
    assert all(len(owner) == 1 for owner in owners)


def test_grid_writes_a_labelled_png_from_shards_and_from_folders(tmp_path, capsys):
    src = tmp_path / "folders"
    make_class_folders(src, per_class=3, size=(64, 48))
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01484850 great white shark\n"
    )
    write_shards(src, tmp_path / "shards", "train", shard_size=4, workers=1)
    for directory in (tmp_path / "shards", src):
        output = tmp_path / f"grid-{directory.name}.png"
        assert (
            main(["grid", str(directory), "-o", str(output), "--count", "6", "--columns", "3"]) == 0
        )
        with Image.open(output) as image:
            assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200


def test_render_grid_rejects_mismatched_captions(tmp_path):
    import numpy as np

    from core.grid import render_grid

    with pytest.raises(ValueError, match="2 images but 1 captions"):
        render_grid([np.zeros((8, 8, 3), np.uint8)] * 2, ["one"], tmp_path / "x.png")


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    make_class_folders(tmp_path / "src", per_class=1)
    assert (
        main(
            [
                "shard",
                str(tmp_path / "src"),
                str(tmp_path / "out"),
                "--split",
                "val",
                "--shard-size",
                "0",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip() == "error: --shard-size must be >= 1, got 0"
    assert main(["resize", str(tmp_path / "src"), str(tmp_path / "o"), "--quality", "101"]) == 2
    assert "--quality must be in 1..100" in capsys.readouterr().err


def test_grid_reads_samples_through_the_dali_index_or_by_scanning_the_tar_alike(tmp_path):
    from core.shard_format import dali_index_name
    from preprocess.grid import read_shard_samples

    src = tmp_path / "folders"
    make_class_folders(src, per_class=3)
    write_shards(src, tmp_path / "shards", "val", shard_size=9, workers=1)
    tar_path = tmp_path / "shards" / "imagenet-val-000000.tar"
    with_index = read_shard_samples(tar_path, {0, 4, 8})
    (tmp_path / "shards" / dali_index_name(tar_path.name)).unlink()
    assert read_shard_samples(tar_path, {0, 4, 8}) == with_index
    assert sorted(with_index) == [0, 4, 8] and set(with_index[4]) == {"jpg", "cls", "json"}
