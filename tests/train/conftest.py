"""Fixtures for the training tests: a tiny ImageNet-style class-folder dataset of generated JPEGs.

Each class has its own colour and stripe direction plus per-image noise and jitter, so a narrow
AlexNet can learn it in a few CPU steps, but not from a single pixel. The val split has an odd
number of images (17) so exact-eval tests see uneven shards across ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = [
    "tench, Tinca tinca",
    "goldfish, Carassius auratus",
    "great white shark",
    "tiger shark, Galeocerdo cuvieri",
]
COLOURS = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60)]


def make_image(class_index: int, rng: np.random.Generator, size: int = 80) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    direction = [x, y, x + y, x - y][class_index % 4]
    stripes = 0.5 + 0.5 * np.sin(direction / 4.0 + phase)  # [H, W] in [0, 1]
    colour = np.array(COLOURS[class_index % len(COLOURS)], dtype=np.float64)
    pixels = stripes[..., None] * colour + rng.normal(0, 25, size=(size, size, 3)) + 30
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_split(root: Path, per_class: list[int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for class_index, (wnid, count) in enumerate(zip(WNIDS, per_class)):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            make_image(class_index, rng).save(folder / f"{wnid}_{seed}_{number}.JPEG", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """DIR/train (4 classes x 40) and DIR/val (17 images: 5, 4, 4, 4) + LOC_synset_mapping.txt."""
    root = tmp_path_factory.mktemp("tiny-imagenet")
    write_split(root / "train", [40, 40, 40, 40], seed=1)
    write_split(root / "val", [5, 4, 4, 4], seed=2)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES))
    )
    return root


@pytest.fixture(scope="session")
def tiny_shards(tiny_data, tmp_path_factory) -> Path:
    """The tiny data as WebDataset shards (DIR/train, DIR/val), written by `preprocess shard`."""
    from preprocess.cli import main as preprocess_main

    root = tmp_path_factory.mktemp("tiny-shards")
    for split, shard_size in (("train", 48), ("val", 8)):
        code = preprocess_main(
            [
                "shard",
                str(tiny_data / split),
                str(root / split),
                "--split",
                split,
                "--shard-size",
                str(shard_size),
                "--workers",
                "1",
            ]
        )
        assert code == 0, f"preprocess shard {split} failed"
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """One trained tiny run (1 epoch of configs/tiny.yaml, 10 steps, with a weight EMA) that
    predict, export and the tracker tests share: RUN_DIR with checkpoints/best.pt and last.pt."""
    from train_helpers import tiny_args

    from pipeline.train.cli import main

    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    assert main(tiny_args(tiny_data, run_dir, "train.epochs=1", "train.ema_decay=0.9")) == 0
    return run_dir


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (sqlite store under tmp), shared by the session."""
    from mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
