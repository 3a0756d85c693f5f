"""A shard streamed straight from the store into a tar reader (data.cache_gb=0), checked.

    stream = VerifiedStream(remote, entry, verify_before=data_end(index, entry))
    for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])): ...

Every byte goes through sha256 and the size count as it arrives. The digest covers the whole
shard, so it is known only at the end; the rule that keeps a bad shard from ever becoming a
sample is `verify_before`: the first read that would hand out a byte at or past that offset
first downloads the rest of the shard (discarding what the reader will not need), checks it,
and raises instead of returning when it differs. A tar reader yields a sample only after it
has read the header that follows it, so with `verify_before` at the end of the last sample the
reader wants (the end-of-archive block for a whole shard; the next sample's header for a
segment), no sample whose bytes were not checked is handed out whole... except that the
samples before it were handed out as they streamed, which is what streaming means: with a
mismatch the run stops with one line, the shard is fetched once more to tell a transfer fault
(rerun) from a bad object (re-upload), and a cache (data.cache_gb > 0) verifies before reading.
A dropped connection resumes with a Range request (`RemoteDir.iter_range`).
"""

from __future__ import annotations

import hashlib
import io

from core.remote import IntegrityError, RemoteDir, integrity_error
from core.shard_format import TAR_BLOCK, DaliIndex, ShardEntry


def data_end(index: DaliIndex | None, entry: ShardEntry, stop_sample: int | None = None) -> int:
    """The offset of the tar header after sample `stop_sample - 1` (default: the end-of-archive
    block after the last sample), from the DALI index; 0 (check before handing out anything)
    without an index."""
    if index is None or not index.samples:
        return 0
    if stop_sample is not None and stop_sample < len(index.samples):
        return index.sample_start(stop_sample)
    last = max(index.samples[-1], key=lambda member: member.offset)
    return min(entry.bytes, last.offset + -(-last.size // TAR_BLOCK) * TAR_BLOCK)


class VerifiedStream(io.RawIOBase):
    """A read-only, forward-only file over one shard in the store (see module doc)."""

    def __init__(self, remote: RemoteDir, entry: ShardEntry, verify_before: int = 0) -> None:
        super().__init__()
        self.remote = remote
        self.entry = entry
        self.verify_before = verify_before
        self.digest = hashlib.sha256()
        self.blocks = remote.iter_range(entry.name, 0, entry.bytes)
        self.pending = memoryview(b"")  # received, hashed, not yet handed out
        self.position = 0  # bytes handed out (or skipped)
        self.received = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.position

    def _next_block(self) -> bool:
        block = next(self.blocks, None)
        if block is None:
            return False
        self.digest.update(block)
        self.received += len(block)
        assert not self.pending, "a block arrives only when the last one is handed out"
        self.pending = memoryview(block)
        return True

    def _verify(self) -> None:
        """Download the rest, check size and sha256; raise (refetching once to say which fault)
        when they differ."""
        tail = bytearray(self.pending)
        self.pending = memoryview(b"")
        while self._next_block():
            tail += self.pending
            self.pending = memoryview(b"")
        self.pending = memoryview(bytes(tail))
        if self.received == self.entry.bytes and self.digest.hexdigest() == self.entry.sha256:
            self.verified = True
            return
        url = self.remote.object_url(self.entry.name)
        check = hashlib.sha256()
        for block in self.remote.iter_range(self.entry.name, 0, self.entry.bytes):
            check.update(block)
        if check.hexdigest() == self.entry.sha256:
            raise IntegrityError(
                f"shard {self.entry.name} from {url}: the streamed bytes differed from the "
                "manifest's sha256 but a second fetch matches: a transfer fault; rerun (it "
                "resumes from the last checkpoint), or set data.cache_gb > 0 to check shards "
                "before reading them"
            )
        raise integrity_error(self.entry, url)

    def skip_to(self, offset: int) -> None:
        """Move forward to `offset` (a segment's first sample), hashing what is skipped."""
        if offset < self.position:
            raise io.UnsupportedOperation("a streamed shard only moves forward")
        while self.position < offset:
            if not self.pending and not self._next_block():
                break
            step = min(len(self.pending), offset - self.position)
            self.pending = self.pending[step:]
            self.position += step

    def readinto(self, buffer) -> int:
        wanted = len(buffer)
        if wanted == 0:
            return 0
        if not self.verified and self.position + wanted > self.verify_before:
            self._verify()  # raises before a byte past verify_before is handed out
        while not self.pending:
            if not self._next_block():
                return 0  # end of shard
        count = min(wanted, len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        self.position += count
        return count

    def close(self) -> None:
        self.blocks.close()
        super().close()
