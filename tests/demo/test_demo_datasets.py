"""The demo on a user's own download: `--dataset cifar10 --source cifar-10-python.tar.gz` runs
end to end (prepare reads the archive as shipped, 2-rank DDP on CPU) and writes every artefact.

    .venv/bin/pytest tests/demo/test_demo_datasets.py      # ~1 minute on 2 idle cores

The archive is generated in the official format (tools/official_formats.py, the same fixtures
tests/preprocess uses, whose torchvision check proves the format): class k holds 32 px crops
of photo k. Two epochs on 300 such images say nothing about accuracy, so the test sets
--min-top1 0 and checks that every stage ran and every artefact is there.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

from core.shard_format import read_manifest
from tools.demo import main
from tools.demo_report import EXPECTED_ARTEFACTS, find_artefacts

# the official-format fixtures live beside the preprocess tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "preprocess"))
from smallfixtures import build_cifar


@pytest.mark.slow
def test_the_demo_runs_end_to_end_on_a_cifar10_archive_as_downloaded(tmp_path):
    cifar = build_cifar(tmp_path / "downloads", "cifar10", train_per_class=30, test_per_class=10)
    workdir = tmp_path / "demo"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(
            ["--dataset", "cifar10", "--source", str(cifar.path), "--workdir", str(workdir)]
            + ["--epochs", "2", "--min-top1", "0", "--quiet"]
        )
    text = output.getvalue()
    assert code == 0, text
    match = re.search(r"val top-1 (?P<top1>[0-9.]+)%", text)
    assert match and "chance is 10%" in text and "demo passed" in text, text
    run_dir = workdir / "run-cifar10-wds"
    artefacts = find_artefacts(run_dir)
    assert [name for name in EXPECTED_ARTEFACTS if name not in artefacts] == []
    manifest = read_manifest(workdir / "prepared-cifar10" / "train")
    assert manifest.dataset == "cifar10" and manifest.short_side == 32
    assert manifest.num_samples == 300 and manifest.class_names["n00000003"] == "cat"
    assert "--dataset cifar10" in (workdir / "logs" / "prepare.log").read_text()
    assert not (workdir / "raw").exists()  # the download is read in place, nothing is built


def test_a_dataset_demo_without_its_source_is_one_line(tmp_path, capsys):
    assert main(["--dataset", "cifar10", "--workdir", str(tmp_path), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cifar-10-python.tar.gz" in error
    assert list(tmp_path.iterdir()) == []
