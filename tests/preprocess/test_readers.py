"""Other tools read our shards: timm's own wds reader and Hugging Face datasets' webdataset loader
get every sample with the right label, on the demo's shards and on CIFAR-10's.

    .venv/bin/python -m pytest tests/preprocess/test_readers.py -q

The real readers, not our reading of their docs: timm.data.create_dataset("wds/...") finds
`_info.json` in `root` and takes `splits[split].filenames` as a list of shard names relative to
it (timm/data/readers/reader_wds.py); datasets.load_dataset("webdataset", data_files=...) groups
members by key and decodes .cls as int, .json as a dict and .jpg as an image.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from smallfixtures import build_cifar

from core.shard_format import read_manifest
from preprocess.cli import main
from preprocess.sources import iter_raw_images
from tools.demo import prepare_command
from tools.demo_data import DEMO_WNIDS, build_demo_raw

# nothing is downloaded: datasets and the hub client stay offline
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pixel_hash(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def shard_pixels(directory: Path) -> dict[str, str]:
    """key -> pixel hash of its decoded .jpg, for every sample of a split's tars."""
    hashes = {}
    for shard in read_manifest(directory).shards:
        with tarfile.open(directory / shard.name) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                        hashes[member.name[: -len(".jpg")]] = pixel_hash(image)
    return hashes


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """The demo's shards, made by the demo's own commands; key -> true label per split."""
    root = tmp_path_factory.mktemp("demo")
    raw, prepared = root / "raw", root / "prepared"
    build_demo_raw(raw, image_size=96)
    assert main([*prepare_command(raw, prepared)[3:], "--workers", "1"]) == 0
    truth = {
        split: {
            image.key: DEMO_WNIDS.index(image.wnid) for image in iter_raw_images(raw, split)
        }  # from the raw layout's folders and CSV, not from the shards
        for split in ("train", "val")
    }
    return prepared, truth


@pytest.fixture(scope="module")
def cifar_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    cifar = build_cifar(root / "raw", "cifar10", train_per_class=6, test_per_class=3)
    assert main(["prepare", str(cifar.path), str(root / "out"), "--shard-size", "16"]) == 0
    truth = {
        split: {
            f"cifar10_{official}_{index:05d}": int(label)
            for index, label in enumerate(arrays.labels)
        }
        for split, official, arrays in (
            ("train", "train", cifar.train),
            ("val", "test", cifar.test),
        )
    }
    return root / "out", truth


@pytest.mark.slow
@pytest.mark.parametrize("shards", ["demo_shards", "cifar_shards"])
@pytest.mark.parametrize(("split", "root_is_dst"), [("train", False), ("val", True)])
def test_timm_reads_every_sample_with_its_label(request, shards, split, root_is_dst):
    from timm.data import create_dataset

    prepared, truth = request.getfixturevalue(shards)
    # root=DST/train (the split's own _info.json) or root=DST (prepare's, with both splits)
    root = prepared if root_is_dst else prepared / split
    dataset = create_dataset(f"wds/{shards}", root=str(root), split=split, is_training=False)
    got = collections.Counter((pixel_hash(image), int(target)) for image, target in dataset)
    pixels = shard_pixels(prepared / split)
    expected = collections.Counter((pixels[key], label) for key, label in truth[split].items())
    assert sum(got.values()) == len(truth[split]) == read_manifest(prepared / split).num_samples
    assert got == expected  # each image came with its own true label


@pytest.mark.slow
@pytest.mark.parametrize("shards", ["demo_shards", "cifar_shards"])
def test_hugging_face_datasets_reads_every_sample_with_its_label(request, tmp_path, shards):
    import datasets

    prepared, truth = request.getfixturevalue(shards)
    data_files = {
        split: [
            str(prepared / split / shard.name) for shard in read_manifest(prepared / split).shards
        ]
        for split in ("train", "val")
    }
    loaded = datasets.load_dataset(
        "webdataset", data_files=data_files, cache_dir=str(tmp_path / "hf-cache")
    )
    for split in ("train", "val"):
        classes = read_manifest(prepared / split).classes
        rows = loaded[split]
        assert rows.num_rows == len(truth[split])
        labels = {row["__key__"]: row["cls"] for row in rows.select_columns(["__key__", "cls"])}
        assert labels == truth[split]
        wnids = rows.select_columns(["__key__", "json"])
        assert all(classes[truth[split][row["__key__"]]] == row["json"]["wnid"] for row in wnids)
        first = rows[0]
        assert first["jpg"].mode == "RGB"  # decoded as an image by datasets itself
