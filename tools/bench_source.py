"""`bench_loader --source URL`: the wds loader over shards at a URL, cold and warm, beside the same
shards on local disk, in one run.

    python -m tools.bench_loader --source loopback              # nginx on 127.0.0.1 serves them
    python -m tools.bench_loader --source s3://bucket/bench/train   # uploaded there if missing

Three rows, measured like every bench_loader row (rounds taken in turn, the best one counts):
  wds-local  the benchmark shards on local disk;
  wds-cold   the URL through a node cache emptied of every shard before each epoch (same
             loader, its workers kept), so every shard is downloaded while it is read;
  wds-warm   the URL through a node cache that already holds every shard (filled by one epoch
             before the rounds): what every epoch after the first costs.
Before the rounds, the source's read bandwidth: every shard fetched once with `RemoteDir`
(ranged GETs, sha256 checked), in MB/s. `loopback` starts nginx (tools.bench_storage) over the
local shards, so the source is the same bytes; a URL without a manifest gets them uploaded.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

CACHE_GB = 50.0  # the warm cache holds every benchmark shard


def add_source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default=None,
        help="also read the benchmark shards from this URL (s3://..., https://...; 'loopback': "
        "nginx on 127.0.0.1), cold and warm cache, beside local disk (tools/bench_source.py)",
    )


def source_url(source: str, shards: Path, scratch: Path) -> tuple[str, object | None]:
    """(the train shard directory's URL, a server process to stop or None)."""
    from core.remote import RemoteDir
    from core.shard_format import MANIFEST_NAME

    if source == "loopback":
        from tools.bench_storage import start_nginx

        process, endpoint = start_nginx(scratch, shards.parent)
        return f"{endpoint}/{shards.name}", process
    store = RemoteDir(source)
    if store.size(MANIFEST_NAME) is None:  # upload the benchmark shards, the manifest last
        files = sorted(p for p in shards.iterdir() if p.is_file() and not p.name.startswith("."))
        for path in sorted(files, key=lambda p: p.name == MANIFEST_NAME):
            store.put_file(str(path), path.name)
    return source.rstrip("/"), None


def read_bandwidth(url: str) -> tuple[float, int]:
    """(MB/s, bytes) fetching every shard of the URL once, verified, nothing kept."""
    from core.remote import RemoteDir

    class Discard:
        def write(self, data: bytes) -> int:
            return len(data)

    store = RemoteDir(url)
    manifest = store.read_manifest()
    started = time.perf_counter()
    for entry in manifest.shards:
        store.fetch_verified(entry, Discard())
    total = sum(entry.bytes for entry in manifest.shards)
    return total / 1e6 / (time.perf_counter() - started), total


def wds_batches(train_dir: str, args, device, size: int, cache_dir: Path | None):
    """A function of the epoch giving batches: our wds loader over `train_dir`."""
    from pipeline.config import build_config
    from pipeline.data import build_loader
    from pipeline.distributed import DistInfo

    data = {
        "backend": "wds",
        "train_dir": train_dir,
        "val_dir": train_dir,
        "global_batch_size": args.batch_size,
        "num_workers": args.workers,
        "train_crop": size,
        "val_crop": size,
        "val_resize": max(size, 256),
        "auto_augment": args.auto_augment,
    }
    if cache_dir is not None:
        data |= {"cache_dir": str(cache_dir), "cache_gb": CACHE_GB}
    loader = build_loader(build_config({"data": data}), "train", DistInfo(device=str(device)))

    def batches(epoch):
        loader.set_epoch(epoch)
        return iter(loader)

    return batches


def cold_batches(url: str, args, device, size: int, cache: Path):
    """One loader (its workers live on, so their CPU time is counted) whose cache is emptied
    of every shard and index before each epoch: every epoch downloads all it reads."""
    warm = wds_batches(url, args, device, size, cache)

    def batches(epoch):
        for path in cache.rglob("*"):
            if path.suffix in (".tar", ".idx") and path.is_file():
                path.unlink()
        return warm(epoch)

    return batches


def source_loaders(args, root: Path, device, scratch: Path) -> tuple[dict, list]:
    """((row, size) -> batches for local, cold and warm; the servers to stop)."""
    shards = root / "shards" / "train"
    url, server = source_url(args.source, shards, scratch)
    rate, total = read_bandwidth(url)
    print(f"# source {url}: {total / 1e6:.0f} MB of shards read at {rate:.0f} MB/s (loopback)")
    loaders = {}
    for size in args.sizes:
        loaders["wds-local", size] = wds_batches(str(shards), args, device, size, None)
        loaders["wds-cold", size] = cold_batches(url, args, device, size, scratch / f"cold-{size}")
        warm = wds_batches(url, args, device, size, scratch / f"warm-{size}")
        for _ in warm(0):  # one epoch fills the cache with every shard
            pass
        loaders["wds-warm", size] = warm
    return loaders, [server] if server is not None else []


def make_scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-source-"))


def report_ratios(results: dict, sizes) -> None:
    """cold and warm against local disk, one line per size."""
    for size in sizes:
        local = results.get(f"wds-local@{size}")
        if not local:
            continue
        parts = []
        for row in ("wds-cold", "wds-warm"):
            found = results.get(f"{row}@{size}")
            if found:
                ratio = found["images_per_s"] / local["images_per_s"]
                parts.append(f"{row[4:]} {ratio:.3f}x")
        print(f"# {size} px, images/s against local disk: {', '.join(parts)}")


def stop_servers(servers: list, scratch: Path) -> None:
    for server in servers:
        server.terminate()
        server.wait(timeout=30)
    shutil.rmtree(scratch, ignore_errors=True)
