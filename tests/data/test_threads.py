"""Loader workers as threads (pipeline/data/threads.py) and the lent ring they decode into
(pipeline/data/batches.py): the same batches, in the same order, as DataLoader worker processes;
no slot written again while anything holds it; errors and early stops."""

from __future__ import annotations

import threading

import pytest
import torch
from loaderfixtures import single_rank, tiny_config
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data import build_loader
from pipeline.data import threads as threads_module
from pipeline.data.batches import BatchBuffers
from pipeline.data.threads import run_round_robin
from pipeline.errors import ConfigError


def test_a_lent_slot_is_never_handed_out_again_while_anything_holds_it():
    buffers = BatchBuffers(slots=2, lend=True)
    held = []
    for number in range(5):  # the loop keeps every batch: more than the ring's slots
        images, labels = buffers.next(4, 8)
        images.fill_(number)
        labels.fill_(number)
        held.append((images.permute(0, 3, 1, 2), labels))
    assert len({images.data_ptr() for images, _ in held}) == 5
    assert [int(images.float().mean()) for images, _ in held] == [0, 1, 2, 3, 4]
    assert [int(labels[0]) for _, labels in held] == [0, 1, 2, 3, 4]
    del images, labels  # the loop's own names for the last batch
    released = held.pop(1)[0].data_ptr()
    again = buffers.next(4, 8)  # the one slot nothing holds now
    assert again[0].data_ptr() == released
    del again
    held.clear()
    buffers.next(4, 8)
    assert len(buffers.ring) == 2  # the extras go once they come back


def test_a_slot_dropped_by_the_loop_is_reused_and_only_a_view_keeps_it_held():
    buffers = BatchBuffers(slots=2, lend=True)
    first, _ = buffers.next(4, 8)
    pointer = first.data_ptr()
    view = first[1:3].numpy()  # any view, numpy's included, holds the slot
    del first
    second, _ = buffers.next(4, 8)
    assert second.data_ptr() != pointer
    del view, second
    third, _ = buffers.next(4, 8)
    assert third.data_ptr() == pointer


class _Streams(IterableDataset):
    """Worker w of N yields (w, k) for k < lengths[w]: unequal streams."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths

    def __iter__(self):
        info = get_worker_info()
        return self.stream(info.id)

    def stream(self, worker: int):
        return iter([torch.tensor([worker, number]) for number in range(self.lengths[worker])])


@pytest.mark.parametrize("threads", [None, 1, 2])  # one a stream; streams sharing threads
@pytest.mark.parametrize("lengths", [[3, 3], [4, 2, 3], [0, 2], [1, 5, 0], [3, 1, 2], [3, 3, 1, 3]])
def test_threads_take_the_streams_in_a_dataloaders_order_an_exhausted_one_leaving_the_cycle(
    lengths, threads
):
    dataset = _Streams(lengths)
    loader = DataLoader(dataset, batch_size=None, num_workers=len(lengths), prefetch_factor=2)
    expected = [tuple(item.tolist()) for item in loader]
    streams = [lambda worker=worker: dataset.stream(worker) for worker in range(len(lengths))]
    got = [tuple(item.tolist()) for item in run_round_robin(streams, prefetch=2, threads=threads)]
    assert got == expected
    assert sorted(got) == sorted((w, k) for w, n in enumerate(lengths) for k in range(n))


@pytest.mark.parametrize("threads", [None, 1])
def test_an_error_in_a_thread_is_raised_in_the_loop_and_every_thread_ends(threads):
    def failing():
        yield 1
        raise ValueError("sample 7 does not decode")

    def endless():
        number = 0
        while True:
            number += 1
            yield number

    seen = 0
    with pytest.raises(ValueError, match="sample 7 does not decode"):
        for _ in run_round_robin([failing, endless], prefetch=2, name="probe", threads=threads):
            seen += 1
    assert seen == 2  # failing's 1, endless's 1, then failing's turn raises
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("probe-")]


def epoch_batches(loader, epoch: int, start_batch: int = 0) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch, start_batch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_threads_give_worker_processes_batches_in_order_across_epochs_and_a_resume(
    request, layout, workers, monkeypatch
):
    # two CPUs, wherever this runs: 3 workers are then 3 streams on 2 threads
    monkeypatch.setattr(threads_module, "_cpus", lambda: 2)
    paths = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    runs = {}
    for kind in ("threads", "processes"):
        cfg = tiny_config(
            paths["train"], paths["val"], backend=backend, num_workers=workers, worker_kind=kind
        )
        loader = build_loader(cfg, "train", single_rank())
        assert loader.workers.threads == (kind == "threads") and loader.lends == (kind == "threads")
        assert loader.workers.thread_count == max(1, min(workers, 2))
        runs[kind] = [epoch_batches(loader, epoch) for epoch in range(2)]
        runs[kind].append(epoch_batches(loader, 1, start_batch=1))
    for part, (threads, processes) in enumerate(zip(runs["threads"], runs["processes"])):
        assert len(threads) == len(processes) > 0, part
        for number, ((images, labels), (other_images, other_labels)) in enumerate(
            zip(threads, processes)
        ):
            assert torch.equal(labels, other_labels), f"part {part} batch {number} labels"
            assert torch.equal(images, other_images), f"part {part} batch {number} pixels"


@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
def test_roi_decode_off_takes_pillows_path_in_worker_processes_within_the_stated_tolerance(
    request, layout
):
    paths = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    batches = {}
    for roi in (True, False):
        cfg = tiny_config(
            paths["train"], paths["val"], backend=backend, num_workers=2, roi_decode=roi
        )
        loader = build_loader(cfg, "train", single_rank())
        assert (
            loader.workers.threads == roi
        )  # auto: Pillow's decode holds the GIL longer: processes
        batches[roi] = epoch_batches(loader, 1)
    assert len(batches[True]) == len(batches[False]) > 0
    for (images, labels), (pillow_images, pillow_labels) in zip(batches[True], batches[False]):
        assert torch.equal(labels, pillow_labels)  # the same samples, in the same order
        difference = (images.int() - pillow_images.int()).abs()
        assert difference.float().mean() < 0.1 and difference.max() <= 3  # tests/data/test_jpeg.py


@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
def test_a_loop_that_drops_each_batch_keeps_the_lent_ring_at_its_size_across_epochs(
    request, layout
):
    from pipeline.data.threads import lent_slots

    paths = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    cfg = tiny_config(paths["train"], paths["val"], backend=backend, num_workers=2)
    loader = build_loader(cfg, "train", single_rank())
    buffers = loader.dataset.buffers if backend == "folder" else loader.stream.buffers
    pointers = set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        for images, _ in loader:
            pointers.add(images.data_ptr())
    assert 3 * len(loader) > lent_slots(2, 2)  # more batches than slots: slots were reused
    assert len(pointers) <= len(buffers.ring) <= lent_slots(2, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
def test_on_cuda_the_threads_copy_from_pinned_lent_slots_the_cpu_loaders_very_batches(
    request, layout
):
    """No pin copy: the GPU reads the ring's page-locked slot, which stays held until the copy
    is done (base.InFlightCopies), so no batch is overwritten while in flight."""
    from pipeline.distributed import DistInfo

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; none on this machine")
    paths = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    cfg = tiny_config(paths["train"], paths["val"], backend=backend, num_workers=2)
    gpu = build_loader(cfg, "train", DistInfo(device="cuda:0"))
    cpu = build_loader(cfg, "train", single_rank())
    for epoch in range(3):
        expected = epoch_batches(cpu, epoch)
        got = [(images.cpu(), labels.cpu()) for images, labels in _batches_of(gpu, epoch)]
        assert len(got) == len(expected) > 0
        for (images, labels), (want, want_labels) in zip(got, expected):
            assert torch.equal(labels, want_labels) and torch.equal(images, want)
    buffers = gpu.dataset.buffers if backend == "folder" else gpu.stream.buffers
    assert buffers.pin and all(slot.images.is_pinned() for slot in buffers.ring)


def _batches_of(loader, epoch: int):
    loader.set_epoch(epoch)
    for images, labels in loader:
        torch.cuda._sleep(1_000_000)  # a slow step: copies queue up behind it
        yield images.clone(), labels.clone()


def test_auto_runs_threads_only_with_the_roi_decoder_no_auto_augment_and_few_workers():
    from pipeline.config import build_config
    from pipeline.data.threads import THREADS_UP_TO, use_threads

    def data(**values):
        return build_config({"data": values}).data

    assert use_threads(data(num_workers=THREADS_UP_TO), roi_available=True)
    assert use_threads(data(num_workers=0), roi_available=True)
    assert not use_threads(data(num_workers=THREADS_UP_TO + 1), roi_available=True)  # the GIL
    assert not use_threads(data(num_workers=2), roi_available=False)  # Pillow's whole decode
    assert not use_threads(data(num_workers=2, roi_decode=False), roi_available=True)
    assert not use_threads(data(num_workers=2, auto_augment="trivial"), roi_available=True)
    assert use_threads(data(num_workers=32, worker_kind="threads"), roi_available=False)
    assert not use_threads(data(num_workers=1, worker_kind="processes"), roi_available=True)
    # auto-augment seeds torch's global generator per sample: threads would share it
    with pytest.raises(ConfigError, match="worker_kind=threads cannot run data.auto_augment"):
        use_threads(data(worker_kind="threads", auto_augment="trivial"), roi_available=True)


def test_worker_threads_need_a_prefetch_of_at_least_one_batch(tiny_folders):
    cfg = tiny_config(tiny_folders["train"], tiny_folders["val"], num_workers=2, prefetch_factor=0)
    with pytest.raises(ConfigError, match="data.prefetch_factor must be >= 1"):
        build_loader(cfg, "train", single_rank())
