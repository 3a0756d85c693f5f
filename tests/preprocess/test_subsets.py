"""ImageNet subsets through `prepare`: exact counts of the right classes, the same from the tars
as from folders and on a rerun, unchosen class tars never read, recorded and re-derived by
`verify`.

    .venv/bin/python -m pytest tests/preprocess/test_subsets.py -q
"""

from __future__ import annotations

import collections
import json
import tarfile
from pathlib import Path

import pytest
from imagefixtures import tree_digest
from rawfixtures import build_folder_layout, build_ilsvrc_tars, pick_wnids
from stderr_lines import problem_lines

from core.shard_format import read_manifest
from preprocess.cli import main
from preprocess.subsets import BUILTIN_CLASS_LISTS, Subset

WNIDS = pick_wnids(12)
SUBSET = ("--classes", "10", "--train-per-class", "20", "--val-per-class", "5")


def prepare(raw: Path, dst: Path, *extra: str) -> int:
    argv = ["prepare", str(raw), str(dst), "--short-side", "32", "--workers", "1"]
    return main([*argv, "--shard-size", "64", *extra])


def split_keys(directory: Path) -> dict[str, str]:
    """key -> WNID of every sample in a split's tars (from the .json member)."""
    keys = {}
    for shard in read_manifest(directory).shards:
        with tarfile.open(directory / shard.name) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    keys[member.name[: -len(".json")]] = json.loads(tar.extractfile(member).read())[
                        "wnid"
                    ]
    return keys


def published(directory: Path) -> dict[str, str]:
    """Every non-hidden output file's sha256 (what a rerun or another layout must reproduce)."""
    return {
        name: digest
        for name, digest in tree_digest(directory).items()
        if not any(part.startswith(".") for part in Path(name).parts)
        and Path(name).name != "prepare.json"
    }


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """The same 12-class ImageNet (24 train, 7 val images per class) as tars and as folders."""
    root = tmp_path_factory.mktemp("imagenet")
    return {
        "tars": build_ilsvrc_tars(root / "tars", WNIDS, per_class=24, val_per_class=7),
        "folders": build_folder_layout(root / "folders", WNIDS, per_class=24, val_per_class=7),
    }


@pytest.mark.slow
def test_ten_classes_of_20_and_5_images_are_exact_the_same_from_tars_and_folders_and_on_a_rerun(
    imagenet, tmp_path, capsys
):
    outputs = {}
    for name, layout in imagenet.items():
        outputs[name] = tmp_path / name
        assert prepare(layout.root, outputs[name], *SUBSET) == 0, capsys.readouterr()
    layout = imagenet["tars"]
    for split, per_class, truth in (("train", 20, layout.train), ("val", 5, layout.val)):
        manifest = read_manifest(outputs["tars"] / split)
        assert manifest.classes == sorted(WNIDS)[:10]  # the first 10 sorted WNIDs
        assert manifest.class_counts == {wnid: per_class for wnid in manifest.classes}
        keys = split_keys(outputs["tars"] / split)
        assert len(keys) == 10 * per_class
        assert all(truth[key] == wnid for key, wnid in keys.items())  # the right class, each
        assert manifest.subset["rule"]["train_per_class"] == 20
    first = published(outputs["tars"])
    assert {k: v for k, v in first.items() if not k.startswith("folders")} == {
        k: v for k, v in published(outputs["folders"]).items() if not k.startswith("folders")
    }  # shards, indexes, manifests, _info.json and the class list: byte for byte
    capsys.readouterr()
    assert prepare(layout.root, outputs["tars"], *SUBSET) == 0
    assert "written 0" in capsys.readouterr().out
    assert published(outputs["tars"]) == first
    assert main(["verify", str(outputs["tars"]), "--workers", "1"]) == 0
    mapping = (outputs["tars"] / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split()[0] for line in mapping] == sorted(WNIDS)[:10]  # only the chosen classes


def _corrupt_member(tar_path: Path, name: str) -> None:
    """Overwrite the bytes of one member in place; the outer tar's headers stay valid."""
    with tarfile.open(tar_path) as archive:
        member = archive.getmember(name)
    with open(tar_path, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(b"\xff" * member.size)


@pytest.mark.slow
def test_the_tars_of_unchosen_classes_are_never_read(imagenet, tmp_path, capsys):
    raw = tmp_path / "raw"
    layout = build_ilsvrc_tars(raw, WNIDS, per_class=3, val_per_class=2)
    unchosen = max(WNIDS)  # the last class tar
    _corrupt_member(raw / "ILSVRC2012_img_train.tar", f"{unchosen}.tar")
    # proof that the damage is real: reading everything fails on it
    assert prepare(raw, tmp_path / "all", "--splits", "train") == 2
    assert f"{unchosen}.tar" in capsys.readouterr().err
    assert prepare(raw, tmp_path / "subset", "--classes", "11") == 0, capsys.readouterr()
    assert read_manifest(tmp_path / "subset" / "train").num_samples == 11 * 3
    assert unchosen not in split_keys(tmp_path / "subset" / "train").values()
    assert layout.classes[-1] == unchosen


@pytest.mark.slow
def test_the_blog_posts_split_trains_on_raw_val_and_holds_out_train_images_as_val(
    imagenet, tmp_path, capsys
):
    layout = imagenet["tars"]
    dst = tmp_path / "blog"
    assert prepare(layout.root, dst, "--train-from-val", "--val-from-train", "2") == 0, (
        capsys.readouterr()
    )
    train, val = split_keys(dst / "train"), split_keys(dst / "val")
    assert train == layout.val  # every raw val image, with its devkit label
    assert len(val) == 12 * 2 and all(layout.train[key] == wnid for key, wnid in val.items())
    assert collections.Counter(val.values()) == {wnid: 2 for wnid in WNIDS}
    manifest = read_manifest(dst / "train")
    assert manifest.subset["source_split"] == "val" and manifest.subset["rule"]["train_from_val"]
    assert main(["verify", str(dst), "--workers", "1"]) == 0
    capsys.readouterr()
    assert prepare(layout.root, tmp_path / "bad", "--train-from-val") == 2
    error = capsys.readouterr().err
    assert len(problem_lines(error)) == 1 and "add --val-from-train K" in error


@pytest.mark.slow
def test_val_from_train_holds_out_disjoint_images_and_needs_no_raw_val(tmp_path, capsys):
    raw = tmp_path / "raw"
    layout = build_ilsvrc_tars(raw, WNIDS[:4], per_class=6, val_per_class=2)
    (raw / "ILSVRC2012_img_val.tar").unlink()  # never read
    (raw / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    dst = tmp_path / "out"
    assert prepare(raw, dst, "--val-from-train", "2", "--train-per-class", "3") == 0, (
        capsys.readouterr()
    )
    train, val = split_keys(dst / "train"), split_keys(dst / "val")
    assert not set(train) & set(val)
    assert collections.Counter(train.values()) == {wnid: 3 for wnid in layout.classes}
    assert collections.Counter(val.values()) == {wnid: 2 for wnid in layout.classes}
    assert set(train) | set(val) <= set(layout.train)
    assert main(["verify", str(dst), "--workers", "1"]) == 0


@pytest.mark.slow
def test_random_classes_are_seeded_recorded_and_verify_rederives_them(imagenet, tmp_path, capsys):
    raw = imagenet["folders"].root
    chosen = {}
    for seed in (1, 2):
        dst = tmp_path / f"seed{seed}"
        argv = ("--classes", "3", "--random-classes", "--seed", str(seed), "--splits", "val")
        assert prepare(raw, dst, *argv) == 0, capsys.readouterr()
        chosen[seed] = read_manifest(dst / "val").classes
        assert chosen[seed] == Subset(classes="3", random_classes=True, seed=seed).choose_classes(
            WNIDS
        )
    assert chosen[1] != chosen[2] and chosen[1] != sorted(WNIDS)[:3]
    assert main(["verify", str(tmp_path / "seed1" / "val")]) == 0
    # a manifest whose recorded rule does not give its classes is reported
    path = tmp_path / "seed1" / "val" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["subset"]["rule"]["seed"] = 2
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "seed1" / "val")]) == 1
    assert "gives classes" in capsys.readouterr().out


@pytest.mark.slow
def test_classes_by_name_or_file_and_a_changed_subset_is_refused(tmp_path, capsys):
    nette = list(BUILTIN_CLASS_LISTS["imagenette"])
    layout = build_folder_layout(
        tmp_path / "raw", [*nette, *WNIDS[:2]], per_class=1, val_per_class=1
    )
    dst = tmp_path / "nette"
    assert prepare(layout.root, dst, "--classes", "imagenette") == 0, capsys.readouterr()
    assert read_manifest(dst / "train").classes == nette
    listed = tmp_path / "classes.txt"
    listed.write_text(f"{nette[3]}\n{WNIDS[0]}\n")
    assert prepare(layout.root, tmp_path / "file", "--classes", str(listed)) == 0
    assert read_manifest(tmp_path / "file" / "val").classes == sorted([nette[3], WNIDS[0]])
    capsys.readouterr()
    assert prepare(layout.root, dst, "--classes", "3") == 2  # into the imagenette DST
    error = capsys.readouterr().err
    assert len(problem_lines(error)) == 1 and "resuming would mix the two; pass a new DST" in error
    for argv, expected in (
        (("--classes", "99"), "the raw data has only 12 classes"),
        (("--classes", "nope"), "expected a count N, a built-in list"),
        (("--random-classes",), "pass --classes N"),
    ):
        assert prepare(layout.root, tmp_path / "x", *argv) == 2
        error = capsys.readouterr().err
        assert len(problem_lines(error)) == 1 and expected in error, error


@pytest.mark.slow
def test_a_subset_prepared_by_a_two_task_array_equals_a_single_run(imagenet, tmp_path, capsys):
    raw = imagenet["tars"].root
    assert prepare(raw, tmp_path / "single", *SUBSET) == 0, capsys.readouterr()
    sliced = tmp_path / "sliced"
    for stage in ("resize", "shard"):
        for task in ("0", "1"):
            argv = (*SUBSET, "--stage", stage, "--task-index", task, "--num-tasks", "2")
            assert prepare(raw, sliced, *argv) == 0, capsys.readouterr()
    assert main(["merge", str(sliced)]) == 0
    merged = {k: v for k, v in published(sliced).items() if ".task-" not in k}
    single = published(tmp_path / "single")
    assert {k: v for k, v in merged.items() if not k.startswith("folders")} == {
        k: v for k, v in single.items() if not k.startswith("folders")
    }  # shards, manifests with their subset record, both _info.json files
    assert main(["verify", str(sliced), "--workers", "1"]) == 0
