"""`shard`: global shuffle, equal counts, deterministic tars, manifest, resume, slices + merge,
readers."""

from __future__ import annotations

import collections
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from imagefixtures import generated_jpeg, make_class_folders, tree_digest
from stderr_lines import problem_lines

from core.shard_format import dali_index_name, read_manifest, shard_name
from preprocess.cli import main
from preprocess.shard_plan import PLAN_NAME, build_plan
from preprocess.shards import write_shards

CLASSES = ("n01440764", "n01443537", "n01484850")


def read_tar(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def read_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def shard_files(directory: Path) -> dict[str, str]:
    """The published outputs (tars, indexes, manifest, info), not the hidden resume records."""
    return {
        name: digest for name, digest in tree_digest(directory).items() if not name.startswith(".")
    }


def test_same_input_and_seed_give_byte_identical_shards_whatever_the_worker_count(
    class_folders, tmp_path
):
    src, _ = class_folders
    assert (
        main(
            [
                "shard",
                str(src),
                str(tmp_path / "a"),
                "--split",
                "val",
                "--shard-size",
                "4",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "shard",
                str(src),
                str(tmp_path / "b"),
                "--split",
                "val",
                "--shard-size",
                "4",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    assert (
        main(
            [
                "shard",
                str(src),
                str(tmp_path / "c"),
                "--split",
                "val",
                "--shard-size",
                "4",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert shard_files(tmp_path / "c") != shard_files(tmp_path / "a")  # the seed matters


def test_shards_hold_equal_counts_except_the_last_and_every_sample_once_with_its_label(
    class_folders, tmp_path
):
    src, keys = class_folders  # 15 samples
    write_shards(src, tmp_path / "out", "train", shard_size=4, workers=1)
    manifest = read_manifest(tmp_path / "out")
    assert [shard.count for shard in manifest.shards] == [4, 4, 4, 3]
    assert manifest.classes == list(CLASSES) and manifest.class_counts == {
        wnid: 5 for wnid in CLASSES
    }
    seen = {}
    for shard in manifest.shards:
        samples = read_samples(tmp_path / "out" / shard.name)
        assert len(samples) == shard.count
        for key, members in samples.items():
            meta = json.loads(members["json"])
            assert int(members["cls"]) == CLASSES.index(meta["wnid"]) == CLASSES.index(keys[key])
            assert members["jpg"] == (src / keys[key] / f"{key}.JPEG").read_bytes()
            assert meta == {"wnid": keys[key], "source": f"{key}.JPEG", "width": 48, "height": 40}
            seen[key] = shard.name
    assert set(seen) == set(keys)


def test_the_shuffle_is_global_not_per_class(tmp_path):
    src = tmp_path / "src"
    make_class_folders(src, per_class=20)
    plan = build_plan(src, "train", shard_size=10, seed=0)
    first_shard_classes = {sample.wnid for sample in plan.shards[0]}
    assert len(first_shard_classes) >= 2  # sorted order would put only n01440764 here
    order = [sample.key for shard in plan.shards for sample in shard]
    assert order != sorted(order)
    assert order != [
        sample.key for shard in build_plan(src, "train", 10, seed=1).shards for sample in shard
    ]


def test_tar_members_are_normalised_for_determinism(class_folders, tmp_path):
    src, _ = class_folders
    write_shards(src, tmp_path / "out", "val", shard_size=100, workers=1)
    members = read_tar(tmp_path / "out" / shard_name("val", 0))
    assert [member.name.rsplit(".", 1)[1] for member in members[:3]] == ["jpg", "cls", "json"]
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode) == (
            0,
            0,
            0,
            "",
            "",
            0o644,
        )
        assert member.isreg()


def test_manifest_records_bytes_and_sha256_and_timm_info_lists_the_split(class_folders, tmp_path):
    import hashlib

    src, _ = class_folders
    (src.parent / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\n"
        "n01443537 goldfish, Carassius auratus\n"
        "n01484850 great white shark\n"
    )
    write_shards(src, tmp_path / "out", "val", shard_size=6, seed=3, workers=1)
    manifest = read_manifest(tmp_path / "out")
    for shard in manifest.shards:
        data = (tmp_path / "out" / shard.name).read_bytes()
        assert shard.bytes == len(data) and shard.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.seed == 3 and manifest.class_names["n01443537"].startswith("goldfish")
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert info["num_classes"] == 3
    # a list of names: timm's reader joins each to its root (a brace pattern is one file per char)
    assert info["splits"]["val"]["filenames"] == [shard_name("val", index) for index in range(3)]
    assert info["splits"]["val"]["shard_lengths"] == [6, 6, 3]


def test_dali_index_lists_every_member_at_its_data_offset(class_folders, tmp_path):
    src, _ = class_folders
    write_shards(src, tmp_path / "out", "val", shard_size=8, workers=1)
    tar_path = tmp_path / "out" / shard_name("val", 0)
    lines = (tmp_path / "out" / dali_index_name(tar_path.name)).read_text().splitlines()
    assert lines[0] == "v1.2 8" and len(lines) == 9
    data = tar_path.read_bytes()
    members = {member.name: member for member in read_tar(tar_path)}
    for line in lines[1:]:
        fields = line.split()
        assert [fields[index] for index in (0, 4, 8)] == ["jpg", "cls", "json"]
        for start in range(0, 12, 4):
            _, offset, size, name = fields[start : start + 4]
            assert (int(offset), int(size)) == (members[name].offset_data, members[name].size)
            with tarfile.open(tar_path) as tar:
                assert data[int(offset) : int(offset) + int(size)] == tar.extractfile(name).read()


def test_resume_skips_complete_shards_and_rewrites_a_corrupted_or_missing_one(
    class_folders, tmp_path
):
    src, _ = class_folders
    out = tmp_path / "out"
    write_shards(src, out, "train", shard_size=4, workers=1)
    reference = shard_files(out)
    mtimes = {path.name: path.stat().st_mtime_ns for path in out.glob("*.tar")}
    corrupted = out / shard_name("train", 1)
    data = bytearray(corrupted.read_bytes())
    data[600] ^= 0xFF  # same size, one flipped byte inside the first image
    corrupted.write_bytes(bytes(data))
    (out / shard_name("train", 2)).unlink()
    (out / "manifest.json").unlink()  # as after a kill before the end

    summary = write_shards(src, out, "train", shard_size=4, workers=1)

    assert (summary.written, summary.skipped) == (2, 2)
    assert shard_files(out) == reference
    for index in (0, 3):
        name = shard_name("train", index)
        assert (out / name).stat().st_mtime_ns == mtimes[name]  # untouched


def test_a_changed_input_replans_and_drops_shards_past_the_new_end(class_folders, tmp_path):
    src, _ = class_folders
    out = tmp_path / "out"
    write_shards(src, out, "train", shard_size=4, workers=1)
    assert (out / shard_name("train", 3)).exists()
    for path in sorted((src / CLASSES[0]).iterdir())[:4]:
        path.unlink()  # 11 samples left: 3 shards
    write_shards(src, out, "train", shard_size=4, workers=1)
    assert read_manifest(out).num_samples == 11
    assert not (out / shard_name("train", 3)).exists()
    assert json.loads((out / PLAN_NAME).read_text())["num_shards"] == 3


def test_three_sliced_tasks_and_merge_equal_a_single_run(class_folders, tmp_path):
    src, _ = class_folders
    write_shards(src, tmp_path / "single", "train", shard_size=2, workers=1)
    for task in range(3):
        argv = [
            "shard",
            str(src),
            str(tmp_path / "sliced"),
            "--split",
            "train",
            "--shard-size",
            "2",
        ]
        assert main([*argv, "--task-index", str(task), "--num-tasks", "3", "--workers", "1"]) == 0
        if task < 2:
            assert not (tmp_path / "sliced" / "manifest.json").exists()
    assert main(["merge", str(tmp_path / "sliced")]) == 0
    single = shard_files(tmp_path / "single")
    sliced = {
        name: digest
        for name, digest in shard_files(tmp_path / "sliced").items()
        if ".task-" not in name
    }
    assert sliced == single  # tars, indexes, manifest.json and _info.json byte for byte


def test_merge_refuses_while_a_task_has_not_finished(class_folders, tmp_path, capsys):
    src, _ = class_folders
    for task in (0, 2):
        write_shards(
            src, tmp_path / "out", "val", shard_size=2, workers=1, task_index=task, num_tasks=3
        )
    assert main(["merge", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "tasks [1] of 3 have not finished" in error
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_inputs_that_are_not_rgb_jpegs_are_reported_and_fail_the_command(
    class_folders, tmp_path, capsys
):
    from rawfixtures import make_oddball

    src, _ = class_folders
    make_oddball("png-as-jpeg", src / CLASSES[1] / "n01443537_99.JPEG")
    assert (
        main(["shard", str(src), str(tmp_path / "out"), "--split", "val", "--shard-size", "100"])
        == 1
    )
    output = capsys.readouterr().out
    assert "n01443537_99.JPEG: is a PNG RGB image, expected an RGB JPEG" in output
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_keys_must_be_unique_within_a_split(tmp_path, capsys):
    src = tmp_path / "src"
    for wnid in CLASSES[:2]:
        (src / wnid).mkdir(parents=True)
        (src / wnid / "same.JPEG").write_bytes(generated_jpeg(1))
    assert main(["shard", str(src), str(tmp_path / "out"), "--split", "train"]) == 2
    assert "both give the sample key 'same'" in capsys.readouterr().err


def test_webdataset_reads_the_shards(class_folders, tmp_path):
    import webdataset as wds

    src, keys = class_folders
    write_shards(src, tmp_path / "out", "train", shard_size=4, workers=1)
    urls = [str(path) for path in sorted((tmp_path / "out").glob("*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "cls", "json")
    labels = {key: (int(cls), json.loads(meta)["wnid"]) for key, cls, meta in dataset}
    assert labels == {key: (CLASSES.index(wnid), wnid) for key, wnid in keys.items()}


@pytest.mark.dali
@pytest.mark.slow
def test_dali_webdataset_reader_reads_the_shards_with_our_index_files(class_folders, tmp_path):
    dali = pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    from nvidia.dali import fn

    src, keys = class_folders
    out = tmp_path / "out"
    write_shards(src, out, "val", shard_size=4, workers=1)
    tars = [str(path) for path in sorted(out.glob("*.tar"))]
    indexes = [str(out / dali_index_name(Path(path).name)) for path in tars]

    @dali.pipeline_def(batch_size=5, num_threads=1, device_id=None)
    def pipeline():
        jpg, cls, meta = fn.readers.webdataset(
            paths=tars,
            index_paths=indexes,
            ext=["jpg", "cls", "json"],
            missing_component_behavior="error",
            random_shuffle=False,
            name="reader",
        )
        return jpg, cls, meta

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("reader") == 15
    by_source: dict[str, int] = {}
    jpeg_bytes = {}
    for _ in range(3):
        jpg, cls, meta = pipe.run()
        for index in range(len(cls)):
            label = int(
                bytes(np.asarray(cls.at(index))).decode("ascii")
            )  # .cls comes back as raw bytes
            info = json.loads(bytes(np.asarray(meta.at(index))))
            by_source[info["source"]] = label
            jpeg_bytes[info["source"]] = bytes(np.asarray(jpg.at(index)))
    assert by_source == {f"{key}.JPEG": CLASSES.index(wnid) for key, wnid in keys.items()}
    for key, wnid in keys.items():
        assert jpeg_bytes[f"{key}.JPEG"] == (src / wnid / f"{key}.JPEG").read_bytes()
    assert collections.Counter(by_source.values()) == {0: 5, 1: 5, 2: 5}


def test_a_split_missing_a_class_folder_is_refused_unless_given_the_full_class_list(
    tmp_path, capsys
):
    train, val = tmp_path / "train-folders", tmp_path / "val-folders"
    make_class_folders(train, per_class=2)
    make_class_folders(
        val, classes=(CLASSES[0], CLASSES[2]), per_class=2
    )  # no val images of class 1
    assert main(["shard", str(train), str(tmp_path / "shards" / "train"), "--split", "train"]) == 0
    argv = ["shard", str(val), str(tmp_path / "shards" / "val"), "--split", "val"]
    assert main(argv) == 2
    assert "labels would disagree between the splits" in capsys.readouterr().err
    assert main([*argv, "--classes-from", str(tmp_path / "shards" / "train")]) == 0
    manifest = read_manifest(tmp_path / "shards" / "val")
    assert manifest.classes == list(CLASSES) and manifest.class_counts[CLASSES[1]] == 0
    labels = set()
    for shard in manifest.shards:
        labels |= {
            int(members["cls"])
            for members in read_samples(tmp_path / "shards" / "val" / shard.name).values()
        }
    assert labels == {0, 2}  # class 2 keeps its index although class 1 has no val images


def test_a_slurm_task_leaves_other_tasks_shard_temp_files_alone(class_folders, tmp_path):
    src, _ = class_folders
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / ".imagenet-val-000001.tar.4242.shard-tmp"  # task 1 of 2 writing shard 1
    mine = out / ".imagenet-val-000000.tar.4243.shard-tmp"
    theirs.write_bytes(b"in progress")
    mine.write_bytes(b"stale")
    write_shards(src, out, "val", shard_size=4, workers=1, task_index=0, num_tasks=2)
    assert theirs.exists() and not mine.exists()


def test_a_file_name_with_spaces_gives_a_key_without_them_and_a_dali_index_that_verifies(
    tmp_path, capsys
):
    src = tmp_path / "src"
    (src / CLASSES[0]).mkdir(parents=True)
    (src / CLASSES[0] / "my photo\tone.JPEG").write_bytes(generated_jpeg(1))
    (src / CLASSES[0] / "plain.JPEG").write_bytes(generated_jpeg(2))
    out = tmp_path / "out"
    assert main(["shard", str(src), str(out), "--split", "train", "--workers", "1"]) == 0
    lines = (out / dali_index_name(shard_name("train", 0))).read_text().splitlines()
    assert all(len(line.split()) == 12 for line in lines[1:])
    assert "my_photo_one" in read_samples(out / shard_name("train", 0))
    assert main(["verify", str(out), "--workers", "1"]) == 0, capsys.readouterr().out


def test_sharding_a_split_into_the_other_splits_directory_is_refused(
    class_folders, tmp_path, capsys
):
    src, _ = class_folders
    train = tmp_path / "out" / "train"
    assert main(["shard", str(src), str(train), "--split", "train", "--shard-size", "4"]) == 0
    before = tree_digest(train)
    capsys.readouterr()
    assert main(["shard", str(src), str(train), "--split", "val"]) == 2
    error = capsys.readouterr().err
    assert "holds the train split's shards" in error and len(problem_lines(error)) == 1
    assert tree_digest(train) == before
