"""Fixtures and helpers of the GPU tests: textured tiny data (class folders and shards of the same
JPEGs), a one-rank nccl process group the trainer treats as distributed, and the tiny config."""

from __future__ import annotations

import dataclasses
import datetime
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import Config, load_config
from pipeline.distributed import DistInfo

REPO = Path(__file__).resolve().parents[2]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def write_textured_split(root: Path, per_class: int, seed: int, size: int = 96) -> None:
    """root/<wnid>/*.JPEG: stripes in a class colour plus noise (real JPEG detail, unlike a flat
    colour, so two decoders can actually differ)."""
    rng = np.random.default_rng(seed)
    for class_index, wnid in enumerate(WNIDS):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.roll(np.array([200.0, 70.0, 40.0]), class_index)
        for number in range(per_class):
            width = size + number % 16  # both val crop positions get exercised
            y, x = np.mgrid[0:size, 0:width]
            direction = [x, y, x + y, x - y][class_index]
            stripes = 0.5 + 0.5 * np.sin(direction / 4.0 + rng.uniform(0, 2 * np.pi))
            pixels = stripes[..., None] * colour + rng.normal(0, 20, (size, width, 3))
            image = Image.fromarray(np.clip(pixels + 30, 0, 255).astype(np.uint8))
            image.save(folder / f"{wnid}_{seed}_{number}.JPEG", quality=90)


@pytest.fixture(scope="session")
def gpu_data(tmp_path_factory) -> Path:
    """DST/folders/{train,val} (4 classes x 40, 4 x 5) and DST/{train,val} shards of them: the
    layout `python -m preprocess prepare` writes."""
    from preprocess.cli import main as preprocess_main

    root = tmp_path_factory.mktemp("gpu-data")
    write_textured_split(root / "folders" / "train", per_class=40, seed=1)
    write_textured_split(root / "folders" / "val", per_class=5, seed=2)
    for split, shard_size in (("train", 48), ("val", 8)):
        status = preprocess_main(
            [
                "shard",
                str(root / "folders" / split),
                str(root / split),
                "--split",
                split,
                "--shard-size",
                str(shard_size),
                "--workers",
                "1",
            ]
        )
        assert status == 0, f"preprocess shard {split} exited {status}"
    return root


@dataclasses.dataclass(frozen=True)
class WorldOfOne(DistInfo):
    """A DistInfo whose one-rank process group counts as distributed: pipeline/distributed.py
    starts no group for a world of one, so the trainer would skip DDP; with this it wraps the
    model in DDP and runs every collective (on nccl) as a multi-GPU run does."""

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


@pytest.fixture
def nccl_world_of_one():
    """A one-rank nccl process group on cuda:0 for the test, destroyed after it."""
    import torch
    import torch.distributed as torch_dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.cuda.set_device(0)
    torch_dist.init_process_group(
        "nccl",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=120),
        device_id=torch.device("cuda:0"),
    )
    try:
        yield WorldOfOne(backend="nccl", device="cuda:0")
    finally:
        torch_dist.destroy_process_group()


def gpu_config(data: Path, run_dir: Path, *overrides: str) -> Config:
    """configs/tiny.yaml on cuda:0 over DST/folders: W&B, plots and the sanity grid off."""
    return load_config(
        REPO / "configs/tiny.yaml",
        [
            f"data.train_dir={data / 'folders' / 'train'}",
            f"data.val_dir={data / 'folders' / 'val'}",
            "data.pin_memory=true",
            "train.device=cuda",
            f"train.run_dir={run_dir}",
            "log.wandb=disabled",
            "log.plots=false",
            "train.sanity_grid=false",
            *overrides,
        ],
    )
