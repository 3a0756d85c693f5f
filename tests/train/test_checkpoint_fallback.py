"""Checkpoints that fall back: a last.pt that fails its check is moved aside (never deleted) and
the run resumes from the newest good one; none good is one line (in-process, one rank)."""

from __future__ import annotations

import torch
from train_helpers import tiny_args

from pipeline.checkpoint import check_integrity, checksum_path, load_checkpoint
from pipeline.train.cli import main


def bad_files(directory):
    """The checkpoints moved aside (not their checksum files)."""
    return [p for p in directory.glob("last.pt.bad-*") if p.suffix != ".sha256"]


def test_a_truncated_last_pt_is_moved_aside_and_the_run_resumes_from_the_previous_checkpoint(
    tiny_data, tmp_path, capsys
):
    """max_steps=13 saves at the end of epoch 0 (step 10) and at step 13; keep_last=2 keeps the
    step-10 file in checkpoints/previous/. last.pt cut to half its size: the rerun warns once,
    naming both files, resumes at step 10 and finishes; the bad file is still there."""
    run_dir = tmp_path / "run"
    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=13")) == 0
    last = run_dir / "checkpoints/last.pt"
    previous = run_dir / "checkpoints/previous/step_00000010.pt"
    assert check_integrity(last) is None and check_integrity(previous) is None
    assert load_checkpoint(previous)["step"] == 10
    size = last.stat().st_size
    with open(last, "r+b") as handle:
        handle.truncate(size // 2)
    capsys.readouterr()

    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=16")) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "failed its check" in line]
    assert len(warnings) == 1, err
    assert str(last) in warnings[0] and str(previous) in warnings[0]
    moved = bad_files(run_dir / "checkpoints")
    assert len(moved) == 1 and moved[0].stat().st_size == size // 2 and moved[0].name in warnings[0]
    assert "resumed from" in err and "epoch 1, step 10, batch 0" in err
    assert load_checkpoint(last)["step"] == 16


def test_a_bit_flip_fails_the_checksum_and_no_good_checkpoint_is_one_line(
    tiny_data, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=2", "train.keep_last=1")) == 0
    last = run_dir / "checkpoints/last.pt"
    assert not (run_dir / "checkpoints/previous").exists() or not list(
        (run_dir / "checkpoints/previous").iterdir()
    )
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # torch.load may still read this: only the checksum sees it
    last.write_bytes(bytes(data))
    assert "sha256" in check_integrity(last)
    capsys.readouterr()
    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=3")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no good checkpoint" in errors[0] and "Traceback" not in err
    assert not last.exists() and len(bad_files(last.parent)) == 1


def test_a_checkpoint_without_a_checksum_file_is_checked_by_loading_it(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"step": 1}, path)  # as written before checksums existed
    assert not checksum_path(path).exists() and check_integrity(path) is None
    path.write_bytes(path.read_bytes()[:10])
    assert "cannot read" in check_integrity(path)


def test_keep_last_bounds_the_previous_checkpoints(tiny_data, tmp_path):
    """Global batch 64: 2 steps per epoch, saves at steps 2, 4 and 6; keep_last=3 keeps last.pt
    and the two before it."""
    run_dir = tmp_path / "run"
    recipe = ("data.global_batch_size=64", "train.epochs=3", "train.keep_last=3")
    assert main(tiny_args(tiny_data, run_dir, *recipe)) == 0
    kept = sorted(p.name for p in (run_dir / "checkpoints/previous").glob("*.pt"))
    assert kept == ["step_00000002.pt", "step_00000004.pt"]
    assert all(check_integrity(run_dir / "checkpoints/previous" / name) is None for name in kept)
