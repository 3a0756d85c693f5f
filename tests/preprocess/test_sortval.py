"""sort-val: every label form gives the same folders; reruns, half-done runs, dry runs, links, bad
input.

.venv/bin/pytest tests/preprocess/test_sortval.py
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from rawfixtures import DEFAULT_WNIDS, build_flat_val, write_labels

from preprocess.cli import main


def sort_val(*argv: object) -> int:
    """`python -m preprocess sort-val ARGV...`, in process; returns the exit code."""
    return main(["sort-val", *map(str, argv)])


def tree(directory: Path) -> dict[str, bytes]:
    """relative path → bytes of every file under `directory`."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def expected_tree(files: dict[str, str], originals: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{wnid}/{name}": originals[name] for name, wnid in files.items()}


@pytest.fixture
def flat_val(tmp_path):
    """(val dir, file name → WNID, original bytes by name): 4 classes x 2 flat files."""
    val_dir = tmp_path / "val"
    files = build_flat_val(val_dir, DEFAULT_WNIDS, per_class=2)
    return val_dir, files, tree(val_dir)


def stems(files: dict[str, str]) -> dict[str, str]:
    return {Path(name).stem: wnid for name, wnid in files.items()}


@pytest.mark.parametrize("form", ["kaggle", "caffe", "devkit"])
def test_each_label_format_sorts_the_files_into_the_same_class_folders(
    tmp_path, flat_val, form, capsys
):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", form, stems(files), DEFAULT_WNIDS)
    assert (
        sort_val(val_dir, "--labels", labels, "--expect-classes", 4, "--expect-per-class", 2) == 0
    )
    assert tree(val_dir) == expected_tree(files, originals)
    assert "sort-val: moved 8 files into 4 class folders" in capsys.readouterr().out


def test_devkit_given_as_its_two_files_sorts_the_same(tmp_path, flat_val):
    val_dir, files, originals = flat_val
    from rawfixtures import write_devkit_dir

    write_devkit_dir(tmp_path / "devkit", stems(files), DEFAULT_WNIDS)
    data = tmp_path / "devkit" / "data"
    argv = [
        "--labels",
        data / "meta.mat",
        "--labels",
        data / "ILSVRC2012_validation_ground_truth.txt",
    ]
    assert sort_val(val_dir, *argv) == 0
    assert tree(val_dir) == expected_tree(files, originals)


def test_a_rerun_is_a_no_op(tmp_path, flat_val, capsys):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    assert sort_val(val_dir, "--labels", labels) == 0
    inodes = {path: path.stat().st_ino for path in val_dir.rglob("*.JPEG")}
    capsys.readouterr()
    assert sort_val(val_dir, "--labels", labels) == 0
    out = capsys.readouterr().out
    assert "moved 0 files into 4 class folders" in out and "8 already sorted" in out
    assert {path: path.stat().st_ino for path in val_dir.rglob("*.JPEG")} == inodes
    assert tree(val_dir) == expected_tree(files, originals)


def test_a_half_done_run_completes(tmp_path, flat_val, capsys):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "caffe", stems(files), DEFAULT_WNIDS)
    # an interrupted run: three files already renamed into their class folders
    for name in sorted(files)[:3]:
        (val_dir / files[name]).mkdir(exist_ok=True)
        os.rename(val_dir / name, val_dir / files[name] / name)
    assert sort_val(val_dir, "--labels", labels) == 0
    out = capsys.readouterr().out
    assert "moved 5 files" in out and "3 already sorted" in out
    assert tree(val_dir) == expected_tree(files, originals)


def test_dry_run_prints_the_plan_and_moves_nothing(tmp_path, flat_val, capsys):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    assert sort_val(val_dir, "--labels", labels, "--dry-run") == 0
    out = capsys.readouterr().out.splitlines()
    plan = [line for line in out if line.startswith("move ")]
    assert sorted(plan) == sorted(
        f"move {val_dir / name} -> {val_dir / wnid / name}" for name, wnid in files.items()
    )
    assert out[-1].startswith("dry run: would move 8 files into 4 class folders")
    assert tree(val_dir) == originals
    assert not any(path.is_dir() for path in val_dir.iterdir())


def test_link_into_out_leaves_the_sources_and_a_rerun_is_a_no_op(tmp_path, flat_val, capsys):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "devkit", stems(files), DEFAULT_WNIDS)
    out_dir = tmp_path / "sorted"
    assert sort_val(val_dir, "--labels", labels, "--link", "--out", out_dir) == 0
    assert tree(val_dir) == originals  # sources untouched
    assert tree(out_dir) == expected_tree(files, originals)
    for name, wnid in files.items():
        assert os.path.samefile(val_dir / name, out_dir / wnid / name)
    capsys.readouterr()
    assert sort_val(val_dir, "--labels", labels, "--link", "--out", out_dir) == 0
    assert "linked 0 files" in capsys.readouterr().out


def test_link_in_place_keeps_the_flat_files_and_reruns_cleanly(tmp_path, flat_val, capsys):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    assert sort_val(val_dir, "--labels", labels, "--link") == 0
    assert sort_val(val_dir, "--labels", labels, "--link") == 0
    assert tree(val_dir) == {**originals, **expected_tree(files, originals)}
    # a later plain run sees the same inodes in place: nothing left to move
    assert sort_val(val_dir, "--labels", labels) == 0
    assert "moved 0 files" in capsys.readouterr().out.splitlines()[-1]


def test_a_file_not_in_the_labels_is_one_error_line_and_nothing_moves(tmp_path, flat_val, capsys):
    val_dir, files, _ = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    (val_dir / "ILSVRC2012_val_00099999.JPEG").write_bytes(b"stray")
    before = tree(val_dir)
    assert sort_val(val_dir, "--labels", labels) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "1 file not in the labels (first: ILSVRC2012_val_00099999.JPEG)" in err
    assert "Nothing was moved" in err
    assert tree(val_dir) == before and not any(path.is_dir() for path in val_dir.iterdir())


def test_labels_with_no_file_are_one_error_line_and_nothing_moves(tmp_path, flat_val, capsys):
    val_dir, files, _ = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    for name in sorted(files)[-4:]:
        (val_dir / name).unlink()
    before = tree(val_dir)
    assert sort_val(val_dir, "--labels", labels) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "4 labels with no file (first: ILSVRC2012_val_00000005, ILSVRC2012_val_00000006, "
        "ILSVRC2012_val_00000007, ...)" in err
    )
    assert tree(val_dir) == before


def test_a_file_already_in_the_wrong_class_folder_is_refused(tmp_path, flat_val, capsys):
    val_dir, files, _ = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    name = min(files)
    wrong = next(wnid for wnid in DEFAULT_WNIDS if wnid != files[name])
    (val_dir / wrong).mkdir()
    os.rename(val_dir / name, val_dir / wrong / name)
    before = tree(val_dir)
    assert sort_val(val_dir, "--labels", labels) == 2
    assert (
        f"1 file in the wrong class folder (first: {wrong}/{name} (labelled {files[name]}))"
        in capsys.readouterr().err
    )
    assert tree(val_dir) == before


def test_counts_other_than_1000_by_50_give_one_warning(tmp_path, flat_val, caplog):
    val_dir, files, _ = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    with caplog.at_level(logging.WARNING, logger="preprocess.sortval"):
        assert sort_val(val_dir, "--labels", labels, "--dry-run") == 0
    warnings = [
        record.getMessage() for record in caplog.records if record.levelno == logging.WARNING
    ]
    assert warnings == [
        (
            "labels cover 4 classes x 2 files each; ILSVRC2012 val is 1000 x 50: "
            "fine for a subset, otherwise check --labels"
        )
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="preprocess.sortval"):
        assert (
            sort_val(val_dir, "--labels", labels, "--expect-classes", 4, "--expect-per-class", 2)
            == 0
        )
    assert not [record for record in caplog.records if record.levelno == logging.WARNING]


def test_a_label_file_inside_val_dir_is_not_mistaken_for_an_image(tmp_path, flat_val):
    val_dir, files, originals = flat_val
    labels = write_labels(val_dir, "kaggle", stems(files), DEFAULT_WNIDS)
    assert sort_val(val_dir, "--labels", labels) == 0
    assert tree(val_dir) == {**expected_tree(files, originals), labels.name: labels.read_bytes()}


def test_caffe_labels_take_the_class_list_from_classes(tmp_path, flat_val):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "caffe", stems(files), DEFAULT_WNIDS)
    (tmp_path / "labels" / "LOC_synset_mapping.txt").rename(tmp_path / "classes.txt")
    assert sort_val(val_dir, "--labels", labels) == 2  # no class list found beside val.txt
    assert sort_val(val_dir, "--labels", labels, "--classes", tmp_path / "classes.txt") == 0
    assert tree(val_dir) == expected_tree(files, originals)


def test_a_half_done_link_run_completes(tmp_path, flat_val, capsys):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    out_dir = tmp_path / "sorted"
    assert sort_val(val_dir, "--labels", labels, "--link", "--out", out_dir) == 0
    for name in sorted(files)[:5]:  # as if the first run had stopped after 3 of 8 links
        (out_dir / files[name] / name).unlink()
    capsys.readouterr()
    assert sort_val(val_dir, "--labels", labels, "--link", "--out", out_dir) == 0
    out = capsys.readouterr().out
    assert "linked 5 files" in out and "3 already sorted" in out
    assert tree(out_dir) == expected_tree(files, originals)
    assert tree(val_dir) == originals


SHARED_MEMORY = Path("/dev/shm")


@pytest.mark.skipif(
    not SHARED_MEMORY.is_dir() or os.stat(SHARED_MEMORY).st_dev == os.stat("/tmp").st_dev,
    reason="needs /dev/shm on another filesystem than /tmp",
)
def test_out_on_another_filesystem_is_refused_before_anything_moves(tmp_path, flat_val, capsys):
    val_dir, files, originals = flat_val
    labels = write_labels(tmp_path / "labels", "kaggle", stems(files), DEFAULT_WNIDS)
    out_dir = SHARED_MEMORY / f"sortval-test-{os.getpid()}" / "sorted"
    assert sort_val(val_dir, "--labels", labels, "--link", "--out", out_dir) == 2
    assert "on another filesystem" in capsys.readouterr().err
    assert not out_dir.parent.exists()
    assert tree(val_dir) == originals
