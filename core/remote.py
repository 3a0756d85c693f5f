"""Shard directories in object storage: one client for s3://, http(s):// and every other fsspec
protocol, with bounded retries, ranged resume and one-line errors.

    from core.remote import RemoteDir
    store = RemoteDir("s3://bucket/imagenet/train")      # or https://host/imagenet/train
    manifest = store.read_manifest()
    with open("x.tar", "wb") as sink:
        store.fetch_verified(manifest.shards[0], sink)   # size + sha256 checked while it streams

Why fsspec: one interface for every protocol (s3fs for s3://, aiohttp for http(s)://, gcsfs,
adlfs, ... by URL), and s3fs signs with botocore's whole credential chain (environment,
~/.aws/config and credentials, profiles, SSO, instance and container roles) and honours the
standard `AWS_ENDPOINT_URL` for S3-compatible stores. Credentials are never passed, stored or
printed here: messages carry `redact(url)` (no userinfo, no query string).

Reads are ranged GETs of `block_bytes` each (`iter_range`), so a connection that drops
mid-shard resumes with a Range request from the last good byte we hold (the end of the last
whole block), and a 5xx, a timeout or a reset is retried with bounded, jittered exponential
backoff (`RetryPolicy`). The clients' own retry loops are turned off so that ours is the only
one, and the request counts the tests take at the proxy are exact. This module is in core
because both stages use it: the loaders read shards, and `prepare`/`verify` write and check
them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import BinaryIO

from core.errors import UserError
from core.shard_format import MANIFEST_NAME, Manifest, ManifestError, ShardEntry

logger = logging.getLogger(__name__)

MiB = 1 << 20
CREDENTIALS_FIX = (
    "set credentials through the standard chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE with ~/.aws/credentials, or an instance role), and AWS_ENDPOINT_URL for an "
    "S3-compatible store"
)
# S3 error codes that mean "who you are" or "what you may do", not "try again"
_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
}


# Their DEBUG records carry the access key id, signed headers and presigned URLs: never below
# WARNING, whatever level a user sets on the root logger.
QUIET_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "aiohttp")


def quiet_client_loggers() -> None:
    for name in QUIET_LOGGERS:
        client_logger = logging.getLogger(name)
        client_logger.setLevel(max(client_logger.getEffectiveLevel(), logging.WARNING))


class StoreError(UserError):
    """A shard store cannot serve what was asked: one line naming the object, the URL and the
    fix."""


class MissingObjectError(StoreError):
    """The object is not in the store."""


class CredentialsError(StoreError):
    """Credentials are absent or wrong, or they may not read the object."""


class IntegrityError(StoreError):
    """The bytes differ from the manifest's size or sha256, again after one more fetch."""


class TransientError(Exception):
    """A failure worth another try (5xx, timeout, reset, short body); internal."""


def is_remote(location: object) -> bool:
    """Whether `location` is a URL with a protocol other than file://."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def redact(url: str) -> str:
    """`url` without userinfo and query string (where tokens hide): safe for messages and logs."""
    parts = urllib.parse.urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries per request (the first included)
    base_delay_s: float = 0.2  # backoff before try 2; doubled each try, with +-50% jitter
    max_delay_s: float = 5.0  # backoff ceiling
    timeout_s: float = 30.0  # connect and read timeout of one request

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        base = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.5)


def _error_code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _status(err: BaseException) -> int | None:
    status = getattr(err, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int):
        return status
    response = getattr(err, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def classify(err: BaseException) -> type[Exception]:
    """Which of MissingObjectError, CredentialsError, TransientError (or the error's own type, a
    bug) an exception from fsspec, s3fs, botocore or aiohttp is."""
    names = {cls.__name__ for cls in type(err).__mro__}
    code, status = _error_code(err), _status(err)
    if isinstance(err, FileNotFoundError) or code in ("NoSuchKey", "NoSuchBucket", "404"):
        return MissingObjectError
    if status == 404:
        return MissingObjectError
    if isinstance(err, PermissionError) or code in _CREDENTIAL_CODES or status in (401, 403):
        return CredentialsError
    if names & {"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"}:
        return CredentialsError
    if status is not None and (status >= 500 or status in (408, 429)):
        return TransientError
    transient = {
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ClientConnectionError",
        "ClientOSError",
        "ResponseStreamingError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "IncompleteReadError",
        "ContentLengthError",
    }
    if names & transient or isinstance(err, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return TransientError
    if isinstance(err, OSError) and code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        return TransientError
    # s3fs wraps a botocore error it does not map into OSError(errno.EIO, ...) with the
    # original as __cause__; look there before giving up
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err:
        found = classify(cause)
        if found is not type(cause):
            return found
    return type(err)


def _storage_options(protocol: str, policy: RetryPolicy) -> dict:
    """Per protocol: our timeouts, and the client's own retries off (ours is the one loop).

    Nothing here is a credential: s3fs finds those through botocore's chain."""
    if protocol in ("s3", "s3a"):
        return {
            "config_kwargs": {
                "connect_timeout": policy.timeout_s,
                "read_timeout": policy.timeout_s,
                "retries": {"total_max_attempts": 1, "mode": "standard"},  # one try each
            },
        }
    if protocol in ("http", "https"):
        import aiohttp  # fsspec's http(s) client; only needed for those URLs

        timeout = aiohttp.ClientTimeout(
            total=None, connect=policy.timeout_s, sock_read=policy.timeout_s
        )
        return {"client_kwargs": {"timeout": timeout}}
    return {}


class RemoteDir:
    """A shard directory at a URL: its manifest, ranged reads, verified whole-shard fetches."""

    def __init__(
        self,
        url: str,
        retry: RetryPolicy | None = None,
        block_bytes: int = 8 * MiB,
        concurrency: int = 4,
    ) -> None:
        import fsspec  # deferred: a local run never needs it

        quiet_client_loggers()
        self.url = str(url).rstrip("/")
        self.retry = retry or RetryPolicy()
        self.block_bytes = block_bytes  # bytes per ranged GET: the unit of resume
        self.concurrency = concurrency  # ranged GETs in flight per shard
        self.protocol = self.url.split("://", 1)[0].lower()
        self._fs, self.root = self._connect(fsspec)
        self._pid = os.getpid()
        self.counter_lock = threading.Lock()  # blocks arrive on several threads
        self.bytes_read = 0  # body bytes received, retries included
        self.requests = 0  # ranged GETs and small reads sent
        self.first_byte_s: float | None = None  # first request's time to its first block

    def _connect(self, fsspec):
        # a fresh client per directory: the environment (AWS_ENDPOINT_URL, keys) is read now,
        # never from a client cached under other settings
        fs, root = fsspec.core.url_to_fs(
            self.url, skip_instance_cache=True, **_storage_options(self.protocol, self.retry)
        )
        if hasattr(fs, "retries"):
            fs.retries = 1  # s3fs's own retry loop: off, ours is the one
        return fs, root.rstrip("/")

    @property
    def fs(self):
        """The fsspec client of this process: fsspec's async clients refuse to run after a
        fork (a DataLoader worker), so a forked child connects anew."""
        if self._pid != os.getpid():
            import fsspec

            self._fs, self.root = self._connect(fsspec)
            self._pid = os.getpid()
        return self._fs

    def __reduce__(self):
        # DataLoader workers and spawned ranks rebuild the client (a fresh connection pool)
        return (RemoteDir, (self.url, self.retry, self.block_bytes, self.concurrency))

    @property
    def shown_url(self) -> str:
        return redact(self.url)

    def object_path(self, name: str) -> str:
        if self.protocol in ("http", "https"):
            return f"{self.url}/{name}"
        return f"{self.root}/{name}"

    def object_url(self, name: str) -> str:
        """The object's URL as messages show it (redacted)."""
        return redact(f"{self.url}/{name}")

    def _call(self, what: str, name: str, operation: Callable[[], object]):
        """Run one request with the bounded retry policy; one-line errors for the rest."""
        last: BaseException | None = None
        for attempt in range(1, self.retry.attempts + 1):
            try:
                with self.counter_lock:
                    self.requests += 1
                return operation()
            except Exception as err:
                kind = classify(err)
                if kind is MissingObjectError:
                    raise MissingObjectError(
                        f"{what} {name}: no such object at {self.object_url(name)}: check the "
                        f"URL ({self.shown_url}), or upload the shards with `python -m "
                        "preprocess prepare RAW URL`"
                    ) from None
                if kind is CredentialsError:
                    reason = _error_code(err) or type(err).__name__
                    raise CredentialsError(
                        f"{what} {name} at {self.object_url(name)}: access refused ({reason}): "
                        f"{CREDENTIALS_FIX}"
                    ) from None
                if kind is not TransientError:
                    raise
                last = err
                if attempt < self.retry.attempts:
                    delay = self.retry.delay(attempt)
                    logger.warning(
                        "%s %s from %s: %s (try %d of %d); retrying in %.1f s",
                        what,
                        name,
                        self.shown_url,
                        _describe(err),
                        attempt,
                        self.retry.attempts,
                        delay,
                    )
                    time.sleep(delay)
        raise StoreError(
            f"{what} {name} from {self.shown_url}: {_describe(last)} after "
            f"{self.retry.attempts} tries: check the store and the network, then rerun "
            "(training resumes from its last checkpoint)"
        )

    def read_bytes(self, name: str, what: str = "file") -> bytes:
        """A whole small object (the manifest, a DALI index)."""
        path = self.object_path(name)
        data = self._call(what, name, lambda: self.fs.cat_file(path))
        with self.counter_lock:
            self.bytes_read += len(data)
        return data

    def read_manifest(self) -> Manifest:
        """The manifest at the URL; ManifestError (one line) when it is missing or malformed."""
        try:
            data = self.read_bytes(MANIFEST_NAME, "manifest")
        except MissingObjectError:
            raise ManifestError(
                f"{self.shown_url} has no {MANIFEST_NAME}: check data.train_dir/val_dir, or "
                f"upload the shards with `python -m preprocess prepare RAW {self.shown_url}`"
            ) from None
        try:
            parsed = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ManifestError(
                f"{self.object_url(MANIFEST_NAME)}: not valid JSON ({err}): re-upload it"
            ) from None
        return Manifest.from_json(parsed, self.object_url(MANIFEST_NAME))

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of an object, in one ranged GET (retried whole)."""
        path = self.object_path(name)
        begun = time.perf_counter()
        data = self._call(
            "shard",
            name,
            lambda: self._exact(self.fs.cat_file(path, start=start, end=stop), stop - start),
        )
        with self.counter_lock:
            if self.first_byte_s is None:
                self.first_byte_s = time.perf_counter() - begun
            self.bytes_read += len(data)
        return data

    @staticmethod
    def _exact(data: bytes, expected: int) -> bytes:
        if len(data) != expected:  # a server that ignored the Range, or a short body
            raise TransientError(f"{len(data)} bytes where {expected} were asked for")
        return data

    def iter_range(self, name: str, start: int, stop: int) -> Iterator[bytes]:
        """Blocks of [start, stop) in order, each one ranged GET (retried, resumed from its
        first byte), with up to `concurrency` GETs in flight ahead of the consumer."""
        starts = range(start, stop, self.block_bytes)
        if self.concurrency <= 1 or len(starts) <= 1:
            for position in starts:
                yield self.read_range(name, position, min(stop, position + self.block_bytes))
            return
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            pending: collections.deque = collections.deque()
            for position in starts:
                end = min(stop, position + self.block_bytes)
                pending.append(pool.submit(self.read_range, name, position, end))
                if len(pending) >= self.concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def fetch_verified(
        self, entry: ShardEntry, sink: BinaryIO, restart: Callable[[], None] | None = None
    ) -> None:
        """Stream a whole shard into `sink`, checking size and sha256 as it arrives; a mismatch
        is fetched once more (after `restart()`, which must empty the sink), then refused."""
        for attempt in (1, 2):
            digest = hashlib.sha256()
            received = 0
            for block in self.iter_range(entry.name, 0, entry.bytes):
                digest.update(block)
                received += len(block)
                sink.write(block)
            if digest.hexdigest() == entry.sha256 and received == entry.bytes:
                return
            if attempt == 1:
                logger.warning(
                    "shard %s from %s: sha256 differs from the manifest; fetching it once more",
                    entry.name,
                    self.shown_url,
                )
                if restart is None:
                    break
                restart()
        raise integrity_error(entry, self.object_url(entry.name))

    def put_file(self, local_path: str, name: str) -> None:
        """Upload one file as `name` (retried; for `prepare` and the tests' fixtures)."""
        self._call("upload", name, lambda: self.fs.put_file(local_path, self.object_path(name)))


def integrity_error(entry: ShardEntry, url: str) -> IntegrityError:
    return IntegrityError(
        f"shard {entry.name} from {url}: bytes differ from the manifest's {entry.bytes:,} bytes "
        f"and sha256 {entry.sha256[:12]}... on two fetches: re-upload the shard (`python -m "
        "preprocess prepare` resumes) and check it with `python -m preprocess verify URL`"
    )


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "no answer"
    status = _status(err)
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"HTTP {status}" if status else f"{type(err).__name__}: {scrub(text)[:120]}"


def scrub(text: str) -> str:
    """`text` with the userinfo and query string of every URL in it removed."""
    text = re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)
    return re.sub(r"(\w+://[^\s?'\"]*)\?[^\s'\"]*", r"\1", text)
