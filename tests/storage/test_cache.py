"""The node cache, the prefetcher and streams, over moto's S3 and nginx through the fault
proxy: LRU under a bound, atomic fill under kill -9, one download per node, plan order, and
no partial shard ever read as a sample."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import BUCKET, PREFIX
from faultproxy import Fault
from webdataset.tariterators import group_by_keys, tar_file_expander

from core.remote import IntegrityError, RetryPolicy
from pipeline.data.storage import CacheTooSmallError, open_shard_source
from pipeline.data.storage.cache import temp_name

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, timeout_s=3.0)
S3_URL = f"s3://{BUCKET}/{PREFIX}"
REPO = Path(__file__).parents[2]


def source_at(url, cache_dir, cache_gb, **kwargs):
    source = open_shard_source(url, cache_dir, cache_gb, retry=FAST, **kwargs)
    source.remote.block_bytes = 16 * 1024
    return source


def samples_of(stream, url="shard") -> list[tuple[str, bytes]]:
    return [
        (sample["__key__"], sample["jpg"])
        for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    ]


def test_a_shard_is_fetched_through_the_cache_once_then_hit(s3_env, storage_shards, tmp_path):
    source = source_at(S3_URL, tmp_path, cache_gb=1)
    name = source.manifest.shards[0].name
    path = source.local_path(name)
    assert path.read_bytes() == (storage_shards / name).read_bytes()
    assert (
        path.with_suffix(".idx").read_bytes()
        == (storage_shards / name).with_suffix(".idx").read_bytes()
    )
    source.release(name)
    again = source_at(S3_URL, tmp_path, cache_gb=1)
    assert again.local_path(name) == path
    stats = again.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (1, 0, 1.0)
    assert len(s3_env.requests("GET", name)) == -(-source.manifest.shards[0].bytes // 16384)


def test_a_shard_corrupted_once_in_transit_is_refetched_into_the_cache_whole(
    s3_env, storage_shards, tmp_path
):
    source = source_at(S3_URL, tmp_path, cache_gb=1)
    entry = source.manifest.shards[5]
    s3_env.add(Fault("corrupt", entry.name, after_bytes=10, range_part="bytes=16384-"))
    assert source.local_path(entry.name).read_bytes() == (storage_shards / entry.name).read_bytes()
    assert source.stats().misses == 1
    blocks = -(-entry.bytes // 16384)
    assert len(s3_env.requests("GET", entry.name)) == 2 * blocks


def test_the_cache_evicts_whole_shards_least_recently_used_within_its_bound(
    s3_env, storage_shards, tmp_path
):
    probe = source_at(S3_URL, tmp_path / "probe", cache_gb=1)
    shards = probe.manifest.shards
    biggest = max(entry.bytes for entry in shards)
    bound = 3 * biggest + 3 * 4096  # three shards and their indexes, not four
    source = source_at(S3_URL, tmp_path, cache_gb=bound / 1e9)
    names = [entry.name for entry in shards[:5]]
    for name in names[:3]:
        source.local_path(name)
        source.release(name)
        time.sleep(0.01)  # distinct mtimes
    source.local_path(names[0])  # a hit: now the most recently used
    source.release(names[0])
    for name in names[3:]:
        source.local_path(name)
        source.release(name)
    cached = sorted(p.name for p in source.cache.directory.glob("*.tar"))
    assert cached == sorted([names[0], names[3], names[4]])
    assert source.cache.usage() <= bound
    for name in cached:  # what stays is whole
        assert (source.cache.directory / name).read_bytes() == (storage_shards / name).read_bytes()


def test_a_cache_too_small_for_one_shard_or_the_shards_in_flight_is_one_line(s3_env, tmp_path):
    probe = source_at(S3_URL, tmp_path / "probe", cache_gb=1)
    first, second = probe.manifest.shards[:2]
    tiny = source_at(S3_URL, tmp_path / "tiny", cache_gb=first.bytes / 2 / 1e9)
    with pytest.raises(CacheTooSmallError) as caught:
        tiny.local_path(first.name)
    assert "\n" not in str(caught.value) and "data.cache_gb" in str(caught.value)
    room = max(first.bytes, second.bytes) * 1.5 + 8192
    source = source_at(S3_URL, tmp_path / "small", cache_gb=room / 1e9, cache_wait_s=0.3)
    source.local_path(first.name)  # pinned: in flight
    with pytest.raises(CacheTooSmallError) as caught:
        source.local_path(second.name)
    message = str(caught.value)
    assert "\n" not in message and second.name in message and "in flight" in message
    source.release(first.name)
    assert source.local_path(second.name).is_file()  # released: evicted, room made


FETCH_ONE = """
import os, sys
sys.path.insert(0, {repo!r})
from core.remote import RetryPolicy
from pipeline.data.storage import open_shard_source
source = open_shard_source({url!r}, {cache!r}, 1, retry=RetryPolicy(timeout_s=30))
source.remote.block_bytes = 16 * 1024
for name in {names!r}:
    source.local_path(name)
print("done", flush=True)
"""


def run_fetcher(url, cache, names) -> subprocess.Popen:
    code = FETCH_ONE.format(repo=str(REPO), url=url, cache=str(cache), names=names)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE)


@pytest.mark.slow
def test_two_processes_on_one_node_download_each_shard_once(s3_env, tmp_path):
    probe = source_at(S3_URL, tmp_path / "probe", cache_gb=1)
    names = [entry.name for entry in probe.manifest.shards[:3]]
    s3_env.reset()
    for name in names:  # slow first blocks, so both processes ask while one is filling
        s3_env.add(Fault("stall", name, seconds=0.5, range_part="bytes=0-"))
    ranks = [run_fetcher(S3_URL, tmp_path / "node", names) for _ in range(2)]
    assert [rank.wait(120) for rank in ranks] == [0, 0]
    for entry in probe.manifest.shards[:3]:
        blocks = -(-entry.bytes // 16384)
        assert len(s3_env.requests("GET", entry.name)) == blocks, entry.name


@pytest.mark.slow
def test_a_download_killed_midway_leaves_no_shard_that_looks_complete(
    s3_env, storage_shards, tmp_path
):
    probe = source_at(S3_URL, tmp_path / "probe", cache_gb=1)
    name = probe.manifest.shards[1].name
    s3_env.add(Fault("stall", name, seconds=60, range_part="bytes=16384-"))  # 2nd block hangs
    fetcher = run_fetcher(S3_URL, tmp_path / "node", [name])
    folder = probe.cache.directory.parent.parent / "node" / probe.cache.directory.name
    deadline = time.monotonic() + 60
    while not s3_env.requests("GET", name) or len(s3_env.requests("GET", name)) < 2:
        assert time.monotonic() < deadline and fetcher.poll() is None
        time.sleep(0.05)
    os.kill(fetcher.pid, signal.SIGKILL)  # mid-download: one block written, one in flight
    fetcher.wait()
    assert (folder / temp_name(name)).exists()  # the partial bytes are there, under a temp name
    assert not (folder / name).exists()  # and nothing under the shard's own name
    s3_env.reset()
    source = source_at(S3_URL, tmp_path / "node", cache_gb=1)  # the next run
    assert not (folder / temp_name(name)).exists()  # stale temp removed at open
    assert source.local_path(name).read_bytes() == (storage_shards / name).read_bytes()


def test_the_prefetcher_fetches_in_plan_order_at_most_depth_ahead(s3_env, tmp_path):
    source = source_at(S3_URL, tmp_path, cache_gb=1, prefetch_depth=2)
    plan = [source.manifest.shards[i].name for i in (4, 1, 5, 0, 2)]
    s3_env.reset()
    source.prefetch(plan)
    time.sleep(1.0)  # the reader has asked for nothing yet
    fetched = [name for name in plan if s3_env.requests("GET", name)]
    assert fetched == plan[:2]  # bounded: two ahead
    for name in plan:
        assert source.local_path(name).is_file()
        source.release(name)
    first_requests = []
    for request in s3_env.requests("GET"):
        shard = request.path.rsplit("/", 1)[1]
        if shard.endswith(".tar") and shard not in first_requests:
            first_requests.append(shard)
    assert first_requests == plan
    source.close()


@pytest.mark.parametrize("protocol", ["s3", "http"])
def test_a_streamed_shard_gives_the_same_samples_as_the_local_file(
    protocol, request, storage_shards
):
    if protocol == "s3":
        request.getfixturevalue("s3_env")
        url = S3_URL
    else:
        url = request.getfixturevalue("http_proxy").endpoint + "/train"
    source = source_at(url, None, cache_gb=0)
    for entry in source.manifest.shards[:2]:
        with open(storage_shards / entry.name, "rb") as local:
            expected = samples_of(local)
        assert samples_of(source.stream(entry.name)) == expected
        # a segment: samples [2, 6) of the shard
        got = samples_of(source.stream(entry.name, start_sample=2, stop_sample=6))
        assert got[:4] == expected[2:6]


def test_a_streamed_shard_resumes_a_dropped_connection(s3_env, storage_shards):
    source = source_at(S3_URL, None, cache_gb=0)
    entry = source.manifest.shards[3]
    s3_env.add(Fault("cut", entry.name, after_bytes=3000, range_part="bytes=16384-"))
    with open(storage_shards / entry.name, "rb") as local:
        assert samples_of(source.stream(entry.name)) == samples_of(local)


def test_a_corrupt_stream_raises_before_its_last_sample_is_handed_out(s3_env):
    source = source_at(S3_URL, None, cache_gb=0)
    entry = source.manifest.shards[2]
    index = source.index(entry.name)
    last = index.samples[-1][0]  # corrupt a byte of the last sample's data
    s3_env.add(
        Fault(
            "corrupt",
            entry.name,
            after_bytes=(last.offset + 5) % 16384,
            times=2,
            range_part=f"bytes={(last.offset + 5) // 16384 * 16384}-",
        )
    )
    handed_out = []
    with pytest.raises(IntegrityError) as caught:
        for sample in group_by_keys(
            tar_file_expander([{"url": "s", "stream": source.stream(entry.name)}])
        ):
            handed_out.append(sample["__key__"])
    assert len(handed_out) < entry.count  # the last sample never came out
    message = str(caught.value)
    assert "\n" not in message and entry.name in message and "transfer fault" not in message


def test_a_local_directory_is_a_source_with_the_same_methods(storage_shards):
    source = open_shard_source(storage_shards, None, 0)
    entry = source.manifest.shards[0]
    assert source.local_path(entry.name) == storage_shards / entry.name
    with source.stream(entry.name, start_sample=3) as stream:
        assert len(samples_of(stream)) == entry.count - 3
