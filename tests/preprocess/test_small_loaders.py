"""32 px CIFAR samples load at 224 px through pipeline.data.build_loader with the settings of
configs/cifar100_alexnet.yaml (RandomResizedCrop from 32 px, val 256 → 224), on the folder,
wds and DALI (fn.readers.webdataset, CPU decode) backends, each image with its own label.

    .venv/bin/python -m pytest tests/preprocess/test_small_loaders.py -q
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from smallfixtures import build_cifar

from pipeline.config import load_config
from pipeline.data import build_loader, resolve_classes
from pipeline.data.transforms import val_geometry
from pipeline.distributed import DistInfo
from pipeline.models import check_input_sizes
from preprocess.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cifar100_alexnet.yaml"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    cifar = build_cifar(root / "raw", "cifar100", train_per_class=1, test_per_class=1)
    assert main(["prepare", str(cifar.path), str(root / "out"), "--shard-size", "32"]) == 0
    return root / "out", cifar


def nearest_label(image: torch.Tensor, originals: np.ndarray, labels: np.ndarray) -> int:
    """The label of the 32 px original whose val box (what resize 256 + center crop 224 reads)
    is closest to a loaded image shrunk back to that box's size."""
    left, top, right, bottom = (round(v) for v in val_geometry(32, 32, 256, 224))  # (2, 2, 30, 30)
    boxes = originals[:, top:bottom, left:right].astype(np.float32)  # [N, 28, 28, 3]
    small = (
        torch.nn.functional.interpolate(image[None].float(), size=boxes.shape[1:3], mode="area")[0]
        .permute(1, 2, 0)
        .numpy()
    )
    distances = ((boxes - small[None]) ** 2).mean(axis=(1, 2, 3))
    return int(labels[int(distances.argmin())])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["folder", "wds", pytest.param("dali", marks=pytest.mark.dali)])
def test_cifar100_loads_at_224_from_32_px_with_the_write_ups_settings(prepared, backend):
    out, cifar = prepared
    base = out / "folders" if backend == "folder" else out
    config = load_config(
        CONFIG,
        [
            f"data.backend={backend}",
            f"data.train_dir={base / 'train'}",
            f"data.val_dir={base / 'val'}",
            "data.global_batch_size=25",
            "data.num_workers=0",
            "data.pin_memory=false",
            "train.channels_last=false",
            "train.device=cpu",
            "data.dali_decode=cpu",  # DALI's CPU pipeline here; mixed (nvJPEG) needs a GPU
        ],
    )
    assert (config.data.train_crop, config.data.val_resize, config.data.val_crop) == (224, 256, 224)
    check_input_sizes(config)  # the model issue's small-input check passes at 224
    classes = resolve_classes(config)
    assert classes.names[classes.wnids[1]] == "aquarium_fish"  # the real names reach the loaders
    train = build_loader(config, "train", DistInfo(), classes)
    assert train.num_samples == 100 and len(train.classes) == 100 and len(train) == 4
    train.set_epoch(0)
    for images, labels in train:
        assert images.shape == (25, 3, 224, 224) and images.dtype == torch.uint8
        assert labels.min() >= 0 and labels.max() < 100
        assert images.float().std() > 10  # real content, not a blank upsampling
    val = build_loader(config, "val", DistInfo(), classes)
    val.set_epoch(0)
    seen: collections.Counter = collections.Counter()
    for images, labels in val:
        assert images.shape[1:] == (3, 224, 224)
        for image, label in zip(images, labels.tolist()):
            # the 224 px image is an upsampling of the original that carries this label
            assert nearest_label(image, cifar.test.images, cifar.test.labels) == label
            seen[label] += 1
    assert seen == collections.Counter(cifar.test.labels.tolist())  # every val sample once
