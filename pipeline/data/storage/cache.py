"""The node-local shard cache: a folder with a byte bound, whole-shard LRU eviction, atomic
fill, and one download per shard per node.

    cache = ShardCache(Path("/tmp/shards"), bound_bytes=50 * 10**9)
    path = cache.acquire("imagenet-train-000042.tar", entry.bytes, fill)   # pinned
    ...                                                                      # read it
    cache.release("imagenet-train-000042.tar")

Layout: `NAME` is a complete, verified shard (it only ever appears by rename); `.NAME.part` is
one being filled; `.locks/NAME.lock` is its lock file; `.locks/cache.lock` guards eviction.

Sharing between the ranks (and loader workers) of one node is a per-shard `flock`, not one
fetcher per node: torchrun's ranks are independent processes with no extra daemon, and the
kernel drops a dead process's locks, so a crash never wedges the others. A filler holds the
shard's lock exclusively; the others block on it and then find the file complete. A reader
keeps a shared lock while it uses the shard (a pin); eviction only takes locks with LOCK_NB, so
it never evicts a pinned shard and never waits while holding the cache lock.

LRU order is the files' mtime, touched on every hit (atime is unreliable under relatime).
The bound counts every file in the folder, temp files included: a fill first extends its temp
file to the shard's size (sparse), so concurrent fills reserve their room. When the pinned
shards leave no room, it waits `wait_s` for readers to release some, then says in one line how
large the cache must be.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import LoaderError

LOCKS = ".locks"
CACHE_LOCK = "cache.lock"
GB = 10**9  # data.cache_gb is in decimal gigabytes, as disks are sold


class CacheTooSmallError(LoaderError):
    """The bound cannot hold the shards in flight."""


def temp_name(name: str) -> str:
    return f".{name}.part"


class ShardCache:
    """Whole shards in a node-local folder, bounded, shared by the processes of one node."""

    def __init__(self, directory: Path, bound_bytes: int, wait_s: float = 60.0) -> None:
        self.directory = Path(directory)
        self.bound_bytes = bound_bytes
        self.wait_s = wait_s  # how long a fill waits for pinned shards to be released
        (self.directory / LOCKS).mkdir(parents=True, exist_ok=True)
        self.pins: dict[str, int] = {}  # name -> fd holding LOCK_SH, this process's pins
        self.pins_lock = threading.Lock()  # the prefetcher's thread and the reader share pins
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self.remove_stale_temps()

    def path(self, name: str) -> Path:
        return self.directory / name

    def _lock_fd(self, name: str) -> int:
        return os.open(self.directory / LOCKS / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def is_complete(self, name: str, size: int) -> bool:
        try:
            return self.path(name).stat().st_size == size
        except FileNotFoundError:
            return False

    def usage(self) -> int:
        """Bytes of every file in the cache folder (complete shards, indexes, temp files)."""
        total = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def remove_stale_temps(self) -> list[str]:
        """Delete temp files that no live process is filling (what a kill -9 left behind)."""
        removed = []
        for temp in self.directory.glob(".*.part"):
            name = temp.name[1 : -len(".part")]
            fd = self._lock_fd(name)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # someone is filling it right now
            else:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
                    removed.append(name)
            finally:
                os.close(fd)
        return removed

    def acquire(self, name: str, size: int, fill: Callable[[BinaryIO, Callable], None]) -> Path:
        """The shard's path in the cache, filled by `fill(sink, restart)` when absent, and
        pinned (never evicted) until `release(name)`. Every process of the node that asks for
        the same shard at once waits for one fill."""
        with self.pins_lock:
            if name in self.pins:
                self._touch(name)
                return self.path(name)
        fd = self._lock_fd(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if self.is_complete(name, size):
                self.hits += 1
                return self._pin(name, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)  # now: the only process filling this shard
            if self.is_complete(name, size):
                self.hits += 1  # another process filled it while we waited
            else:
                self.misses += 1
                self._fill(name, size, fill)
            fcntl.flock(fd, fcntl.LOCK_SH)  # from filler to reader: a pin
            return self._pin(name, fd)
        except BaseException:
            os.close(fd)
            raise

    def _pin(self, name: str, fd: int) -> Path:
        self._touch(name)
        with self.pins_lock:
            if name in self.pins:
                os.close(fd)  # another thread of ours pinned it meanwhile
            else:
                self.pins[name] = fd
        return self.path(name)

    def release(self, name: str) -> None:
        """Unpin a shard (it stays cached until evicted)."""
        with self.pins_lock:
            fd = self.pins.pop(name, None)
        if fd is not None:
            os.close(fd)

    def release_all(self) -> None:
        for name in list(self.pins):
            self.release(name)

    def store_small(self, name: str, data: bytes) -> Path:
        """A small file beside the shards (a DALI index), written atomically."""
        path = self.path(name)
        temp = self.directory / f".{name}.{os.getpid()}.tmp"
        temp.write_bytes(data)
        os.replace(temp, path)
        return path

    def _touch(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(name))

    def _fill(self, name: str, size: int, fill: Callable[[BinaryIO, Callable], None]) -> None:
        temp = self.directory / temp_name(name)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()  # a stale one: we hold the shard's exclusive lock
        self._reserve(name, size, temp)
        try:
            with open(temp, "r+b") as sink:

                def restart() -> None:
                    sink.seek(0)
                    sink.truncate(size)

                try:
                    fill(sink, restart)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    raise CacheTooSmallError(
                        f"shard cache {self.directory}: the disk filled up while writing {name}: "
                        f"set data.cache_gb below the free space of that disk, or point "
                        "data.cache_dir at a larger one"
                    ) from None
                if sink.tell() != size:
                    raise AssertionError(f"{name}: filled {sink.tell()} bytes, expected {size}")
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temp, self.path(name))  # now: complete, and only now visible
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise

    def _reserve(self, name: str, size: int, temp: Path) -> None:
        """Make room for `size` bytes (evicting unpinned shards, least recently used first) and
        claim it with a sparse temp file of that size."""
        if size > self.bound_bytes:
            raise self._too_small(name, size, pinned=0)
        deadline = time.monotonic() + self.wait_s
        lock = os.open(self.directory / LOCKS / CACHE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    free = self.bound_bytes - self.usage()
                    if free < size:
                        free += self._evict(size - free, keep=name)
                    if free >= size:
                        with open(temp, "wb") as handle:
                            handle.truncate(size)
                        return
                    pinned = self.usage()
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
                if time.monotonic() >= deadline:
                    raise self._too_small(name, size, pinned)
                time.sleep(0.2)  # now: wait for other readers to release their shards
        finally:
            os.close(lock)

    def _evict(self, needed: int, keep: str) -> int:
        """Delete unpinned complete shards, oldest use first, until `needed` bytes are free;
        returns the bytes freed. Called under the cache lock."""
        candidates = []
        for path in self.directory.iterdir():
            if path.name.startswith(".") or path.name == keep or path.suffix == ".idx":
                continue
            with contextlib.suppress(FileNotFoundError):
                candidates.append((path.stat().st_mtime_ns, path.name))
        freed = 0
        for _, name in sorted(candidates):
            if freed >= needed:
                break
            fd = self._lock_fd(name)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # pinned by a reader (ours or another process's), or being filled
            try:
                for victim in (self.path(name), self.path(name[: -len(".tar")] + ".idx")):
                    try:
                        freed += victim.stat().st_size
                        victim.unlink()
                    except FileNotFoundError:
                        pass
                    except OSError as err:
                        if err.errno != errno.ENOENT:
                            raise
                self.evicted += 1
            finally:
                os.close(fd)
        return freed

    def _too_small(self, name: str, size: int, pinned: int) -> CacheTooSmallError:
        needed = (pinned + size) / GB
        return CacheTooSmallError(
            f"shard cache {self.directory}: its bound of {self.bound_bytes / GB:.3g} GB cannot "
            f"hold {name} ({size / 1e6:,.1f} MB) beside the {pinned / 1e6:,.1f} MB of shards in "
            f"flight: set data.cache_gb to at least {needed:.3g} (more to keep shards between "
            "epochs), or prefetch fewer shards; data.cache_gb=0 streams without a cache"
        )
