"""The prediction grid's val samples: a spread over the val set, not its first batch."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from pipeline.config import build_config
from pipeline.data import build_loader
from pipeline.distributed import DistInfo
from pipeline.evaluate import evaluate


def test_prediction_examples_spread_over_class_ordered_val_folders(tiny_data):
    """17 val images in class order (5, 4, 4, 4) in batches of 4: 4 examples are one per class,
    not 4 of class 0."""
    cfg = build_config(
        {
            "data": {
                "backend": "folder",
                "train_dir": str(tiny_data / "train"),
                "val_dir": str(tiny_data / "val"),
                "global_batch_size": 4,
                "num_workers": 0,
                "train_crop": 64,
                "val_resize": 72,
                "val_crop": 64,
            },
            "train": {"device": "cpu", "channels_last": False},
        }
    )
    dist = DistInfo()
    loader = build_loader(cfg, "val", dist)
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    output = evaluate(model, loader, 4, dist, contextlib.nullcontext, keep_examples=4)
    images, labels, predictions = output.examples
    assert labels.tolist() == [0, 1, 2, 3]
    assert (
        images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8 and predictions.shape == (4,)
    )
    assert output.result.num_samples == 17
    everything = evaluate(model, loader, 4, dist, contextlib.nullcontext, keep_examples=32).examples
    assert (
        everything[1].tolist() == [0] * 5 + [1] * 4 + [2] * 4 + [3] * 4
    )  # fewer samples than kept: all of them
