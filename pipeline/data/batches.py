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

Lending (`lend=True`, for loader threads in the training process, pipeline/data/threads.py):
the batch is handed to the training loop without a copy, so a slot is written again only once
nothing outside the ring references it: `next` skips a slot whose storage is still held (its
use count above the ring's own references, as torch counts them: the training loop's views,
a list of old batches) and allocates another when every slot is held, dropping the extras
once they come back. Nothing relies on timing, so the loop may keep batches as long as it likes.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import torch
from torch.utils.data import get_worker_info


def ring_slots(num_workers: int, prefetch_factor: int | None) -> int:
    """Buffers per worker: the batches in flight (prefetch_factor), the one the main process is
    copying, and one of margin. In the main process (0 workers) a batch is consumed before the
    next is built: 2."""
    if num_workers == 0:
        return 2
    return (prefetch_factor or 2) + 2


@dataclasses.dataclass(eq=False)  # slots compare by identity
class _Slot:
    images: torch.Tensor  # uint8 [capacity, size, size, 3]
    labels: torch.Tensor  # int64 [capacity]
    storages: tuple  # the two untyped storages, held so that their use counts are stable
    baseline: tuple[int, ...] = ()  # their use counts with only the ring referencing them

    def held(self) -> bool:
        """Whether anything outside the ring still references this slot's memory."""
        return _use_counts(self.storages) != self.baseline


def _use_counts(storages: tuple) -> tuple[int, ...]:
    return tuple(torch._C._storage_Use_Count(storage._cdata) for storage in storages)


class BatchBuffers:
    """A ring of reusable (uint8 [B, S, S, 3], int64 [B]) batch buffers for this process."""

    def __init__(self, slots: int, lend: bool = False, pin: bool = False) -> None:
        assert slots >= 2, f"a ring needs at least 2 slots, got {slots}"
        self.slots = slots
        self.lend = lend  # hand slots out without a copy, reuse only those no longer held
        self.pin = pin  # page-locked slots (lending on CUDA): copied to the GPU as they are
        self.key: tuple[int, int] = (0, 0)  # (images per slot, size) of the ring held
        self.ring: list[_Slot] = []
        self.position = 0
        self.lock = threading.Lock()  # lending: loader threads share one ring
        self.owner = os.getpid()  # a forked worker starts with its own (empty) ring

    def __getstate__(self) -> dict:
        # a spawned worker gets the settings, never the parent's buffers
        return {"slots": self.slots, "lend": self.lend, "pin": self.pin}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["slots"], state.get("lend", False), state.get("pin", False))

    def next(self, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (images uint8 [count, size, size, 3], labels int64 [count]) slot of the
        ring, its old contents left in place (every sample is written over). A short batch (an
        epoch's last) is a leading view of a full slot."""
        if self.owner != os.getpid():
            self.__init__(self.slots, self.lend, self.pin)
        with self.lock:
            capacity, held_size = self.key
            if held_size != size or count > capacity:
                self.key, self.ring, self.position = (max(count, capacity), size), [], 0
            slot = self._lent_slot() if self.lend else self._rotating_slot()
            return slot.images[:count], slot.labels[:count]

    def _rotating_slot(self) -> _Slot:
        if len(self.ring) < self.slots:
            self.ring.append(_allocate(*self.key, self.pin))
        slot = self.ring[self.position % len(self.ring)]
        self.position = (self.position + 1) % self.slots
        return slot

    def _lent_slot(self) -> _Slot:
        """The first slot that nothing holds any more, from the one after the last handed out,
        or a new one; then free slots beyond `slots` are dropped."""
        for offset in range(len(self.ring)):
            slot = self.ring[(self.position + offset) % len(self.ring)]
            if not slot.held():
                break
        else:
            slot = _allocate(*self.key, self.pin)
            self.ring.append(slot)
        if len(self.ring) > self.slots:
            spare = [other for other in self.ring if other is not slot and not other.held()]
            for extra in spare[: len(self.ring) - self.slots]:
                self.ring.remove(extra)
        self.position = (self.ring.index(slot) + 1) % len(self.ring)
        return slot


def _allocate(batch_size: int, size: int, pin: bool = False) -> _Slot:
    """One slot: in shared memory inside a DataLoader worker (so sending it copies nothing),
    page-locked where `pin` (the training process, on CUDA), else ordinary memory."""
    images = torch.empty((batch_size, size, size, 3), dtype=torch.uint8, pin_memory=pin)
    labels = torch.empty(batch_size, dtype=torch.int64, pin_memory=pin)
    if get_worker_info() is not None:
        images.share_memory_()
        labels.share_memory_()
    slot = _Slot(images, labels, (images.untyped_storage(), labels.untyped_storage()))
    slot.baseline = _use_counts(slot.storages)
    return slot
