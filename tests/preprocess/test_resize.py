"""`resize`: layout, repairs, bad-file reporting, resume after kill -9, slices."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from imagefixtures import generated_jpeg, make_class_folders, tree_digest
from PIL import Image
from rawfixtures import make_oddball
from stderr_lines import problem_lines

from preprocess.cli import main
from preprocess.resize import resize_folder
from preprocess.resize_records import ERRORS_NAME, FOLDER_MANIFEST_NAME
from preprocess.resize_worker import TEMP_SUFFIX, ResizeOptions

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_resize_mirrors_the_layout_repairs_oddballs_and_lists_bad_files(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_class_folders(src, per_class=2)
    odd = src / "n01440764"
    for kind in ("cmyk", "png-as-jpeg", "grayscale", "truncated", "empty"):
        make_oddball(kind, odd / f"odd_{kind}.JPEG")
    make_oddball("rgba", odd / "odd_rgba.png")
    before = tree_digest(src)

    status = main(["resize", str(src), str(dst), "--short-side", "64", "--workers", "2"])

    assert status == 1  # two undecodable inputs
    assert tree_digest(src) == before  # sources are never modified or deleted
    outputs = sorted(str(path.relative_to(dst)) for path in dst.rglob("*.JPEG"))
    assert len(outputs) == 6 + 4  # 3 classes x 2 plus the 4 repairable oddballs
    assert "n01440764/odd_rgba.JPEG" in outputs  # .png input → .JPEG output
    for path in dst.rglob("*.JPEG"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) == 64
    errors = (dst / ERRORS_NAME).read_text().splitlines()
    assert [line.split("\t")[0] for line in errors] == [
        "n01440764/odd_empty.JPEG",
        "n01440764/odd_truncated.JPEG",
    ]
    assert "empty file" in errors[0] and "truncated" in errors[1].lower()
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert (
        "12 images" in summary
        and "written 10" in summary
        and "repaired 4" in summary
        and "failed 2" in summary
    )
    manifest = json.loads((dst / FOLDER_MANIFEST_NAME).read_text())
    assert manifest["class_counts"] == {"n01440764": 8, "n01443537": 2, "n01484850": 2}


def test_a_rerun_skips_finished_outputs_and_only_retries_failures(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_class_folders(src, per_class=3)
    (src / "n01440764" / "broken.JPEG").write_bytes(b"")
    first = resize_folder(src, dst, ResizeOptions(64), workers=1)
    mtimes = {path: path.stat().st_mtime_ns for path in dst.rglob("*.JPEG")}
    second = resize_folder(src, dst, ResizeOptions(64), workers=1)
    assert (first.written, first.failed) == (9, 1)
    assert (second.written, second.skipped, second.failed) == (0, 9, 1)
    assert {path: path.stat().st_mtime_ns for path in dst.rglob("*.JPEG")} == mtimes
    (src / "n01440764" / "broken.JPEG").write_bytes(generated_jpeg(99))  # the user fixes the file
    third = resize_folder(src, dst, ResizeOptions(64), workers=1)
    assert (third.written, third.failed) == (1, 0)
    assert not (dst / ERRORS_NAME).exists()  # the stale error list is gone


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_class_folders(src, per_class=1)
    assert main(["resize", str(src), str(dst), "--short-side", "32", "--workers", "1"]) == 0
    assert main(["resize", str(src), str(dst), "--short-side", "48", "--workers", "1"]) == 2
    error = capsys.readouterr().err
    assert "holds images made with short_side=32 but this run asks for short_side=48" in error


def test_flat_folders_are_resized_too(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    for index in range(3):
        (src / f"ILSVRC2012_val_{index:08d}.JPEG").write_bytes(generated_jpeg(index, (80, 60)))
    summary = resize_folder(src, tmp_path / "out", ResizeOptions(32), workers=1)
    assert summary.written == 3
    assert sorted(path.name for path in (tmp_path / "out").glob("*.JPEG")) == [
        f"ILSVRC2012_val_{index:08d}.JPEG" for index in range(3)
    ]


def test_slices_are_disjoint_and_together_equal_a_single_run(tmp_path):
    src = tmp_path / "src"
    make_class_folders(src, per_class=4)
    resize_folder(src, tmp_path / "single", ResizeOptions(40), workers=1)
    counts = [
        resize_folder(
            src, tmp_path / "sliced", ResizeOptions(40), workers=1, task_index=task, num_tasks=3
        ).written
        for task in range(3)
    ]
    assert counts == [4, 4, 4]

    def outputs(root: Path) -> dict[str, str]:  # completion records name their task: they differ
        return {name: digest for name, digest in tree_digest(root).items() if ".task-" not in name}

    assert outputs(tmp_path / "sliced") == outputs(tmp_path / "single")


def test_missing_source_is_one_clear_line_and_exit_2(tmp_path, capsys):
    assert main(["resize", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "nope is not a directory" in error


def _write_corpus(root: Path, count: int) -> None:
    for index in range(count):
        folder = root / f"n{index % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{index:04d}.JPEG").write_bytes(
            generated_jpeg(index, (320, 240), quality=95)
        )


@pytest.mark.slow
def test_resume_after_kill_9_gives_output_identical_to_an_uninterrupted_run(tmp_path):
    src, killed, reference = tmp_path / "src", tmp_path / "killed", tmp_path / "reference"
    total = 300
    _write_corpus(src, total)
    env = {**os.environ, "PREPROCESS_PROGRESS": "0", "PYTHONPATH": str(PROJECT_ROOT)}
    command = [
        sys.executable,
        "-m",
        "preprocess",
        "resize",
        str(src),
        str(killed),
        "--short-side",
        "96",
        "--workers",
        "2",
    ]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            len(list(killed.rglob("*.JPEG"))) < 20
            and process.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        os.killpg(
            process.pid, signal.SIGKILL
        )  # the whole process group: main and workers, like a node failure
    finally:
        process.wait()
    done_at_kill = len(list(killed.rglob("*.JPEG")))
    assert 20 <= done_at_kill < total, "the run must be killed part-way"
    stale = killed / "n00000000" / f".img_9999.JPEG.12345{TEMP_SUFFIX}"
    stale.write_bytes(b"half a file")  # what a kill during a write leaves behind

    rerun = subprocess.run(
        command, check=False, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {done_at_kill}" in rerun.stdout  # finished outputs were not redone
    resize_folder(src, reference, ResizeOptions(96), workers=1)

    assert tree_digest(killed) == tree_digest(
        reference
    )  # same files, same bytes, no temp files left
    assert not list(killed.rglob(f"*{TEMP_SUFFIX}"))
    for path in list(killed.rglob("*.JPEG"))[:5]:
        Image.open(io.BytesIO(path.read_bytes())).load()


def test_a_slurm_task_cleans_only_its_own_leftover_temp_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_class_folders(src, per_class=2)  # 6 images: task 0 of 2 owns items 0, 2, 4
    folder = dst / "n01440764"
    folder.mkdir(parents=True)
    mine = folder / f".n01440764_0.JPEG.111{TEMP_SUFFIX}"  # item 0: this task's, from a killed run
    theirs = folder / f".n01440764_1.JPEG.222{TEMP_SUFFIX}"  # item 1: task 1 may be writing it now
    mine.write_bytes(b"partial")
    theirs.write_bytes(b"partial")
    resize_folder(src, dst, ResizeOptions(32), workers=1, task_index=0, num_tasks=2)
    assert not mine.exists() and theirs.exists()
    resize_folder(src, dst, ResizeOptions(32), workers=1)  # a single task owns everything
    assert not theirs.exists()


def test_a_symlinked_class_folder_is_resized_and_sharded_like_a_real_one_and_a_loop_ends(
    tmp_path, capsys
):
    elsewhere = tmp_path / "elsewhere"
    make_class_folders(elsewhere, classes=("n01484850",), per_class=2)
    src = tmp_path / "src"
    make_class_folders(src, classes=("n01440764", "n01443537"), per_class=2)
    (src / "n01484850").symlink_to(elsewhere / "n01484850", target_is_directory=True)
    (src / "n01440764" / "loop").symlink_to(src, target_is_directory=True)  # a cycle
    out = tmp_path / "out"
    assert main(["resize", str(src), str(out), "--short-side", "32", "--workers", "1"]) == 0
    assert sorted(path.parent.name for path in out.glob("*/*.JPEG")) == [
        "n01440764",
        "n01440764",
        "n01443537",
        "n01443537",
        "n01484850",
        "n01484850",
    ]
    assert json.loads((out / "resize_manifest.json").read_text())["num_images"] == 6
    shards = tmp_path / "shards"
    assert main(["shard", str(src), str(shards), "--split", "train", "--workers", "1"]) == 0
    assert json.loads((shards / "manifest.json").read_text())["num_samples"] == 6


def test_resize_and_prepare_agree_on_what_is_an_image(tmp_path):
    raw = tmp_path / "raw"
    make_class_folders(raw / "train", classes=("n01440764",), per_class=1)
    Image.new("L", (50, 40), 128).save(raw / "train" / "n01440764" / "gray.pgm")
    (raw / "train" / "n01440764" / "README.txt").write_text("not an image")
    for command in (
        ["resize", str(raw / "train"), str(tmp_path / "resized")],
        ["prepare", str(raw), str(tmp_path / "prepared"), "--splits", "train"],
    ):
        assert main([*command, "--short-side", "32", "--workers", "1"]) == 0
    for folder in (tmp_path / "resized", tmp_path / "prepared" / "folders" / "train"):
        assert sorted(path.name for path in folder.glob("n01440764/*")) == [
            "gray.JPEG",
            "n01440764_0.JPEG",
        ]


def test_resize_into_its_own_source_or_onto_a_file_is_one_clear_line(tmp_path, capsys):
    src = tmp_path / "src"
    make_class_folders(src, per_class=1)
    before = tree_digest(src)
    assert main(["resize", str(src), str(src / ".." / "src")]) == 2
    assert "same folder as SRC" in capsys.readouterr().err
    assert tree_digest(src) == before  # no resize_manifest.json written into SRC
    (tmp_path / "file").write_text("x")
    assert main(["resize", str(src), str(tmp_path / "file")]) == 2
    assert len(problem_lines(capsys.readouterr().err)) == 1
