"""tools/bench_loader.py through its main(argv): one line per backend and train size, and the
JSON it writes (figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tools.bench_loader import main

PHOTO = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "photo.jpg"


def test_bench_prints_one_line_per_backend_and_size_and_writes_them_as_json(tmp_path, capsys):
    argv = ["--images", "64", "--workers", "0", "--batch-size", "16", "--seconds", "0.2"]
    argv += ["--rounds", "1", "--sizes", "32", "48", "--backends", "baseline", "folder", "wds"]
    (tmp_path / "photos").mkdir()
    shutil.copy(PHOTO, tmp_path / "photos" / "photo.jpg")  # one small photo: a quick build
    argv += ["--photos", str(tmp_path / "photos"), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--json", str(tmp_path / "out.json")]
    assert main(argv) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if " px: " in line]
    assert [(words[0], words[1]) for words in lines] == [
        (backend, size) for backend in ("baseline", "folder", "wds") for size in ("32", "48")
    ]
    assert all("baseline" in " ".join(words[6:]) for words in lines[2:])  # ratios at that size
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert sorted(results) == sorted(
        f"{b}@{s}" for b in ("baseline", "folder", "wds") for s in (32, 48)
    )
    assert all(entry["images_per_s"] > 0 for entry in results.values())


def test_the_val_split_with_the_one_core_reference_and_the_worker_and_decoder_variants(
    tmp_path, capsys
):
    argv = ["--images", "64", "--workers", "2", "--batch-size", "16", "--seconds", "0.2"]
    argv += ["--rounds", "1", "--sizes", "32", "--split", "val"]
    argv += ["--backends", "baseline,decode,folder,folder-pillow,wds-processes"]
    (tmp_path / "photos").mkdir()
    shutil.copy(PHOTO, tmp_path / "photos" / "photo.jpg")
    argv += ["--photos", str(tmp_path / "photos"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "baseline: skipped (train only)" in out
    assert any(line.startswith("# ") and " val split, " in line for line in out.splitlines())
    lines = [line for line in out.splitlines() if " px: " in line]
    assert [line.split()[0] for line in lines] == [
        "decode",
        "folder",
        "folder-pillow",
        "wds-processes",
    ]
    assert "one core's decode" not in lines[0]
    assert all("x one core's decode" in line for line in lines[1:])
