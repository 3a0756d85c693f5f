"""The folder backend on tiny class folders: shapes, labels, order, resume."""

from __future__ import annotations

import torch

from pipeline.data import build_loader
from loaderfixtures import NUM_CLASSES, WNIDS, decode_identity, single_rank, tiny_config


def collect(loader):
    seen = []
    for images, labels in loader:
        seen.extend(zip(decode_identity(images), labels.tolist()))
    return seen


def test_train_batches_are_uint8_nchw_with_labels_matching_the_class_folder(tiny_folders):
    loader = build_loader(tiny_config(tiny_folders["train"], tiny_folders["val"]), "train", single_rank())
    assert loader.classes == WNIDS and loader.num_samples == 61 and len(loader) == 61 // 8
    assert loader.class_names[WNIDS[0]].startswith("tench")
    batches = 0
    for images, labels in loader:
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and images.device.type == "cpu"
        for (class_index, _), label in zip(decode_identity(images), labels.tolist()):
            assert class_index == label
        batches += 1
    assert batches == len(loader)


def test_val_reads_every_image_once_in_order_with_a_partial_last_batch(tiny_folders):
    loader = build_loader(tiny_config(tiny_folders["train"], tiny_folders["val"]), "val", single_rank())
    assert len(loader) == 4  # 27 images, batches of 8
    seen = collect(loader)
    assert [identity for identity, _ in seen] == tiny_folders["val_ids"]
    assert all(identity[0] == label for identity, label in seen)


def test_channels_last_is_honoured(tiny_folders):
    cfg = tiny_config(tiny_folders["train"], tiny_folders["val"])
    from pipeline.config import replace

    cfg = replace(cfg, "train", channels_last=True)
    images, _ = next(iter(build_loader(cfg, "val", single_rank())))
    assert images.is_contiguous(memory_format=torch.channels_last)
    cfg = replace(cfg, "train", channels_last=False)
    images, _ = next(iter(build_loader(cfg, "val", single_rank())))
    assert images.is_contiguous()


def test_shuffle_differs_per_epoch_and_repeats_for_the_same_seed(tiny_folders):
    cfg = tiny_config(tiny_folders["train"], tiny_folders["val"])
    first = build_loader(cfg, "train", single_rank())
    second = build_loader(cfg, "train", single_rank())
    epoch0 = [identity for identity, _ in collect(first)]
    first.set_epoch(1)
    epoch1 = [identity for identity, _ in collect(first)]
    assert epoch0 != epoch1
    assert [identity for identity, _ in collect(second)] == epoch0


def test_resume_mid_epoch_yields_exactly_the_remaining_batches_with_workers(tiny_folders):
    cfg = tiny_config(tiny_folders["train"], tiny_folders["val"], num_workers=2)
    loader = build_loader(cfg, "train", single_rank())
    loader.set_epoch(2)
    whole = [images.clone() for images, _ in loader]
    loader.set_epoch(2, start_batch=3)
    assert len(loader) == len(whole) - 3
    resumed = [images.clone() for images, _ in loader]
    assert len(resumed) == len(whole) - 3
    for expected, got in zip(whole[3:], resumed):
        assert torch.equal(expected, got)  # same files, same crops and flips
    assert NUM_CLASSES == len(loader.classes)
