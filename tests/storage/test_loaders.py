"""The loaders over shards at a URL: wds (through the node cache, or streamed at
data.cache_gb=0) and DALI (from the cache) yield exactly the batches they yield over the same
shards on local disk, faults through the proxy included; the cache downloads each shard once
per node; what cannot work says so in one line."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from faultproxy import Fault
from storage_names import BUCKET, PREFIX

from core.remote import StoreError
from pipeline.config import build_config
from pipeline.data import build_loader
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError

S3_URL = f"s3://{BUCKET}/{PREFIX}"


def config(train_dir, backend="wds", **data):
    values = {
        "backend": backend,
        "train_dir": str(train_dir),
        "val_dir": "",
        "global_batch_size": 4,
        "num_workers": 0,
        "train_crop": 32,
        "val_resize": 36,
        "val_crop": 32,
        "prefetch_factor": 2,
        "shuffle_buffer": 8,
        "dali_decode": "cpu",
    }
    values.update(data)
    return build_config({"data": values, "train": {"seed": 3, "channels_last": False}})


def epoch_batches(loader, epoch: int, start_batch: int = 0) -> list[tuple]:
    loader.set_epoch(epoch, start_batch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def assert_same_batches(got: list[tuple], expected: list[tuple]) -> None:
    assert len(got) == len(expected) > 0
    for (images, labels), (want_images, want_labels) in zip(got, expected):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)


def rank(number: int, world_size: int = 2) -> DistInfo:
    """A rank of a world without a process group (the loaders' collectives are skipped)."""
    return DistInfo(rank=number, world_size=world_size, backend=None)


def tar_downloads(proxy) -> Counter:
    return Counter(request.path.rsplit("/", 1)[-1] for request in proxy.requests("GET", ".tar"))


def test_wds_over_s3_reads_the_local_batches_and_each_shard_once_per_node(
    s3_env, storage_shards, tmp_path
):
    """Two ranks of one node, two loader workers each, two epochs and a mid-epoch resume:
    every batch equals the local one, and the store sent each shard once."""
    for number in range(2):
        local = build_loader(config(storage_shards, num_workers=2), "train", rank(number))
        cfg = config(S3_URL, num_workers=2, cache_gb=1, cache_dir=str(tmp_path))
        remote = build_loader(cfg, "train", rank(number))
        for epoch in range(2):
            assert_same_batches(epoch_batches(remote, epoch), epoch_batches(local, epoch))
        assert_same_batches(epoch_batches(remote, 1, 2), epoch_batches(local, 1, 2))
    downloads = tar_downloads(s3_env)
    assert set(downloads.values()) == {1} and len(downloads) == 6, downloads


def test_wds_streams_from_http_through_cuts_and_503s_without_touching_the_disk(
    http_proxy, storage_shards, tmp_path
):
    url = f"{http_proxy.endpoint}/train"
    names = sorted(path.name for path in storage_shards.glob("*.tar"))
    http_proxy.add(Fault("cut", names[1], after_bytes=5000))
    http_proxy.add(Fault("status", names[2], status=503, times=2))
    cfg = config(url, num_workers=1, cache_gb=0, cache_dir=str(tmp_path / "unused"))
    remote = build_loader(cfg, "train", rank(0, 1))
    local = build_loader(config(storage_shards, num_workers=1), "train", rank(0, 1))
    assert_same_batches(epoch_batches(remote, 0), epoch_batches(local, 0))
    assert_same_batches(epoch_batches(remote, 1, 3), epoch_batches(local, 1, 3))
    assert not (tmp_path / "unused").exists()
    assert len(http_proxy.requests("GET", names[2])) >= 3  # two 503s, then the bytes


@pytest.mark.parametrize("cache_gb", [0, 1])
def test_a_shard_damaged_on_every_fetch_stops_a_worker_in_one_line_naming_it(
    s3_env, tmp_path, cache_gb
):
    cfg = config(S3_URL, num_workers=1, cache_gb=cache_gb, cache_dir=str(tmp_path))
    loader = build_loader(cfg, "train", rank(0, 1))
    name = loader.manifest.shards[0].name
    s3_env.add(Fault("corrupt", name, after_bytes=600, times=10))
    # S3's checksum catches the damage per GET (retried); ours would catch what it lets by
    with pytest.raises(StoreError) as caught:
        epoch_batches(loader, 0)
    message = str(caught.value)
    assert "\n" not in message and name in message and S3_URL in message
    # where: the loader thread (the default worker kind) that read the shard
    assert "Raised in loader thread wds-train-worker-0" in caught.value.worker_report


def test_dali_reads_the_local_batches_from_the_node_cache(s3_env, storage_shards, tmp_path):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    local = build_loader(config(storage_shards, "dali"), "train", rank(1))
    remote_cfg = config(S3_URL, "dali", cache_gb=1, cache_dir=str(tmp_path))
    remote = build_loader(remote_cfg, "train", rank(1))
    for epoch in range(2):
        assert_same_batches(epoch_batches(remote, epoch), epoch_batches(local, epoch))
    assert set(tar_downloads(s3_env).values()) == {1}


@pytest.mark.parametrize(
    ("backend", "cache_gb", "expected"),
    [
        ("dali", 0, "data.cache_gb>0"),
        ("folder", 1, "class folders cannot be read from a URL: use data.backend=wds or dali"),
    ],
)
def test_a_backend_that_cannot_read_a_url_this_way_says_what_to_set(backend, cache_gb, expected):
    with pytest.raises(LoaderError) as caught:
        build_loader(config(S3_URL, backend, cache_gb=cache_gb), "train", rank(0, 1))
    assert "\n" not in str(caught.value) and expected in str(caught.value)


def test_credentials_in_a_url_are_never_recorded(tmp_path):
    from pipeline.config import config_to_dict, dump_config

    cfg = config("https://user:secret@data.example.org/train?X-Amz-Signature=abc")
    recorded = dump_config(cfg) + str(config_to_dict(cfg))
    assert "secret" not in recorded and "Signature" not in recorded
    assert "https://data.example.org/train" in recorded


def test_the_doctor_reports_the_stores_rate_first_byte_and_hit_rate_and_names_storage(
    s3_env, tmp_path
):
    from pipeline.doctor.budget import QUICK
    from pipeline.doctor.data import measure_remote_data, summarize_read
    from pipeline.doctor.verdict import recommend_for_disk

    cfg = config(S3_URL, cache_gb=1, cache_dir=str(tmp_path))
    warm = build_loader(cfg, "train", rank(0, 1))
    epoch_batches(warm, 0)  # fills the node cache
    measured = measure_remote_data(cfg, rank(0, 1), QUICK)
    read = measured["read"]
    assert read["layout"] == "store" and read["bytes"] > 0 and read["first_byte_s"] > 0
    assert read["cache_hit_rate"] == 1.0
    assert "error" not in measured["decode"]["wds"], measured["decode"]["wds"]
    check, summary = summarize_read(cfg, [measured], 1)
    assert check.status == "ok" and "from the store" in check.summary, check.summary
    assert "cache hit rate 100%" in check.summary and summary["layout"] == "store"
    assert "storage bounds the run" in recommend_for_disk(cfg, None).text
