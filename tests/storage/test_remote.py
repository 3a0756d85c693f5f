"""The remote client against real servers (moto's S3, nginx), through the fault proxy: exact
bytes after every recoverable fault, one line naming shard, URL and fix after the others."""

from __future__ import annotations

import hashlib
import io
import logging

import pytest
from conftest import BUCKET, PREFIX
from faultproxy import Fault

from core.remote import (
    CredentialsError,
    IntegrityError,
    MissingObjectError,
    RemoteDir,
    RetryPolicy,
    StoreError,
    redact,
)
from core.shard_format import ManifestError, read_manifest

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, timeout_s=2.0)
BLOCK = 16 * 1024  # small blocks, so a shard is several ranged GETs


def s3_url() -> str:
    return f"s3://{BUCKET}/{PREFIX}"


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


@pytest.fixture(params=["s3", "http"])
def store(request, storage_shards):
    """(RemoteDir through a proxy, the proxy, the local shard folder) for each protocol."""
    if request.param == "s3":
        proxy = request.getfixturevalue("s3_env")
        url = s3_url()
    else:
        proxy = request.getfixturevalue("http_proxy")
        url = f"{proxy.endpoint}/train"
    return RemoteDir(url, FAST, block_bytes=BLOCK), proxy, storage_shards


def fetch(remote: RemoteDir, entry) -> bytes:
    sink = io.BytesIO()

    def restart():
        sink.seek(0)
        sink.truncate()

    remote.fetch_verified(entry, sink, restart)
    return sink.getvalue()


def test_the_manifest_and_every_shard_come_back_byte_exact(store):
    remote, proxy, local = store
    manifest = remote.read_manifest()
    assert manifest == read_manifest(local)
    for entry in manifest.shards[:2]:
        assert fetch(remote, entry) == (local / entry.name).read_bytes()
    # each shard was read in ranged GETs of one block each, nothing more
    gets = proxy.requests("GET", manifest.shards[0].name)
    assert len(gets) == -(-manifest.shards[0].bytes // BLOCK)
    assert all(request.range for request in gets)


def test_a_connection_dropped_mid_shard_resumes_with_a_range_request(store):
    remote, proxy, local = store
    entry = remote.read_manifest().shards[1]
    proxy.add(Fault("cut", entry.name, after_bytes=5000, range_part="bytes=0-"))
    data = fetch(remote, entry)
    assert data == (local / entry.name).read_bytes()
    ranges = [request.range for request in proxy.requests("GET", entry.name)]
    # the cut block was asked for again from its first byte, the others once
    assert ranges.count(f"bytes=0-{BLOCK - 1}") == 2
    assert len(ranges) == -(-entry.bytes // BLOCK) + 1


def test_a_burst_of_503s_is_retried_with_backoff(store):
    remote, proxy, local = store
    entry = remote.read_manifest().shards[2]
    proxy.add(Fault("status", entry.name, status=503, times=3))
    assert fetch(remote, entry) == (local / entry.name).read_bytes()


def test_503s_past_the_retry_bound_end_in_one_line_naming_the_shard_and_url(store):
    remote, proxy, _ = store
    entry = remote.read_manifest().shards[2]
    proxy.add(Fault("status", entry.name, status=503, times=FAST.attempts, range_part="bytes=0-"))
    with pytest.raises(StoreError) as caught:
        fetch(remote, entry)
    message = one_line(caught.value)
    assert entry.name in message and remote.shown_url in message
    assert f"after {FAST.attempts} tries" in message and "rerun" in message
    first_block = [r for r in proxy.requests("GET", entry.name) if r.range.startswith("bytes=0-")]
    assert len(first_block) == FAST.attempts


def test_a_stalled_answer_times_out_and_is_retried(store):
    remote, proxy, local = store
    entry = remote.read_manifest().shards[3]
    proxy.add(Fault("stall", entry.name, seconds=FAST.timeout_s + 1.5))
    assert fetch(remote, entry) == (local / entry.name).read_bytes()
    assert len(proxy.requests("GET", entry.name)) == -(-entry.bytes // BLOCK) + 1


def test_bytes_that_differ_once_are_fetched_again_and_match(store):
    remote, proxy, local = store
    entry = remote.read_manifest().shards[4]
    proxy.add(Fault("corrupt", entry.name, after_bytes=100, range_part="bytes=0-"))
    assert fetch(remote, entry) == (local / entry.name).read_bytes()
    assert len(proxy.requests("GET", entry.name)) == 2 * -(-entry.bytes // BLOCK)


def test_bytes_that_differ_twice_are_refused_by_name(store):
    remote, proxy, _ = store
    entry = remote.read_manifest().shards[4]
    proxy.add(Fault("corrupt", entry.name, after_bytes=100, times=2, range_part="bytes=0-"))
    with pytest.raises(IntegrityError) as caught:
        fetch(remote, entry)
    message = one_line(caught.value)
    assert entry.name in message and remote.object_url(entry.name) in message
    assert "re-upload" in message


def test_a_missing_shard_is_one_line(store):
    remote, _, _ = store
    entry = remote.read_manifest().shards[0]
    missing = type(entry)("imagenet-train-000099.tar", 1, 10, "0" * 64)
    with pytest.raises(MissingObjectError) as caught:
        fetch(remote, missing)
    message = one_line(caught.value)
    assert "imagenet-train-000099.tar" in message and "no such object" in message


def test_a_missing_manifest_is_one_line(store):
    remote, _, _ = store
    elsewhere = RemoteDir(remote.url.rsplit("/", 1)[0] + "/nothing-here", FAST)
    with pytest.raises(ManifestError) as caught:
        elsewhere.read_manifest()
    message = one_line(caught.value)
    assert "manifest.json" in message and "nothing-here" in message and "prepare" in message


@pytest.mark.parametrize("credentials", ["absent", "wrong key", "wrong secret"])
def test_absent_or_wrong_credentials_are_one_line_and_never_logged(
    credentials, s3_env, moto_s3, monkeypatch, caplog
):
    if credentials == "absent":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif credentials == "wrong key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-wrong-secret-wrong-secret00")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CredentialsError) as caught:
        RemoteDir(s3_url(), FAST).read_manifest()
    message = one_line(caught.value)
    assert "manifest" in message and s3_url() in message and "AWS_ACCESS_KEY_ID" in message
    secrets = (moto_s3.secret_key, moto_s3.access_key, "wrong-secret-wrong-secret", "AKIAWRONG")
    assert not any(secret in caplog.text or secret in message for secret in secrets)


def test_the_right_credentials_from_the_environment_and_aws_endpoint_url_are_enough(s3_env):
    assert RemoteDir(s3_url(), FAST).read_manifest().num_samples == 48
    assert s3_env.requests("GET", "manifest.json")  # through AWS_ENDPOINT_URL, the proxy


def test_urls_are_redacted_of_userinfo_and_tokens():
    assert redact("https://user:pw@host:8443/a/b?X-Amz-Signature=abc") == "https://host:8443/a/b"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"


def test_a_sha256_check_holds_for_what_the_server_sends(storage_shards, nginx):
    remote = RemoteDir(f"{nginx}/train", FAST)
    entry = remote.read_manifest().shards[5]
    data = b"".join(remote.iter_range(entry.name, 0, entry.bytes))
    assert hashlib.sha256(data).hexdigest() == entry.sha256


def _read_in_child(remote: RemoteDir, name: str, size: int, queue) -> None:
    try:
        queue.put(hashlib.sha256(b"".join(remote.iter_range(name, 0, size))).hexdigest())
    except Exception as err:  # noqa: BLE001 - reported to the parent, which fails on it
        queue.put(repr(err))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_client_keeps_working_in_forked_and_spawned_loader_workers(
    start_method, s3_env, storage_shards
):
    import multiprocessing

    remote = RemoteDir(s3_url(), FAST, block_bytes=BLOCK)
    entry = remote.read_manifest().shards[0]
    remote.read_range(entry.name, 0, 10)  # the parent's client is live when the worker starts
    context = multiprocessing.get_context(start_method)
    queue = context.Queue()
    worker = context.Process(target=_read_in_child, args=(remote, entry.name, entry.bytes, queue))
    worker.start()
    digest = queue.get(timeout=120)
    worker.join(30)
    assert digest == entry.sha256
