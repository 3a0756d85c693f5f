"""Fixtures for the Slurm tests: a real two-node cluster on this machine, and tiny image data.

The cluster (tests/slurm/slurm_cluster.py) runs Debian's slurm-wlm and munge; the tests submit
the repository's real slurm/*.sbatch scripts to it. Items marked `slurm` are skipped by
tests/conftest.py when slurmctld/munged are not installed; this file also skips them when not
running as root (slurmd must start job steps as the submitting user).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import SlurmCluster, missing_programs

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """munged + slurmctld + slurmd node1/node2, up for the whole session, stopped by pid after."""
    if missing := missing_programs():
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd must run as root to start job steps")
    # Short path: munge and slurm sockets live under it.
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


def write_class_folders(root: Path, per_class: int, seed: int, size: int = 72) -> Path:
    """root/nXXXXXXXX/*.JPEG: each class a colour with noise, `per_class` images of size px."""
    rng = np.random.default_rng(seed)
    for class_index, wnid in enumerate(WNIDS):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        base = np.roll(np.array([200.0, 70.0, 40.0]), class_index) + 10 * class_index
        for number in range(per_class):
            pixels = base + rng.normal(0, 30, size=(size, size + 8 * number % 24, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                folder / f"{wnid}_{seed}_{number}.JPEG", quality=90
            )
    return root


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    """DIR/train (4 classes x 16) and DIR/val (4 x 4) class folders of 72 px JPEGs."""
    root = tmp_path_factory.mktemp("tiny-images")
    write_class_folders(root / "train", per_class=16, seed=1)
    write_class_folders(root / "val", per_class=4, seed=2)
    return root


@pytest.fixture
def raw_with_an_undecodable_image(tmp_path) -> Path:
    """RAW/train (4 classes x 4) and RAW/val (4 x 2) class folders plus one .JPEG that is not an
    image."""
    root = tmp_path / "raw-bad"
    write_class_folders(root / "train", per_class=4, seed=3)
    write_class_folders(root / "val", per_class=2, seed=4)
    (root / "train" / WNIDS[1] / f"{WNIDS[1]}_truncated.JPEG").write_bytes(
        b"\xff\xd8\xff\xe0 not a jpeg"
    )
    return root
