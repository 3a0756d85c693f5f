"""Reused batch buffers (pipeline/data/batches.py): the ring itself, and the folder and wds
loaders over it, whose batches across epochs and across a resume equal a fresh loader's."""

from __future__ import annotations

import pytest
import torch
from loaderfixtures import single_rank, tiny_config

from pipeline.config import replace
from pipeline.data import build_loader
from pipeline.data.batches import BatchBuffers, ring_slots


def test_the_ring_hands_out_the_same_buffers_again_after_its_slots():
    buffers = BatchBuffers(slots=3)
    first = [buffers.next(4, 16) for _ in range(3)]
    again = [buffers.next(4, 16) for _ in range(3)]
    pointers = [images.data_ptr() for images, _ in first]
    assert len(set(pointers)) == 3
    assert [images.data_ptr() for images, _ in again] == pointers
    images, labels = first[0]
    assert images.shape == (4, 16, 16, 3) and images.dtype == torch.uint8
    assert labels.shape == (4,) and labels.dtype == torch.int64


def test_a_short_batch_is_a_view_of_a_full_slot_and_a_new_size_a_new_ring():
    buffers = BatchBuffers(slots=2)
    full, _ = buffers.next(8, 16)
    short, labels = buffers.next(3, 16)
    assert short.shape == (3, 16, 16, 3) and labels.shape == (3,)
    assert short.untyped_storage().nbytes() == full.untyped_storage().nbytes()
    larger, _ = buffers.next(8, 24)
    assert larger.shape == (8, 24, 24, 3) and len(buffers.ring) == 1


def test_ring_slots_cover_the_batches_a_worker_has_in_flight():
    assert ring_slots(0, None) == 2
    assert ring_slots(2, 2) == 4
    assert ring_slots(8, 4) == 6


def epoch_batches(loader, epoch: int, start_batch: int = 0) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch, start_batch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def assert_same(expected, got, what: str) -> None:
    assert len(expected) == len(got), what
    for number, ((images, labels), (got_images, got_labels)) in enumerate(zip(expected, got)):
        assert torch.equal(labels, got_labels), f"{what}: batch {number} labels"
        assert torch.equal(images, got_images), f"{what}: batch {number} pixels"


@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
@pytest.mark.parametrize("workers", [0, 2])
def test_reused_buffers_give_a_fresh_loaders_batches_across_epochs_and_a_resume(
    request, layout, workers
):
    paths = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    cfg = tiny_config(paths["train"], paths["val"], backend=backend, num_workers=workers)
    reused = build_loader(cfg, "train", single_rank())
    epochs = [epoch_batches(reused, epoch) for epoch in range(3)]
    resumed = epoch_batches(reused, 1, start_batch=2)  # back to an earlier epoch, mid-way
    for epoch, batches in enumerate(epochs):
        fresh = build_loader(cfg, "train", single_rank())
        assert_same(epoch_batches(fresh, epoch), batches, f"epoch {epoch}")
    assert_same(epochs[1][2:], resumed, "epoch 1 resumed at batch 2")


@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
def test_batches_held_on_the_host_are_not_overwritten_by_later_batches(request, layout):
    """channels_last on the CPU makes no copy on the way out: the loader clones, so a list of
    every batch of an epoch (more than the ring's slots) stays intact."""
    paths = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    cfg = tiny_config(paths["train"], paths["val"], backend=backend, num_workers=2)
    cfg = replace(cfg, "train", channels_last=True)
    loader = build_loader(cfg, "train", single_rank())
    loader.set_epoch(0)
    held = list(loader)
    assert len(held) > ring_slots(2, 2)
    assert held[0][0].is_contiguous(memory_format=torch.channels_last)
    assert_same(epoch_batches(build_loader(cfg, "train", single_rank()), 0), held, "held")
