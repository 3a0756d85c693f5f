"""A background prefetcher: fetches the next shards of a rank's plan into the cache ahead of
the reader, never more than `depth` shards ahead.

    prefetcher = Prefetcher(source.local_path, depth=2)
    prefetcher.start(["imagenet-train-000007.tar", "imagenet-train-000003.tar", ...])
    path = prefetcher.get("imagenet-train-000007.tar")   # waits for it; the window moves on

One thread, in plan order: the reader needs shards in that order, and a node's bandwidth is
shared with the other ranks' prefetchers, so fetching one shard at a time per rank keeps the
next shard arriving soonest. An error (a missing object, a refused shard) is kept and raised
by `get` for that shard, in the reader, with its one-line message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path


class Prefetcher:
    def __init__(self, fetch: Callable[[str], Path], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.fetch = fetch
        self.depth = depth  # shards fetched ahead of the one the reader last asked for
        self.condition = threading.Condition()
        self.names: list[str] = []
        self.futures: dict[str, Future] = {}
        self.consumed = 0  # plan positions before this one were handed to the reader
        self.closed = False
        self.thread: threading.Thread | None = None

    def start(self, names: list[str]) -> Prefetcher:
        """Begin fetching `names` (a rank's shards in reading order) in the background."""
        with self.condition:
            self.names = list(names)
            self.futures = {name: Future() for name in self.names}
        self.thread = threading.Thread(target=self._run, name="shard-prefetch", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        for position, name in enumerate(self.names):
            with self.condition:
                # bounded: at most `depth` shards beyond the one the reader is on
                while not (self.closed or position < self.consumed + self.depth):
                    self.condition.wait()
                if self.closed:
                    return
            future = self.futures[name]
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.fetch(name))
            except BaseException as err:  # noqa: BLE001 - handed to the reader by get()
                future.set_exception(err)

    def get(self, name: str) -> Path:
        """The shard's local path, once fetched (by the prefetcher, or here if it is not in the
        plan); moves the window past it."""
        future = self.futures.get(name)
        if future is None:
            return self.fetch(name)
        with self.condition:
            self.consumed = max(self.consumed, self.names.index(name) + 1)
            self.condition.notify_all()
        return future.result()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify_all()
        if self.thread is not None:
            self.thread.join()
