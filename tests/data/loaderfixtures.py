"""Tiny ImageNet-shaped datasets whose pixels say which sample they are.

Every image is one flat colour: red encodes the class index, green and blue the sample id.
Flat colours survive JPEG, any crop, any resize and flips, so a test can read (class, id)
back from a loaded batch and check labels, duplicates and drops without any bookkeeping.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import build_config
from pipeline.distributed import DistInfo

NUM_CLASSES = 8
SYNSET_MAPPING = Path(__file__).parents[1] / "fixtures-data" / "LOC_synset_mapping.txt"
WNIDS = [line.split()[0] for line in SYNSET_MAPPING.read_text().splitlines()[:NUM_CLASSES]]
SIZES = [(40, 48), (56, 40), (44, 44), (64, 36), (36, 60)]  # (width, height): both orientations
FIXTURES = Path(__file__).parent / "fixtures"


def colour_of(class_index: int, sample_id: int) -> tuple[int, int, int]:
    assert 0 <= sample_id < 15 * 15 and 0 <= class_index < NUM_CLASSES
    return (16 + 28 * class_index, 8 + 16 * (sample_id // 15), 8 + 16 * (sample_id % 15))


def decode_identity(images: torch.Tensor) -> list[tuple[int, int]]:
    """(class, sample id) of each image of a uint8 [N,3,H,W] batch, from its mean colour."""
    means = images.float().mean(dim=(2, 3)).cpu().numpy()  # [N, 3]
    result = []
    for red, green, blue in means:
        class_index = int(round((red - 16) / 28))
        sample_id = int(round((green - 8) / 16)) * 15 + int(round((blue - 8) / 16))
        result.append((class_index, sample_id))
    return result


def write_class_folders(root: Path, per_class: list[int], first_id: int = 0) -> list[tuple[int, int]]:
    """root/<wnid>/<key>.JPEG with per_class[c] images of class c; returns [(class, id)]."""
    identities = []
    sample_id = first_id
    for class_index, count in enumerate(per_class):
        folder = root / WNIDS[class_index]
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            size = SIZES[sample_id % len(SIZES)]
            image = Image.new("RGB", size, colour_of(class_index, sample_id))
            image.save(folder / f"img_{sample_id:05d}.JPEG", quality=95)
            identities.append((class_index, sample_id))
            sample_id += 1
    return identities


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict:
    """folders/{train,val}/<wnid>/*.JPEG: 8 classes, 61 train and 27 val images (uneven on purpose)."""
    root = tmp_path_factory.mktemp("tiny-imagenet")
    train = write_class_folders(root / "folders" / "train", [8, 7, 8, 8, 7, 8, 7, 8])
    val = write_class_folders(root / "folders" / "val", [4, 3, 3, 4, 3, 3, 4, 3], first_id=100)
    shutil.copy(SYNSET_MAPPING, root / "LOC_synset_mapping.txt")
    return {"root": root, "train": root / "folders" / "train", "val": root / "folders" / "val",
            "train_ids": train, "val_ids": val}


def tiny_config(train_dir, val_dir, backend="folder", **data):
    """A Config with test-sized crops (32 px) and few workers."""
    values = dict(backend=backend, train_dir=str(train_dir), val_dir=str(val_dir), global_batch_size=8,
                  num_workers=0, train_crop=32, val_resize=36, val_crop=32, prefetch_factor=2)
    values.update(data)
    return build_config({"data": values, "train": {"seed": 3, "channels_last": False}})


def single_rank() -> DistInfo:
    return DistInfo()


def make_shards(src: Path, dst: Path, split: str, shard_size: int) -> Path:
    """Shard class folders with the real writer (`python -m preprocess shard`)."""
    from preprocess.cli import main

    status = main(["shard", str(src), str(dst), "--split", split, "--shard-size", str(shard_size), "--workers", "1"])
    assert status == 0, f"preprocess shard exited {status}"
    return dst


@pytest.fixture(scope="session")
def tiny_shards(tiny_folders) -> dict:
    """The tiny folders as shards: train in shards of 10 (61 → 6×10 + 1), val in shards of 4 (27 → 6×4 + 3)."""
    root = tiny_folders["root"]
    return {
        **tiny_folders,
        "train": make_shards(tiny_folders["train"], root / "shards" / "train", "train", 10),
        "val": make_shards(tiny_folders["val"], root / "shards" / "val", "val", 4),
    }
