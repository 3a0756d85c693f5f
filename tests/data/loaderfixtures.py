"""Tiny ImageNet-shaped datasets whose pixels say which sample they are.

Every image is one flat colour: red encodes the class index, green and blue the sample id.
Flat colours survive JPEG, any crop, any resize and flips, so a test can read (class, id)
back from a loaded batch and check labels, duplicates and drops without any bookkeeping.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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
        class_index = round((red - 16) / 28)
        sample_id = round((green - 8) / 16) * 15 + round((blue - 8) / 16)
        result.append((class_index, sample_id))
    return result


def write_class_folders(
    root: Path, per_class: list[int], first_id: int = 0
) -> list[tuple[int, int]]:
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
    """folders/{train,val}/<wnid>/*.JPEG: 8 classes, 61 train and 27 val images (uneven on
    purpose)."""
    root = tmp_path_factory.mktemp("tiny-imagenet")
    train = write_class_folders(root / "folders" / "train", [8, 7, 8, 8, 7, 8, 7, 8])
    val = write_class_folders(root / "folders" / "val", [4, 3, 3, 4, 3, 3, 4, 3], first_id=100)
    shutil.copy(SYNSET_MAPPING, root / "LOC_synset_mapping.txt")
    return {
        "root": root,
        "train": root / "folders" / "train",
        "val": root / "folders" / "val",
        "train_ids": train,
        "val_ids": val,
    }


TEXTURED_SIZES = [(64, 48), (48, 64), (56, 56), (80, 44), (44, 72)]  # (width, height)


def write_textured_folders(root: Path, per_class: int, seed: int = 0) -> None:
    """root/<wnid>/*.JPEG of seeded colour noise at several scales: unlike the flat colours,
    every crop, flip or size of it has different pixels, so pixel equality means the same
    draws."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for class_index in range(NUM_CLASSES):
        folder = root / WNIDS[class_index]
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            width, height = TEXTURED_SIZES[(class_index * per_class + number) % 5]
            coarse = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), "uint8"))
            pixels = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))
            pixels = np.clip(pixels + rng.normal(0, 24, pixels.shape), 0, 255).astype("uint8")
            key = f"tex_{seed}_{class_index}_{number:03d}"
            Image.fromarray(pixels).save(folder / f"{key}.JPEG", quality=92)


@pytest.fixture(scope="session")
def textured_data(tmp_path_factory) -> dict:
    """40 textured train images (8 classes x 5) as class folders and as shards of 7, and 16
    val images."""
    root = tmp_path_factory.mktemp("textured")
    write_textured_folders(root / "folders" / "train", 5)
    write_textured_folders(root / "folders" / "val", 2, seed=1)
    return {
        "folders": {"train": root / "folders" / "train", "val": root / "folders" / "val"},
        "shards": {
            "train": make_shards(root / "folders" / "train", root / "shards" / "train", "train", 7),
            "val": make_shards(root / "folders" / "val", root / "shards" / "val", "val", 7),
        },
    }


def tiny_config(train_dir, val_dir, backend="folder", **data):
    """A Config with test-sized crops (32 px) and few workers."""
    values = {
        "backend": backend,
        "train_dir": str(train_dir),
        "val_dir": str(val_dir),
        "global_batch_size": 8,
        "num_workers": 0,
        "train_crop": 32,
        "val_resize": 36,
        "val_crop": 32,
        "prefetch_factor": 2,
    }
    values.update(data)
    return build_config({"data": values, "train": {"seed": 3, "channels_last": False}})


def single_rank() -> DistInfo:
    return DistInfo()


def make_shards(src: Path, dst: Path, split: str, shard_size: int) -> Path:
    """Shard class folders with the real writer (`python -m preprocess shard`)."""
    from preprocess.cli import main

    status = main(
        [
            "shard",
            str(src),
            str(dst),
            "--split",
            split,
            "--shard-size",
            str(shard_size),
            "--workers",
            "1",
        ]
    )
    assert status == 0, f"preprocess shard exited {status}"
    return dst


@pytest.fixture(scope="session")
def tiny_shards(tiny_folders) -> dict:
    """The tiny folders as shards: train in shards of 10 (61 → 6×10 + 1),
    val in shards of 4 (27 → 6×4 + 3)."""
    root = tiny_folders["root"]
    return {
        **tiny_folders,
        "train": make_shards(tiny_folders["train"], root / "shards" / "train", "train", 10),
        "val": make_shards(tiny_folders["val"], root / "shards" / "val", "val", 4),
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_rank_worker(rank: int, world_size: int, port: int, combos: list, out_dir: str) -> None:
    """One gloo rank: records what each backend yields on it (spawned by test_distributed.py)."""
    import json

    import torch.distributed as torch_dist

    from pipeline.data import build_loader
    from pipeline.errors import LoaderError

    torch_dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    dist = DistInfo(
        rank=rank,
        local_rank=rank,
        world_size=world_size,
        local_world_size=world_size,
        backend="gloo",
    )
    report = {}
    try:
        for backend, train_dir, val_dir, workers in combos:
            cfg = tiny_config(train_dir, val_dir, backend=backend, num_workers=workers)
            train = build_loader(cfg, "train", dist)
            entry = {"train_batches": [], "train_ids": [], "val_ids": [], "labels_ok": True}
            for epoch in (0, 1):
                train.set_epoch(epoch)
                entry["train_batches"].append(len(train))
                ids = []
                for images, labels in train:
                    decoded = decode_identity(images)
                    entry["labels_ok"] &= [c for c, _ in decoded] == labels.tolist()
                    ids.extend(sample_id for _, sample_id in decoded)
                entry["train_ids"].append(ids)
            train.set_epoch(1, start_batch=2)
            entry["resumed_ids"] = [i for images, _ in train for _, i in decode_identity(images)]
            again = build_loader(cfg, "train", dist)  # a fresh loader, same seed: the same epoch 0
            again.set_epoch(0)
            entry["repeat_ids"] = [i for images, _ in again for _, i in decode_identity(images)]
            del again
            val = build_loader(cfg, "val", dist)
            for images, labels in val:
                decoded = decode_identity(images)
                entry["labels_ok"] &= [c for c, _ in decoded] == labels.tolist()
                entry["val_ids"].extend(sample_id for _, sample_id in decoded)
            # a rank resuming at another batch than its peers must fail before the epoch, not hang
            train.set_epoch(1, start_batch=rank)
            try:
                next(iter(train))
                entry["mismatch_error"] = ""
            except LoaderError as err:
                entry["mismatch_error"] = str(err)
            report[
                f"{backend}:{Path(train_dir).parent.name}"
                + (f":{workers}workers" if workers else "")
            ] = entry
    finally:
        torch_dist.destroy_process_group()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))
