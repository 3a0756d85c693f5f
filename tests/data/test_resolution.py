"""The train resolution schedule: a pure function of the epoch, honoured by every backend, and
a resume at any batch of an epoch whose size changed decodes the uninterrupted epoch's pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loaderfixtures import single_rank, tiny_config

from pipeline.config import build_config
from pipeline.data import build_loader
from pipeline.data.transforms import train_resolution

BACKENDS = [
    pytest.param(("folder", "folders"), id="folder"),
    pytest.param(("wds", "shards"), id="wds"),
    pytest.param(("dali", "folders"), id="dali-folders", marks=pytest.mark.dali),
    pytest.param(("dali", "shards"), id="dali-shards", marks=pytest.mark.dali),
]

# 16 px for epochs 0 and 1, 24 px in epoch 2 (half-way), 32 px (data.train_crop) from epoch 3 on
RAMP = {"train_crop": 32, "res_start": 16, "res_ramp_start": 1, "res_ramp_end": 3, "res_step": 8}
RAMP_SIZES = [16, 16, 24, 32, 32]


def data_config(**data):
    return build_config({"data": data, "train": {"epochs": 40}}).data


def ffcv_reference(epoch, min_res, max_res, start_ramp, end_ramp, step):
    """FFCV's get_resolution (ffcv-imagenet train_imagenet.py), restated: np.interp, then
    np.round to a multiple of the step."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])[0]
    return int(np.round(interp / step)) * step


def test_the_schedule_gives_ffcv_rn50_24_epoch_sizes_160_until_epoch_18_then_192():
    data = data_config(train_crop=192, res_start=160, res_ramp_start=17, res_ramp_end=20)
    assert [train_resolution(data, epoch) for epoch in range(24)] == [160] * 19 + [192] * 5


@pytest.mark.parametrize(
    ("low", "high", "start", "end", "step"),
    [(160, 192, 17, 20, 32), (128, 224, 5, 30, 32), (160, 256, 0, 13, 32), (96, 224, 2, 9, 16)],
)
def test_the_schedule_matches_ffcv_get_resolution_on_every_epoch(low, high, start, end, step):
    data = data_config(
        train_crop=high, res_start=low, res_ramp_start=start, res_ramp_end=end, res_step=step
    )
    for epoch in range(40):
        assert train_resolution(data, epoch) == ffcv_reference(epoch, low, high, start, end, step)


def test_without_res_start_every_epoch_trains_at_the_train_crop():
    data = data_config(train_crop=176)
    assert {train_resolution(data, epoch) for epoch in range(40)} == {176}


def test_a_ramp_between_sizes_off_the_step_never_leaves_the_range():
    # 100 → 210 in steps of 64: the nearest multiples (64, 128, 192, 256) would undershoot and
    # overshoot; the schedule keeps every size inside [100, 210] and never decreases
    data = data_config(train_crop=210, res_start=100, res_ramp_start=0, res_ramp_end=8, res_step=64)
    sizes = [train_resolution(data, epoch) for epoch in range(10)]
    assert sizes[0] == 100 and sizes[-1] == 210
    assert all(100 <= size <= 210 for size in sizes)
    assert sizes == sorted(sizes) and set(sizes) == {100, 128, 192, 210}


def ramp_config(textured_data, backend, layout, **data):
    paths = textured_data[layout]
    values = {**RAMP, "val_resize": 36, "val_crop": 32, **data}
    return tiny_config(paths["train"], paths["val"], backend=backend, **values)


def epoch_batches(loader, epoch, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


@pytest.mark.parametrize("setup", BACKENDS)
def test_every_train_batch_has_its_epochs_size_and_val_keeps_its_own(textured_data, setup):
    backend, layout = setup
    cfg = ramp_config(textured_data, backend, layout, num_workers=2)
    train = build_loader(cfg, "train", single_rank())
    for epoch, size in enumerate(RAMP_SIZES):
        shapes = {tuple(images.shape) for images, _ in epoch_batches(train, epoch)}
        assert shapes == {(8, 3, size, size)}, (epoch, shapes)
    val = build_loader(cfg, "val", single_rank())
    for epoch in (0, 2):
        val.set_epoch(epoch)
        assert {tuple(images.shape[1:]) for images, _ in val} == {(3, 32, 32)}


@pytest.mark.parametrize("setup", BACKENDS)
@pytest.mark.parametrize("auto_augment", ["none", "trivial"])
def test_a_resume_at_any_batch_of_the_epoch_where_the_size_changes_decodes_the_same_pixels(
    textured_data, setup, auto_augment
):
    """The uninterrupted run reads epoch 1 (16 px), then epoch 2 (24 px); a fresh loader, as
    after a restart, starts epoch 2 at batch k. Textured images: a redrawn crop, flip, op or
    size would change the pixels."""
    backend, layout = setup
    cfg = ramp_config(textured_data, backend, layout, auto_augment=auto_augment)
    uninterrupted = build_loader(cfg, "train", single_rank())
    epoch_batches(uninterrupted, 1)
    whole = epoch_batches(uninterrupted, 2)
    assert len(whole) == 5 and whole[0][0].shape[-1] == 24
    for start_batch in range(len(whole)):
        resumed = epoch_batches(build_loader(cfg, "train", single_rank()), 2, start_batch)
        assert len(resumed) == len(whole) - start_batch
        for (expected, expected_labels), (got, got_labels) in zip(whole[start_batch:], resumed):
            assert torch.equal(expected_labels, got_labels)
            assert torch.equal(expected, got), (backend, start_batch)


@pytest.mark.parametrize("setup", BACKENDS)
def test_a_resume_with_workers_decodes_the_same_pixels_as_the_uninterrupted_epoch(
    textured_data, setup
):
    backend, layout = setup
    cfg = ramp_config(textured_data, backend, layout, num_workers=2, auto_augment="imagenet")
    loader = build_loader(cfg, "train", single_rank())
    epoch_batches(loader, 1)
    whole = epoch_batches(loader, 2)
    resumed = epoch_batches(build_loader(cfg, "train", single_rank()), 2, 3)
    assert [images.shape[-1] for images, _ in resumed] == [24, 24]
    for (expected, _), (got, _) in zip(whole[3:], resumed):
        assert torch.equal(expected, got)
