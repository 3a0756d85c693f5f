"""Where a split's shards come from, local or remote, behind one small interface the loaders
read through.

    source = open_shard_source("s3://bucket/imagenet/train", cache_dir=Path("/tmp/c"), cache_gb=50)
    source.manifest                                  # read from the URL
    source.prefetch(names_in_plan_order)             # background, bounded
    path = source.local_path(name)                   # fetch-through-cache; the .idx lies beside
    source.release(name)                             # done with it (it stays cached)
    stream = source.stream(name, start_sample=0, stop_sample=None)   # cache_gb=0: no disk
    source.stats()                                   # bytes, MB/s, time to first byte, hit rate

A local directory gives a `LocalShardSource` with the same methods (paths are the files
themselves, streams are open files), so a backend has one code path for both.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from core.remote import RemoteDir, RetryPolicy, is_remote
from core.shard_format import (
    DaliIndex,
    Manifest,
    ManifestError,
    ShardEntry,
    dali_index_name,
    parse_dali_index,
    read_dali_index,
    read_manifest,
)
from pipeline.data.storage.cache import GB, ShardCache
from pipeline.data.storage.prefetch import Prefetcher
from pipeline.data.storage.stream import VerifiedStream, data_end
from pipeline.errors import LoaderError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceStats:
    bytes_read: int  # from the store, retries included
    read_s: float  # wall time spent in fetches
    time_to_first_byte_s: float | None  # the first ranged GET's
    hits: int  # shards found complete in the cache
    misses: int  # shards this process downloaded

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / 1e6 / self.read_s if self.read_s else 0.0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class LocalShardSource:
    """A shard directory on a local or shared filesystem."""

    is_remote = False

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.manifest = read_manifest(self.directory)
        self.entries = {entry.name: entry for entry in self.manifest.shards}

    def local_path(self, name: str) -> Path:
        return self.directory / name

    def index(self, name: str) -> DaliIndex:
        return read_dali_index(self.local_path(name), self.entries[name].count)

    def release(self, name: str) -> None:
        pass

    def prefetch(self, names: list[str]) -> None:
        pass

    def stream(self, name: str, start_sample: int = 0, stop_sample: int | None = None) -> BinaryIO:
        handle = open(self.local_path(name), "rb")  # noqa: SIM115 - the caller closes it
        if start_sample:
            handle.seek(self.index(name).sample_start(start_sample))
        return handle

    def stats(self) -> SourceStats:
        return SourceStats(0, 0.0, None, 0, 0)

    def close(self) -> None:
        pass


class RemoteShardSource:
    """A shard directory at a URL, read through a node-local cache (or streamed, cache_gb=0)."""

    is_remote = True

    def __init__(
        self,
        url: str,
        cache_dir: Path | None,
        cache_gb: float,
        prefetch_depth: int = 2,
        retry: RetryPolicy | None = None,
        cache_wait_s: float = 60.0,
    ) -> None:
        self.remote = RemoteDir(url, retry)
        self.location = self.remote.shown_url
        self.manifest: Manifest = self.remote.read_manifest()
        self.entries = {entry.name: entry for entry in self.manifest.shards}
        self.cache: ShardCache | None = None
        if cache_gb > 0:
            if cache_dir is None:
                cache_dir = Path(tempfile.gettempdir()) / "imagenet-shard-cache"
            # one folder per store and split, so two stores never mix shards of the same name
            folder = Path(cache_dir) / _cache_key(self.location)
            self.cache = ShardCache(folder, int(cache_gb * GB), wait_s=cache_wait_s)
        self.prefetch_depth = prefetch_depth
        self.prefetcher: Prefetcher | None = None
        self.read_s = 0.0
        self.indexes: dict[str, DaliIndex] = {}

    def _entry(self, name: str) -> ShardEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise LoaderError(
                f"{name} is not in the manifest of {self.location}: the plan and the manifest "
                "disagree; re-read the manifest (restart the run)"
            ) from None

    def index(self, name: str) -> DaliIndex:
        """The shard's DALI index (fetched once; cached beside the tar when there is a cache)."""
        if name not in self.indexes:
            idx_name = dali_index_name(name)
            if self.cache is not None and self.cache.path(idx_name).is_file():
                text = self.cache.path(idx_name).read_text()
            else:
                data = self.remote.read_bytes(idx_name, "DALI index")
                if self.cache is not None:
                    self.cache.store_small(idx_name, data)
                text = data.decode()
            index = parse_dali_index(text, self.remote.object_url(idx_name))
            if len(index.samples) != self._entry(name).count:
                raise ManifestError(
                    f"{self.remote.object_url(idx_name)}: indexes {len(index.samples)} samples "
                    f"but the manifest says {self._entry(name).count}: re-upload the shards"
                )
            self.indexes[name] = index
        return self.indexes[name]

    def _fetch(self, name: str) -> Path:
        assert self.cache is not None, "local_path needs a cache (cache_gb > 0)"
        entry = self._entry(name)

        def fill(sink: BinaryIO, restart) -> None:
            began = time.perf_counter()
            try:
                self.remote.fetch_verified(entry, sink, restart)
            finally:
                self.read_s += time.perf_counter() - began

        path = self.cache.acquire(name, entry.bytes, fill)
        self.index(name)  # beside the tar, where DALI and the wds seek look for it
        return path

    def local_path(self, name: str) -> Path:
        """The shard in the node cache, downloaded (once per node) if absent; pinned until
        `release(name)`."""
        if self.cache is None:
            raise LoaderError(
                f"{self.location}: data.cache_gb=0 streams shards and keeps no local copy; "
                "this backend reads files (DALI): set data.cache_gb > 0"
            )
        if self.prefetcher is not None:
            return self.prefetcher.get(name)
        return self._fetch(name)

    def release(self, name: str) -> None:
        if self.cache is not None:
            self.cache.release(name)

    def prefetch(self, names: list[str]) -> None:
        """Fetch `names` (reading order) in the background, `prefetch_depth` ahead of
        `local_path`."""
        if self.cache is None:
            return  # streaming: each stream is its own read-ahead
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.prefetcher = Prefetcher(self._fetch, self.prefetch_depth).start(names)

    def stream(self, name: str, start_sample: int = 0, stop_sample: int | None = None) -> BinaryIO:
        """Samples [start_sample, stop_sample) of a shard, streamed and verified (see
        stream.py); from the cache instead when the shard is already there."""
        entry = self._entry(name)
        if self.cache is not None and self.cache.is_complete(name, entry.bytes):
            handle = open(self.cache.path(name), "rb")  # noqa: SIM115 - the caller closes it
            if start_sample:
                handle.seek(self.index(name).sample_start(start_sample))
            return handle
        index = self.index(name)
        stream = VerifiedStream(self.remote, entry, data_end(index, entry, stop_sample))
        if start_sample:
            stream.skip_to(index.sample_start(start_sample))
        return stream

    def stats(self) -> SourceStats:
        cache = self.cache
        return SourceStats(
            bytes_read=self.remote.bytes_read,
            read_s=self.read_s,
            time_to_first_byte_s=self.remote.first_byte_s,
            hits=cache.hits if cache else 0,
            misses=cache.misses if cache else 0,
        )

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None
        if self.cache is not None:
            self.cache.release_all()


def _cache_key(location: str) -> str:
    """A folder name for one store location: readable, and unique per URL."""
    import hashlib

    readable = location.split("://", 1)[-1].strip("/").replace("/", "_").replace(":", "_")
    return f"{readable[-60:]}-{hashlib.sha256(location.encode()).hexdigest()[:8]}"


def open_shard_source(
    location: str | Path,
    cache_dir: Path | None = None,
    cache_gb: float = 0.0,
    prefetch_depth: int = 2,
    retry: RetryPolicy | None = None,
    cache_wait_s: float = 60.0,
) -> LocalShardSource | RemoteShardSource:
    """A split's shards at a local path or a URL (s3://, https://, any fsspec protocol).

    Args:
        cache_dir: node-local folder for remote shards (default: the temp dir).
        cache_gb: its bound in GB; 0 streams each shard without touching the disk.
        prefetch_depth: shards fetched ahead of the reader.
    """
    if is_remote(location):
        return RemoteShardSource(
            str(location), cache_dir, cache_gb, prefetch_depth, retry, cache_wait_s
        )
    return LocalShardSource(Path(str(location).removeprefix("file://")))
