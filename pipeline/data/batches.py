"""Batch buffers allocated once per process and reused: what the folder and wds backends decode
into, so a batch costs no allocation, no fresh shared-memory segment and no per-sample array.

    buffers = BatchBuffers(slots=ring_slots(num_workers, prefetch_factor))
    images, labels = buffers.next(len(samples), size)   # uint8 [B, S, S, 3], int64 [B]
    pixels = images.numpy()
    for position, sample in enumerate(samples):
        decode_train(sample, aug, rng, size, out=pixels[position])
        labels[position] = label

Why a ring, and why this many slots: a DataLoader worker used to build each batch in a new shared-
memory segment (~9.6 MB at 224 px, batch 64) that it touched page by page and the main process
mapped anew. A worker now rotates through `slots` buffers of its batch size and current size,
mapped once on each side (torch's receive side caches shared storages by file descriptor). The
DataLoader asks a worker for at most `prefetch_factor` batches ahead of the one the main process
last received, so a slot is written again only after `prefetch_factor + 1` later batches of that
worker were asked for: by then the main process has copied the batch (pinned or to the device, or a
clone in `Loader.__iter__` where the batch would otherwise stay on the host). `ring_slots` keeps
one slot of margin on top.

One size is held at a time: a resolution ramp's new size drops the old ring (the main process
keeps whatever it still references alive).
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import get_worker_info


def ring_slots(num_workers: int, prefetch_factor: int | None) -> int:
    """Buffers per worker: the batches in flight (prefetch_factor), the one the main process is
    copying, and one of margin. In the main process (0 workers) a batch is consumed before the
    next is built: 2."""
    if num_workers == 0:
        return 2
    return (prefetch_factor or 2) + 2


class BatchBuffers:
    """A ring of reusable (uint8 [B, S, S, 3], int64 [B]) batch buffers for this process."""

    def __init__(self, slots: int) -> None:
        assert slots >= 2, f"a ring needs at least 2 slots, got {slots}"
        self.slots = slots
        self.key: tuple[int, int] = (0, 0)  # (images per slot, size) of the ring held
        self.ring: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.position = 0
        self.owner = os.getpid()  # a forked worker starts with its own (empty) ring

    def __getstate__(self) -> dict:
        # a spawned worker gets the settings, never the parent's buffers
        return {"slots": self.slots}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["slots"])

    def next(self, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (images uint8 [count, size, size, 3], labels int64 [count]) slot of the
        ring, its old contents left in place (every sample is written over). A short batch (an
        epoch's last) is a leading view of a full slot."""
        if self.owner != os.getpid():
            self.__init__(self.slots)
        capacity, held_size = self.key
        if held_size != size or count > capacity:
            self.key, self.ring, self.position = (max(count, capacity), size), [], 0
        if len(self.ring) < self.slots:
            self.ring.append(_allocate(self.key[0], size))
        images, labels = self.ring[self.position % len(self.ring)]
        self.position = (self.position + 1) % self.slots
        return images[:count], labels[:count]


def _allocate(batch_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One slot: in shared memory inside a DataLoader worker (so sending it copies nothing),
    ordinary memory in the main process."""
    images = torch.empty((batch_size, size, size, 3), dtype=torch.uint8)
    labels = torch.empty(batch_size, dtype=torch.int64)
    if get_worker_info() is not None:
        images.share_memory_()
        labels.share_memory_()
    return images, labels
