"""The `wds` backend: WebDataset shards (DST/{train,val}/imagenet-*.tar + manifest.json) +
DataLoader.

    python -m pipeline.train --config configs/alexnet.yaml data.backend=wds \
        data.train_dir=DST/train data.val_dir=DST/val

How the samples are split, so every rank yields the same number of train batches and val
visits every sample exactly once (the two classic WebDataset-under-DDP bugs), is
pipeline/data/plans.py's ShardReadPlan: a per-epoch sample sequence over the manifest's shards,
cut into rank blocks and, inside a rank, into one contiguous sub-block per loader worker
(batch j comes from worker j % num_workers; a worker is a thread of the training process or a
DataLoader process, `data.worker_kind`, with the same batches in the same order: see
pipeline/data/threads.py). What this module adds:
  * a block that starts inside a shard seeks straight to its first sample with the offsets in
    the shard's DALI index, so ranks, workers and resumed epochs read only their own bytes;
  * train streams go through webdataset's shuffle buffer (data.shuffle_buffer) seeded from
    (seed, epoch, rank, worker) (`Purpose.SHUFFLE_BUFFER`, sub: the logical worker); shards
    were also globally shuffled when written.

The per-epoch order therefore depends on (seed, epoch, world size, batch size, num_workers)
(pipeline.train finishes an epoch interrupted under another num_workers with the checkpoint's);
resuming at batch k (`set_epoch(epoch, k)`) rebuilds the same streams and drops the samples
of the first k batches before decoding, so the rest is identical to the uninterrupted epoch.
The rest of an epoch interrupted under another world size or batch (`set_remainder`,
pipeline/data/remainder.py) is a fixed list of keys per batch: each worker reads its batches'
tar slices in key order, without the shuffle buffer.
What each sample becomes does not depend on the order: its crop, flip and auto-augment draws
come from `sample_rng(seed, epoch, its index in the split)` (the manifest-order index that
`read_segments` tags it with), and its size from `train_resolution(data, epoch)`, the epoch
being read from the shared state at the start of every pass.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import multiprocessing
import os
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from core.seeds import Purpose, stream_seed
from core.shard_format import TAR_BLOCK, IndexMember, ManifestError, read_dali_index
from pipeline.config import Config, DataConfig
from pipeline.data.base import (
    ClassList,
    Loader,
    check_same_classes,
    decode_error,
    sample_record,
)
from pipeline.data.batches import BatchBuffers
from pipeline.data.plans import Segment, ShardReadPlan, open_manifest
from pipeline.data.remainder import EpochRemainder
from pipeline.data.storage import ShardSource
from pipeline.data.threads import Workers
from pipeline.data.transforms import (
    Augmentation,
    build_auto_augment,
    decode_train,
    decode_train_batch,
    decode_val,
    sample_rng,
    train_resolution,
)
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError

logger = logging.getLogger(__name__)


def sample_offset(tar_path: str, sample: int) -> int:
    """Byte offset of the first tar header of sample number `sample`, from the DALI index next
    to the tar; 0 (read from the start) when the index is missing or disagrees with the tar."""
    path = Path(tar_path)
    try:
        index = read_dali_index(path)
        first = min(index.samples[sample], key=lambda member: member.offset)
        with open(path, "rb") as handle:
            handle.seek(first.header_offset)
            header = tarfile.TarInfo.frombuf(handle.read(TAR_BLOCK), "utf-8", "surrogateescape")
    except (ManifestError, OSError, IndexError, ValueError, tarfile.TarError):
        return 0
    if first.name is not None:
        name_matches = header.name == first.name
    else:
        name_matches = header.name.endswith("." + first.extension)
    return (
        first.header_offset
        if first.header_offset > 0 and name_matches and header.size == first.size
        else 0
    )


@contextlib.contextmanager
def _sample_errors(sample: dict) -> Iterator[None]:
    """A sample's decode or label error, raised as the loader's one line naming its shard and
    key."""
    try:
        yield
    except (KeyError, OSError, ValueError) as err:
        url = str(sample.get("__url__"))
        raise decode_error(
            f"{url}: sample {sample.get('__key__')!r}", err, url.rsplit("/", 1)[0]
        ) from err


def read_segments(segments: Iterator[Segment], source: ShardSource | None = None) -> Iterator[dict]:
    """Pipeline stage: tar slices → raw samples (bytes only; nothing is decoded here), each
    tagged with "__index__", its index in the split (manifest order).

    `source` resolves each segment's shard name (pipeline/data/storage): a local directory's
    file, a remote shard in the node cache (pinned until its last segment here is read), or,
    with data.cache_gb=0, a verified stream; None reads segment.path as a file path. A slice
    that starts inside a tar seeks straight to its first sample (offsets from the DALI index),
    so rank and worker blocks and resumed epochs read only their own bytes.
    """
    segments = list(segments)
    last_use = {segment.path: number for number, segment in enumerate(segments)}
    for number, segment in enumerate(segments):
        try:
            for position, sample in enumerate(_segment_samples(segment, source)):
                sample["__index__"] = segment.shard_start + segment.skip + position
                yield sample
        finally:
            if source is not None and last_use[segment.path] == number:
                source.release(segment.path)


def _segment_samples(segment: Segment, source: ShardSource | None) -> Iterator[dict]:
    """The segment's raw samples. A file on disk is read by its DALI index's offsets, one read
    per sample and no tar header parsed (Python's tarfile costs ~0.1 ms per sample, a fifth of
    a decode); a stream, or a file whose index is missing, old (v1.1: no member names) or does
    not match the tar at the slice's ends, goes through webdataset's tar reader."""
    if source is not None and source.streams:
        stop = segment.skip + segment.take
        url = f"{source.location}/{segment.path}"
        yield from _tar_samples(source.stream(segment.path, segment.skip, stop), url, 0, segment)
        return
    path = str(source.local_path(segment.path)) if source is not None else segment.path
    layouts = _indexed_members(path, segment, source)
    if layouts is not None:
        yield from _read_indexed(path, layouts)
        return
    offset = sample_offset(path, segment.skip) if segment.skip else 0
    stream = open(path, "rb")  # noqa: SIM115 - closed by _tar_samples
    stream.seek(offset)
    yield from _tar_samples(stream, path, 0 if offset else segment.skip, segment)


def _tar_samples(stream: BinaryIO, url: str, skip: int, segment: Segment) -> Iterator[dict]:
    """webdataset's tar reader over `stream` (closed at the end): `segment.take` samples after
    the first `skip`."""
    with stream:
        tar = tar_file_expander([{"url": url, "stream": stream}])
        yield from itertools.islice(group_by_keys(tar), skip, skip + segment.take)


class _Layout(NamedTuple):
    """Where one sample lies in its tar: one read of bytes [start, end), then each member."""

    start: int  # its first member's header
    end: int  # its last member's last byte
    key: str
    members: tuple[tuple[str, int, int], ...]  # (suffix lower-cased, offset from start, size)


def _indexed_members(
    path: str, segment: Segment, source: ShardSource | None
) -> list[_Layout] | None:
    """The layouts of the segment's samples from the shard's DALI index, or None where the
    index cannot be trusted for them."""
    try:
        index = source.index(segment.path) if source is not None else read_dali_index(Path(path))
    except (LoaderError, ManifestError, OSError, UnicodeDecodeError):
        return None
    samples = index.samples[segment.skip : segment.skip + segment.take]
    if len(samples) != segment.take:
        return None
    layouts = [_plain_layout(members) for members in samples]
    if None in layouts:
        return None
    ends = (samples[0][0], samples[-1][-1]) if samples else ()
    return layouts if all(_header_matches(path, member) for member in ends) else None


def _plain_layout(members: tuple[IndexMember, ...]) -> _Layout | None:
    """The sample's layout, if webdataset would group these members as one sample of these
    suffixes: named (v1.2), each `key.suffix` with one key, no suffix twice, no `__meta__`
    file; else None."""
    key, seen, parts = None, set(), []
    for member in members:
        name = member.name
        if name is None or name.startswith("__", name.rfind("/") + 1):
            return None
        base, suffix = _name_parts(name)
        if base is None or (key is not None and base != key):
            return None
        key, suffix = base, suffix.lower()
        if suffix in seen:
            return None
        seen.add(suffix)
        parts.append((suffix, member))
    if key is None:
        return None
    start = min(member.offset for _, member in parts) - TAR_BLOCK
    end = max(member.offset + member.size for _, member in parts)
    placed = tuple((suffix, member.offset - start, member.size) for suffix, member in parts)
    return _Layout(start, end, key, placed)


def _name_parts(name: str) -> tuple[str | None, str | None]:
    """webdataset's `base_plus_ext(name)` (key, suffixes): cut at the first dot after the last
    slash. String methods where that is the regex's answer (a plain name, ~4x faster); the
    regex itself decides any other name."""
    after_slash = name.rfind("/") + 1
    dot = name.find(".", after_slash)
    if dot > after_slash and "\n" not in name:
        return name[:dot], name[dot + 1 :]
    return base_plus_ext(name)


def _header_matches(path: str, member: IndexMember) -> bool:
    """Whether the tar header before `member`'s data names it and gives its size."""
    try:
        with open(path, "rb") as handle:
            handle.seek(member.header_offset)
            header = tarfile.TarInfo.frombuf(handle.read(TAR_BLOCK), "utf-8", "surrogateescape")
    except (OSError, ValueError, tarfile.TarError):
        return False
    return member.header_offset >= 0 and header.name == member.name and header.size == member.size


def _read_indexed(path: str, layouts: list[_Layout]) -> Iterator[dict]:
    """Samples as webdataset's group_by_keys builds them ({"__key__", "__url__", suffix: data,
    the suffix lower-cased}), from the shard mapped into memory: no read call and no copy per
    sample. "jpg" is a read-only memoryview of the shard's pages, handed to the decoder as it
    is; every other member is bytes.

    Why a mapping: a read() or pread() of a sample copies its ~34 KB out of the page cache,
    cold in the CPU's caches: ~25-30 µs a sample here, 6 % of a decode (2026-12-06), where the
    decoder reading the mapped pages overlaps those misses with its own work (as FFCV's mapped
    .beton does). The mapping lives as long as any sample's view (a shuffle buffer's), and shards
    are never rewritten in place (the node cache renames complete files into place), so a view
    never sees a file change under it. A file shorter than its index says fails at once. On a
    file system that cannot map files (some FUSE mounts), each sample is one pread instead.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if max((layout.end for layout in layouts), default=0) > size:
            raise tarfile.ReadError(f"{path}: unexpected end of data")
        if not layouts or size == 0:
            return
        try:
            mapped = memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
        except (OSError, ValueError):  # ENODEV and the like: one pread a sample instead
            mapped = None
        for start, end, key, members in layouts:
            if mapped is not None:
                data, base = mapped, start
            else:
                data, base = os.pread(handle.fileno(), end - start, start), 0
                if len(data) != end - start:
                    raise tarfile.ReadError(f"{path}: unexpected end of data")
            sample = {"__key__": key, "__url__": path}
            for suffix, first, length in members:
                piece = data[base + first : base + first + length]
                sample[suffix] = piece if suffix == "jpg" else bytes(piece)
            yield sample


class ShardStream(IterableDataset):
    """One rank's batches for the epoch held in shared memory (persistent workers see updates)."""

    def __init__(
        self,
        plan: ShardReadPlan,
        data: DataConfig,
        shuffle_buffer: int,
        split: str,
        source: ShardSource,
        buffers: BatchBuffers | None = None,
    ) -> None:
        self.plan = plan
        self.source = source  # the main process's; each worker process opens its own
        self.source_pid = os.getpid()
        self.data = data  # for train_resolution(data, epoch)
        self.aug = Augmentation.from_config(data)
        self.shuffle_buffer = shuffle_buffer
        self.split = split
        # (epoch, start_batch), shared with forked workers; read at the start of every iteration
        self.state = multiprocessing.RawArray("q", 2)
        self.remainder: EpochRemainder | None = None  # set before the first pass forks workers
        # each worker process reuses its own ring of batch buffers (pipeline/data/batches.py)
        self.buffers = buffers if buffers is not None else BatchBuffers(slots=2)

    def __len__(self) -> int:
        return self.plan.num_batches() - self.state[1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.worker_batches(physical, workers, self._worker_source())

    def worker_batches(
        self, physical: int, workers: int, source: ShardSource
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Worker `physical` of `workers`'s batches of this pass (a DataLoader worker process,
        or a loader thread with a source of its own), read through `source`."""
        epoch, start_batch = int(self.state[0]), int(self.state[1])
        assert workers == self.plan.num_workers, (
            f"plan for {self.plan.num_workers} workers, running {workers}"
        )
        remainder = self.remainder
        if remainder is not None and remainder.epoch == epoch:
            yield from self._read_remainder(remainder, start_batch, physical, workers, source)
            return
        # resuming at batch k: physical worker 0 must produce rank batch k (the DataLoader polls it
        # first)
        logical = (physical + start_batch) % workers
        skip_batches = max(0, (start_batch - logical + workers - 1) // workers)
        block = self.plan.worker_block(epoch, logical)
        if skip_batches >= block.num_batches:
            return
        source.prefetch(list(dict.fromkeys(segment.path for segment in block.segments)))
        stages = [lambda: iter(block.segments), lambda segments: read_segments(segments, source)]
        if self.split == "train":
            seed = stream_seed(
                self.plan.seed, Purpose.SHUFFLE_BUFFER, epoch, rank=self.plan.rank, sub=logical
            )
            rng = random.Random(seed)
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages.append(self._batcher(epoch, skip_batches * self.plan.batch_size))
        # now: uint8 [B, size, size, 3] batches (+ labels, keys) of this worker's block, from
        # batch skip_batches on
        yield from wds.DataPipeline(*stages)

    def _read_remainder(
        self,
        remainder: EpochRemainder,
        start_batch: int,
        physical: int,
        workers: int,
        source: ShardSource,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """The rest of an interrupted epoch: this worker's batches (every `workers`-th, from
        `start_batch` on), each read in key order (the epoch's sequence order), no shuffle
        buffer: the keys are fixed by the remainder's plan, not by the stream."""
        first = start_batch - remainder.first_batch + physical
        keys = [
            remainder.batch_keys(batch) for batch in range(first, remainder.num_batches, workers)
        ]
        segments = [segment for batch in keys for segment in self.plan.key_segments(batch)]
        source.prefetch(list(dict.fromkeys(segment.path for segment in segments)))
        batcher = self._batcher(remainder.epoch, 0, [len(batch) for batch in keys])
        yield from batcher(read_segments(iter(segments), source))

    def _worker_source(self) -> ShardSource:
        """This process's source: a DataLoader worker reopens the main process's once (its own
        prefetch thread, pins and connections), then keeps it across epochs."""
        if self.source_pid != os.getpid():
            self.source, self.source_pid = self.source.reopen(), os.getpid()
        return self.source

    def _batcher(self, epoch: int, skip_samples: int, lengths: list[int] | None = None):
        """Pipeline stage: raw samples → (images, labels, keys) batches, each sample decoded
        straight into a reused batch buffer (pipeline/data/batches.py). Batches of `lengths`
        (a remainder's), else of the plan's batch size, the last one possibly short."""
        size = train_resolution(self.data, epoch) if self.split == "train" else self.aug.val_crop
        cuts = lengths if lengths is not None else itertools.repeat(self.plan.batch_size)

        def batches(samples: Iterator[dict]) -> Iterator[tuple[torch.Tensor, ...]]:
            kept = itertools.islice(samples, skip_samples, None)  # resume point: undecoded
            for length in cuts:
                chunk = list(itertools.islice(kept, length))
                if not chunk:
                    return
                images, labels = self.buffers.next(len(chunk), size)
                pixels = images.numpy()  # [B, size, size, 3] uint8
                label_values = labels.numpy()  # written through numpy: no per-sample tensor op
                keys = np.fromiter((sample["__index__"] for sample in chunk), np.int64, len(chunk))
                left = range(len(chunk))
                if self.split == "train":  # drawn and decoded in one C call; the rest one by one
                    data = [sample.get("jpg") for sample in chunk]
                    left = decode_train_batch(
                        data, self.aug, self.plan.seed, epoch, keys, size, pixels
                    )
                for position in left:
                    self._decode(chunk[position], epoch, size, pixels[position])
                for position, sample in enumerate(chunk):
                    try:
                        label_values[position] = int(sample["cls"])
                    except (KeyError, ValueError):
                        with _sample_errors(sample):  # the one line naming shard and key
                            raise
                del pixels, label_values  # views of the slot: a lent slot is held by the loop only
                yield images, labels, torch.from_numpy(keys)
                del images, labels

        return batches

    def _decode(self, sample: dict, epoch: int, size: int, out: np.ndarray) -> None:
        """One raw sample decoded into `out`, by the per-sample path."""
        with _sample_errors(sample):
            if self.split == "train":
                rng = sample_rng(self.plan.seed, epoch, sample["__index__"])
                decode_train(sample["jpg"], self.aug, rng, size, out=out)
            else:
                decode_val(sample["jpg"], self.aug, out=out)


class WdsLoader(Loader):
    backend = "wds"

    def __init__(
        self,
        cfg: Config,
        split: str,
        dist: DistInfo,
        location: Path | str,
        batch_size: int,
        classes: ClassList,
    ) -> None:
        self.source = open_manifest(location, split, cfg.data)
        manifest = self.source.manifest
        directory = self.source.location  # a URL without credentials, for messages
        check_same_classes(directory, manifest.classes, classes.wnids)
        super().__init__(
            split=split,
            classes=classes,
            num_samples=manifest.num_samples,
            batch_size=batch_size,
            dist=dist,
            channels_last=cfg.train.channels_last,
            record=sample_record(cfg, split, dist),
        )
        self.directory = directory
        self.manifest = manifest
        workers = cfg.data.num_workers
        self.plan = ShardReadPlan.for_split(manifest, cfg, split, dist, batch_size, workers)
        self.check_planned_batches(directory)
        if split == "train" and cfg.data.auto_augment != "none":
            build_auto_augment(cfg.data.auto_augment)  # a missing op fails here, not in a worker
        self.workers = Workers.from_config(cfg.data, self.device)
        self.lends = self.workers.threads  # a thread's slot is lent, never overwritten while held
        self.stream = ShardStream(
            self.plan, cfg.data, cfg.data.shuffle_buffer, split, self.source, self.workers.buffers
        )
        self.thread_sources: dict[int, ShardSource] = {}  # per loader thread, kept across epochs
        self.dataloader = self.workers.dataloader(self.stream)
        logger.info(
            "wds %s: %d samples in %d shards from %s",
            split,
            manifest.num_samples,
            len(manifest.shards),
            directory,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        self.stream.state[0], self.stream.state[1] = epoch, start_batch

    def set_remainder(self, remainder: EpochRemainder | None) -> None:
        """Before the first pass only: persistent workers keep the stream they were forked with."""
        super().set_remainder(remainder)
        self.stream.remainder = remainder

    def _planned_batches(self, epoch: int) -> int:
        return self.plan.num_batches()

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.workers.threads:
            return iter(self.dataloader)
        workers = max(1, self.workers.count)
        streams = [
            lambda physical=physical: self.stream.worker_batches(
                physical, workers, self._thread_source(physical)
            )
            for physical in range(workers)
        ]
        return self.workers.run(streams, name=f"wds-{self.split}")

    def _thread_source(self, physical: int) -> ShardSource:
        """Loader thread `physical`'s source: the main one reopened (its own prefetch and
        connections, as a worker process has), kept across epochs."""
        if physical not in self.thread_sources:
            self.thread_sources[physical] = self.source.reopen()
        return self.thread_sources[physical]
