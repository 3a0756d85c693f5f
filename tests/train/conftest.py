"""Fixtures for the training tests: a tiny ImageNet-style class-folder dataset of generated JPEGs.

Each class has its own colour and stripe direction plus per-image noise and jitter, so a narrow
AlexNet can learn it in a few CPU steps, but not from a single pixel. The val split has an odd
number of images (21) so exact-eval tests see uneven shards across ranks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark", "tiger shark, Galeocerdo cuvieri"]
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
    """DIR/train (4 classes x 16) and DIR/val (21 images: 6, 5, 5, 5) + LOC_synset_mapping.txt."""
    root = tmp_path_factory.mktemp("tiny-imagenet")
    write_split(root / "train", [16, 16, 16, 16], seed=1)
    write_split(root / "val", [6, 5, 5, 5], seed=2)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)))
    return root


def tiny_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """argv for pipeline.train on the tiny data (W&B off unless a test turns it on)."""
    return [
        "--config", str(REPO / "configs/tiny.yaml"),
        f"data.train_dir={data / 'train'}", f"data.val_dir={data / 'val'}",
        f"train.run_dir={run_dir}", "log.wandb=disabled", "log.plots=false", "train.sanity_grid=false",
        *extra,
    ]


def torchrun(nproc: int, argv: list[str], timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=N -m pipeline.train ARGV` on CPU (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=0",
               "--standalone", "-m", "pipeline.train", *argv]
    return subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout, **popen)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"})
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env
