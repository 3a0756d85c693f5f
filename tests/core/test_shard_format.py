"""The shard format's DALI index: our writer against DALI's own `wds2idx`, one reader for both,
and one version rule."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.shard_format import (
    DaliIndex,
    IndexMember,
    ManifestError,
    dali_index_name,
    format_dali_index,
    parse_dali_index,
    read_dali_index,
    read_manifest,
)
from tests.data.loaderfixtures import make_shards, write_class_folders


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shard-format")
    folders = write_class_folders(root / "folders" / "val", [3, 2, 3])
    assert folders
    return make_shards(root / "folders" / "val", root / "shards", "val", 3)


def wds2idx() -> list[str]:
    """DALI's own index tool, as its wheel installs it next to this interpreter."""
    script = Path(sys.executable).with_name("wds2idx")
    if not script.is_file():
        pytest.skip("nvidia-dali's wds2idx is not installed next to this Python")
    return [sys.executable, str(script)]


def test_our_index_is_what_dalis_wds2idx_writes_for_the_same_tar(shards, tmp_path):
    manifest = read_manifest(shards)
    for entry in manifest.shards:
        theirs = tmp_path / dali_index_name(entry.name)
        subprocess.run(
            [*wds2idx(), str(shards / entry.name), str(theirs)], check=True, capture_output=True
        )
        ours_text = (shards / dali_index_name(entry.name)).read_text()
        assert ours_text == theirs.read_text()
        index = parse_dali_index(theirs.read_text(), str(theirs))
        assert index == read_dali_index(shards / entry.name, entry.count)
        assert len(index.samples) == entry.count


def test_the_index_points_at_each_members_bytes_in_the_tar(shards):
    import tarfile

    tar_path = shards / read_manifest(shards).shards[0].name
    index = read_dali_index(tar_path)
    with tarfile.open(tar_path) as tar:
        members = {member.name: tar.extractfile(member).read() for member in tar}
    data = tar_path.read_bytes()
    for sample in index.samples:
        assert [member.extension for member in sample] == ["jpg", "cls", "json"]
        for member in sample:
            assert data[member.offset : member.offset + member.size] == members[member.name]
    assert index.sample_start(0) == 0


def test_format_and_parse_round_trip_in_both_versions():
    samples = [
        (IndexMember("jpg", 512, 10, "a.jpg"), IndexMember("cls", 1536, 1, "a.cls")),
        (IndexMember("jpg", 2560, 7, "b.jpg"),),
    ]
    text = format_dali_index(samples)
    assert text.splitlines()[0] == "v1.2 2"
    assert parse_dali_index(text) == DaliIndex(tuple(samples), "v1.2")
    older = format_dali_index(samples, "v1.1")
    assert older.splitlines()[1] == "jpg 512 10 cls 1536 1"
    parsed = parse_dali_index(older)
    assert parsed.version == "v1.1" and parsed.samples[0][0] == IndexMember("jpg", 512, 10, None)
    assert parsed.lines() == older.splitlines()[1:]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v2.0 1\njpg 512 10 a.jpg\n", "not a DALI index header"),
        ("", "not a DALI index header"),
        ("v1.2 2\njpg 512 10 a.jpg\n", "header says 2 samples but 1 lines follow"),
        ("v1.2 1\njpg 512 10\n", ":2: corrupted line"),
        ("v1.2 1\njpg x 10 a.jpg\n", ":2: corrupted line"),
    ],
)
def test_a_bad_index_is_one_line_that_says_to_reshard(text, expected):
    with pytest.raises(ManifestError) as err:
        parse_dali_index(text, "some.idx")
    message = str(err.value)
    assert expected in message and "\n" not in message and "preprocess shard" in message


def test_a_missing_or_miscounted_index_names_the_file(shards, tmp_path):
    copy = Path(shutil.copytree(shards, tmp_path / "copy"))
    entry = read_manifest(copy).shards[0]
    with pytest.raises(ManifestError, match="does not match the tar"):
        read_dali_index(copy / entry.name, entry.count + 1)
    (copy / dali_index_name(entry.name)).unlink()
    with pytest.raises(ManifestError, match="DALI index missing"):
        read_dali_index(copy / entry.name)
