"""Loader workers as threads of the training process: the folder and wds backends' default.

    streams = [lambda worker=worker: batches_of(worker) for worker in range(num_workers)]
    for images, labels, keys in run_round_robin(streams, prefetch=4):
        ...

Why threads (docs/BENCHMARKS.md, issue 18): the ROI decoder (pipeline/data/_jpeg.c) releases the
GIL for the whole decode + crop + resize, which is ~90 % of a sample's CPU, so N threads decode in
parallel. What a DataLoader worker process adds per batch is gone: no shared-memory segment
passed by file descriptor, no pickling, and above all no copy of the batch on the way out (a
worker's reused slot had to be copied before the next one overwrote it; a thread's slot is lent,
pipeline/data/batches.py). Processes stay available (`data.worker_kind=processes`) and are what
`auto` picks for auto_augment, whose Pillow ops run mostly in Python under the GIL.

Order: batch j of an epoch comes from worker j % N, exactly as a DataLoader over the same
streams orders them (an exhausted worker leaves the cycle), so a run, its resume and its
per-batch keys are the same with threads or processes. The N worker streams run on at most one
thread per CPU of the process (`Workers.thread_count`): more workers than cores share threads,
each thread building its streams' batches in the order the loop takes them. Each worker runs at
most `prefetch` batches ahead of the training loop. An error in a worker is raised in the loop,
unchanged. A loop that stops early (a benchmark's time limit, `max_steps`, an exception) stops
the workers: each closes its stream (files, shard readers) and ends.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.config import DataConfig
from pipeline.data import jpeg
from pipeline.data.batches import BatchBuffers, ring_slots
from pipeline.errors import ConfigError

Batch = TypeVar("Batch")

_END = object()  # a worker's stream is exhausted
_POLL_S = 0.1  # how often a worker blocked on a full queue looks for the stop signal


class _Failure:
    """An exception raised in a worker, carried to the loop. A user error keeps its one-line
    message; where it was raised goes to `.worker_report` (as a worker process's report does,
    core/errors.py)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        if hasattr(error, "worker_report"):
            error.worker_report = (
                f"Raised in loader thread {threading.current_thread().name}:\n"
                + "".join(traceback.format_exception(error))
            )


# `auto` runs at most this many workers as threads. Each image holds the GIL ~0.03 ms (the draws,
# the header probe, the file read's Python; 0.45 ms with the decode, docs/BENCHMARKS.md), so
# N threads keep it busy ~N x 7 % of the time at full speed: 6 leave the training loop more than
# half of it. More workers run as processes, each with a GIL of its own.
THREADS_UP_TO = 6


def use_threads(data: DataConfig, roi_available: bool) -> bool:
    """Whether the folder/wds workers are threads (`data.worker_kind`; `auto`: threads where the
    ROI decoder is built and used, no auto-augment runs in Python and there are at most
    THREADS_UP_TO workers)."""
    if data.worker_kind == "threads" and data.auto_augment != "none":
        raise ConfigError(
            f"data.worker_kind=threads cannot run data.auto_augment={data.auto_augment}: its "
            "ops seed torch's global generator, which threads share; use worker_kind=processes "
            "or auto"
        )
    if data.worker_kind != "auto":
        return data.worker_kind == "threads"
    return (
        roi_available
        and data.roi_decode
        and data.auto_augment == "none"
        and data.num_workers <= THREADS_UP_TO
    )


def lent_slots(workers: int, prefetch: int) -> int:
    """Batch slots for a lent ring (pipeline/data/batches.py): each worker's queue (`prefetch`)
    and the batch it is building, plus the loop's current batch and the one before it. More are
    allocated if the loop holds more; this many are kept."""
    return max(1, workers) * (prefetch + 1) + 2


def _cpus() -> int:
    """The CPUs this process may run on (its affinity: a Slurm or container limit shows here)."""
    return len(os.sched_getaffinity(0))


@dataclasses.dataclass
class Workers:
    """How a folder/wds loader runs its `count` workers: threads (`run_round_robin` over a lent
    ring, page-locked on CUDA) or DataLoader processes (a shared-memory ring each)."""

    threads: bool
    count: int  # data.num_workers
    prefetch: int  # batches each worker runs ahead; 0 runs them in the loop
    buffers: BatchBuffers
    data: DataConfig
    device: torch.device

    @classmethod
    def from_config(cls, data: DataConfig, device: torch.device) -> Workers:
        if data.num_workers > 0 and data.prefetch_factor < 1:
            raise ConfigError(
                f"data.prefetch_factor must be >= 1 with data.num_workers={data.num_workers}, "
                f"got {data.prefetch_factor}"
            )
        threads = use_threads(data, jpeg.AVAILABLE)
        count, prefetch = data.num_workers, data.prefetch_factor if data.num_workers > 0 else 0
        buffers = (
            BatchBuffers(
                lent_slots(count, prefetch),
                lend=True,
                pin=data.pin_memory and device.type == "cuda",  # copied to the GPU as they are
            )
            if threads
            else BatchBuffers(ring_slots(count, data.prefetch_factor))
        )
        return cls(threads, count, prefetch, buffers, data, device)

    @property
    def thread_count(self) -> int:
        """The threads that run the `count` worker streams (threads kind): one a stream, up to
        one per CPU this process may run on. Threads beyond the cores only take turns on them and
        on the GIL: 8 on 2 cores cost 1.2-1.3x the CPU per image of 2 (docs/BENCHMARKS.md)."""
        return max(1, min(self.count, _cpus()))

    def run(self, streams: Sequence[Callable[[], Iterator[Batch]]], name: str) -> Iterator[Batch]:
        """The threads kind's pass: `run_round_robin` over the worker streams, `prefetch` batches
        ahead, on `thread_count` threads."""
        return run_round_robin(streams, self.prefetch, name=name, threads=self.thread_count)

    def dataloader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        """The DataLoader of the processes kind (with threads, one that runs in the loop)."""
        processes = 0 if self.threads else self.count
        return DataLoader(
            dataset,
            batch_size=None,  # the dataset returns whole batches
            sampler=sampler,
            num_workers=processes,
            pin_memory=self.data.pin_memory and self.device.type == "cuda" and processes > 0,
            persistent_workers=processes > 0,
            prefetch_factor=self.data.prefetch_factor if processes > 0 else None,
        )


def run_round_robin(
    streams: Sequence[Callable[[], Iterator[Batch]]],
    prefetch: int,
    name: str = "loader",
    threads: int | None = None,
) -> Iterator[Batch]:
    """The batches of streams[0], streams[1], ... in turn, each stream at most `prefetch`
    batches ahead, run by `threads` threads (default: one a stream; fewer share them: thread k
    runs streams k, k + threads, ... in the loop's order). No streams, or prefetch 0: run in
    the caller."""
    if prefetch <= 0:
        for stream in streams:
            yield from stream()
        return
    count = len(streams) if threads is None else max(1, min(threads, len(streams)))
    stop = threading.Event()
    queues = [queue.Queue(maxsize=prefetch) for _ in streams]
    workers = [
        threading.Thread(
            target=_work,
            args=(streams[number::count], queues[number::count], stop),
            name=f"{name}-worker-{number}",
            daemon=True,
        )
        for number in range(count)
    ]
    for worker in workers:
        worker.start()
    try:
        yield from _take_in_turn(queues)
    finally:
        stop.set()
        for box in queues:  # unblock a worker waiting to put
            _drain(box)
        for worker in workers:
            worker.join()


def _take_in_turn(queues: list[queue.Queue]) -> Iterator:
    active = list(range(len(queues)))
    turn = 0  # index into `active` of the worker whose batch comes next
    while active:
        item = queues[active[turn]].get()
        if item is _END:
            active.pop(turn)  # the next worker in the cycle now holds this turn
            turn = turn % len(active) if active else 0
            continue
        if isinstance(item, _Failure):
            raise item.error
        yield item
        del item  # the loop holds the batch, not this frame, while the next one is awaited
        turn = (turn + 1) % len(active)


def _work(
    streams: Sequence[Callable[[], Iterator]], boxes: Sequence[queue.Queue], stop: threading.Event
) -> None:
    """One thread: the next batch of each of its streams in turn, into that stream's queue (the
    order in which the loop takes them, so a full queue never holds up a batch that the loop
    waits for), until every stream has ended or `stop` is set. A stream that raises ends there:
    its error goes to the loop in its turn."""
    batches = []
    try:
        batches = [stream() for stream in streams]
        iterators = [iter(stream_batches) for stream_batches in batches]
        active = list(range(len(iterators)))
        turn = 0  # index into `active`, as in _take_in_turn
        while active:
            number = active[turn]
            ended = True
            try:
                item = next(iterators[number])
                ended = False
            except StopIteration:
                item = _END
            except BaseException as error:  # noqa: BLE001 - carried to the loop and raised there
                item = _Failure(error)
            if not _put(boxes[number], item, stop) or stop.is_set():
                return  # the loop has stopped: build no further batch
            del item  # a lent slot is free once the loop is done with it, not when we next get one
            if ended:
                active.pop(turn)
                turn = turn % len(active) if active else 0
            else:
                turn = (turn + 1) % len(active)
    except BaseException as error:  # noqa: BLE001 - a stream that failed to start
        _put(boxes[0], _Failure(error), stop)
    finally:
        for stream_batches in batches:
            close = getattr(stream_batches, "close", None)
            if close is not None:
                close()  # a generator's finally blocks: open files and readers


def _put(box: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting while the queue is full; False once the loop has stopped."""
    while not stop.is_set():
        try:
            box.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _drain(box: queue.Queue) -> None:
    while True:
        try:
            box.get_nowait()
        except queue.Empty:
            return
