"""The bounded process pool every parallel command uses: resize, shard and verify.

    from preprocess.parallel import iter_chunks, run_bounded
    for results in run_bounded(work_on_chunk, iter_chunks(jobs, 16), workers=8):
        ...   # one list per chunk, in submission order

Workers receive small jobs (paths, never pixels) in chunks, and at most a few chunks per worker
are queued at a time, so memory stays flat for 1.28 M images or a streamed 140 GB tar.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def iter_chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last may hold fewer), read lazily from `items`."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def pool_context() -> multiprocessing.context.BaseContext:
    """fork where the platform has it: workers start in milliseconds with everything imported.

    The parent holds no threads when the pool starts (progress bars run without tqdm's monitor
    thread), which is what makes fork safe; torch's DataLoader forks its workers the same way.
    spawn/forkserver would re-import numpy and PIL per worker and re-run an unguarded __main__.
    """
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_bounded(
    function: Callable[[Any], list[Any]],
    chunks: Iterable[Any],
    workers: int,
    in_flight_per_worker: int = 4,
) -> Iterator[list[Any]]:
    """Map `function` over `chunks` in a process pool, at most workers x 4 chunks queued at a time.

    Pool.imap would read the whole input ahead (all of a 140 GB tar stream); this never holds
    more than a few chunks. Results come back in submission order. workers == 1 runs inline.
    """
    if workers == 1:
        for chunk in chunks:
            yield function(chunk)
        return
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        return  # nothing to do: no pool to start
    with pool_context().Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        for chunk in itertools.chain([first], iterator):
            pending.append(pool.apply_async(function, (chunk,)))
            while len(pending) >= workers * in_flight_per_worker:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
