"""The storage layer below the shard backends: local or remote shard directories, the node
cache, the prefetcher and verified streams. `open_shard_source` is the one entry point."""

from pipeline.data.storage.cache import CacheTooSmallError, ShardCache
from pipeline.data.storage.source import (
    LocalShardSource,
    RemoteShardSource,
    SourceStats,
    open_shard_source,
)

__all__ = [
    "CacheTooSmallError",
    "LocalShardSource",
    "RemoteShardSource",
    "ShardCache",
    "SourceStats",
    "open_shard_source",
]
