"""What every backend shares: the per-rank batch size, split checks, the host-to-device copy and
the Loader interface."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from core.remote import is_remote
from pipeline.config import Config
from pipeline.data.remainder import EpochRemainder
from pipeline.distributed import DistInfo, all_gather_ints
from pipeline.errors import LoaderError, SampleDecodeError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClassList:
    """WNIDs (or any folder names) in class-index order, and their human-readable names."""

    wnids: tuple[str, ...]
    names: Mapping[str, str]  # wnid -> "goldfish, Carassius auratus"; may lack some wnids
    source: Path | str  # the split directory (or its URL, redacted) they were read from

    def __len__(self) -> int:
        return len(self.wnids)

    def display_names(self) -> list[str]:
        """One caption per class index: the name when known, else the WNID."""
        return [self.names.get(wnid, wnid) for wnid in self.wnids]


def decode_error(source: str, err: BaseException, directory_hint: str) -> SampleDecodeError:
    """The one line for an image that cannot be decoded."""
    return SampleDecodeError(
        f"{source}: cannot decode ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}): run "
        f"`python -m preprocess verify {directory_hint} --decode` to list every bad image, then "
        "re-run prepare or remove them"
    )


def synthetic_batch(
    batch_size: int,
    image_size: int,
    num_classes: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch as a loader hands it over: uint8 [B, 3, size, size] images (in
    `memory_format`) and int64 [B] labels on the device, the same every call (generator seed 0).
    The doctor and tools/bench_train.py time the step on it."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, 3, image_size, image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return images.to(device).contiguous(memory_format=memory_format), labels.to(device)


def per_rank_batch_size(cfg: Config, dist: DistInfo) -> int:
    """cfg.data.global_batch_size // (world_size * grad_accum_steps); LoaderError if not
    divisible."""
    global_batch = cfg.data.global_batch_size
    parts = dist.world_size * cfg.optim.grad_accum_steps
    if global_batch % parts != 0:
        raise LoaderError(
            f"data.global_batch_size {global_batch} is not divisible by world size "
            f"{dist.world_size} x optim.grad_accum_steps {cfg.optim.grad_accum_steps} = {parts}: "
            f"choose a multiple of {parts}"
        )
    return global_batch // parts


def split_directory(cfg: Config, split: str) -> Path:
    """The directory cfg.data names for `split`, checked to exist and be non-empty."""
    if split not in ("train", "val"):
        raise LoaderError(f"split {split!r} is not 'train' or 'val'")
    key = f"{split}_dir"
    value = getattr(cfg.data, key)
    if not value:
        raise LoaderError(
            f"data.{key} is empty: set data.{key}=PATH (class folders or a shard directory)"
        )
    directory = Path(value).expanduser()
    if not directory.exists():
        raise LoaderError(
            f"data.{key}={directory} does not exist: check the path or run "
            "`python -m preprocess prepare`"
        )
    if not directory.is_dir():
        raise LoaderError(
            f"data.{key}={directory} is not a directory: pass the folder of class folders or of "
            "shards"
        )
    if not any(directory.iterdir()):
        raise LoaderError(
            f"data.{key}={directory} is empty: expected class folders nXXXXXXXX/ or shards with "
            "manifest.json"
        )
    return directory


def split_location(cfg: Config, split: str) -> Path | str:
    """cfg.data's directory for `split`: a URL as given (s3://, https://, any fsspec protocol),
    else the local directory, checked (`split_directory`)."""
    value = getattr(cfg.data, f"{split}_dir", "")
    return value if is_remote(value) else split_directory(cfg, split)


def check_same_classes(directory: Path | str, classes: list[str], reference: Sequence[str]) -> None:
    """Shards carry their labels: a val manifest must list exactly the train classes."""
    if list(classes) != list(reference):
        missing = sorted(set(reference) - set(classes))[:3]
        raise LoaderError(
            f"{directory}: lists {len(classes)} classes but the train data lists {len(reference)} "
            f"(missing e.g. {', '.join(missing) or 'none'}): shard val from class folders holding "
            "every train class (an empty folder is enough) so the class indices agree"
        )


class SampleRecord:
    """data.record_samples (a debug aid, off by default): the keys of every train batch as it is
    handed over, one JSON line per batch, in RUN_DIR/samples/rank-N-epoch-E.jsonl. A key is the
    file index (class folders) or the sample's index in the split (shards)."""

    def __init__(self, directory: Path, rank: int) -> None:
        self.directory = directory
        self.rank = rank

    def write(self, epoch: int, batch: int, keys: Sequence[int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"batch": batch, "keys": [int(key) for key in keys]})
        with open(self.directory / f"rank-{self.rank}-epoch-{epoch}.jsonl", "a") as out:
            out.write(line + "\n")  # closed per batch: a killed run keeps every line written


def sample_record(cfg: Config, split: str, dist: DistInfo) -> SampleRecord | None:
    """The train split's SampleRecord when data.record_samples is on."""
    if not cfg.data.record_samples or split != "train":
        return None
    return SampleRecord(Path(cfg.train.run_dir) / "samples", dist.rank)


CopyMode = Literal["in_place", "async", "pin_then_async", "blocking"]


def copy_mode(source: torch.device, pinned: bool, target: torch.device) -> CopyMode:
    """How one tensor reaches `target` without stalling the GPU, decided per tensor.

    A batch can mix devices: DALI `mixed` hands over CUDA images and CPU labels. A pageable
    host tensor copied to a GPU blocks the host until the GPU's queue drains (a bubble per
    step that also counts compute as data wait), so it is pinned first (torch's caching host
    allocator keeps the pinned buffer alive until the copy is done), then copied asynchronously.
    """
    if source == target:
        return "in_place"
    if target.type == "cuda" and source.type == "cpu":
        return "async" if pinned else "pin_then_async"
    return "blocking"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, copied as `copy_mode` says."""
    mode = copy_mode(tensor.device, tensor.device.type == "cpu" and tensor.is_pinned(), device)
    if mode == "in_place":
        return tensor
    if mode == "pin_then_async":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=mode != "blocking")


def to_device_batch(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool
):
    """uint8 [N,H,W,3] host batch → uint8 [N,3,H,W] on `device` (+ int64 labels).

    Host batches are NHWC because that is how decoders write pixels; the permuted view is already
    in channels_last memory format, so NHWC costs nothing and NCHW costs one copy on the device.
    """
    images = to_device(images, device).permute(0, 3, 1, 2)  # [N, 3, H, W] uint8
    if not channels_last:
        images = images.contiguous()
    labels = to_device(labels, device).to(torch.int64)  # int64 already: no copy
    return images, labels


def _own(tensor: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a copy of it (same memory format) where it shares memory with `source`."""
    if tensor.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return tensor.clone(memory_format=torch.preserve_format)
    return tensor


class InFlightCopies:
    """Lent host batches (pinned slots of a loader thread's ring, pipeline/data/batches.py) whose
    asynchronous copy to the GPU may still be reading them: each is held, so its slot is not
    written again, until a CUDA event recorded after its copy has completed. A batch that was
    not pinned was copied into a pinned buffer of torch's own first (`to_device`): nothing to
    hold."""

    def __init__(self, device: torch.device) -> None:
        self.device = device  # the copies' device: its current stream is the one they ran on
        self.pending: collections.deque = collections.deque()

    def hold(self, *tensors: torch.Tensor) -> None:
        if any(tensor.is_pinned() for tensor in tensors):
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))  # after the copies
            self.pending.append((event, tensors))

    def collect(self) -> None:
        """Let go of the batches whose copies have completed."""
        while self.pending and self.pending[0][0].query():
            self.pending.popleft()

    def wait(self) -> None:
        for event, _ in self.pending:
            event.synchronize()
        self.pending.clear()


class Loader:
    """The interface `build_loader` returns. Backends fill in `_planned_batches` and `_iterate`."""

    backend: str = "base"
    # True where host batches are lent slots (pipeline/data/batches.py: never overwritten while
    # anything holds them), so a batch that stays on the host needs no copy
    lends: bool = False

    def __init__(
        self,
        *,
        split: str,
        classes: ClassList,
        num_samples: int,
        batch_size: int,
        dist: DistInfo,
        channels_last: bool,
        record: SampleRecord | None = None,
    ) -> None:
        self.split = split
        self.classes = list(classes.wnids)  # in class-index order
        self.class_names = dict(classes.names)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)  # per rank, per micro-batch
        self.dist = dist
        self.channels_last = channels_last
        self.device = torch.device(dist.device)
        self.epoch = 0
        self.start_batch = 0
        self.record = record  # data.record_samples
        self.remainder: EpochRemainder | None = None  # the rest of an epoch under another plan

    def set_remainder(self, remainder: EpochRemainder | None) -> None:
        """Read `remainder.epoch` as the rest of an interrupted epoch (pipeline/data/remainder.py):
        its batches are numbered from `remainder.first_batch` on, up to the usual epoch's end."""
        self.remainder = remainder

    def epoch_remainder(self) -> EpochRemainder | None:
        """The remainder when the current epoch is its epoch."""
        remainder = self.remainder
        return remainder if remainder is not None and remainder.epoch == self.epoch else None

    def _epoch_batches(self, epoch: int) -> int:
        remainder = self.remainder
        if remainder is not None and remainder.epoch == epoch:
            return remainder.first_batch + remainder.num_batches
        return self._planned_batches(epoch)

    def check_planned_batches(self, directory: Path) -> None:
        """Train needs at least one full batch per rank (DDP steps on every rank). Val does not:
        with fewer val samples than ranks a rank may read none, and exact eval still all-reduces."""
        if self.split == "train" and self._planned_batches(0) == 0:
            raise LoaderError(
                f"{directory}: {self.num_samples} {self.split} samples give no full batch of "
                f"{self.batch_size} per rank on {self.dist.world_size} ranks: lower "
                "data.global_batch_size or add data"
            )
        if self.num_samples == 0:
            raise LoaderError(
                f"{directory}: the {self.split} split holds no samples: point "
                f"data.{self.split}_dir at data"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order (reproducible from the seed) and resume after `start_batch`
        batches."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        full = self._epoch_batches(epoch)
        remainder = self.remainder if self.remainder and self.remainder.epoch == epoch else None
        if remainder is not None and start_batch < remainder.first_batch:
            raise LoaderError(
                f"start_batch {start_batch} is before the rest of epoch {epoch} planned for this "
                f"world (batches {remainder.first_batch} to {full})"
            )
        if start_batch > full:
            raise LoaderError(
                f"start_batch {start_batch} is past the end of {self.split} epoch {epoch}: this "
                f"rank plans {full} batches of {self.batch_size} on {self.dist.world_size} ranks; "
                "a resume point from another world size or data.global_batch_size must be "
                "converted first (pipeline.train does) or start at batch 0"
            )
        self.epoch = epoch
        self.start_batch = start_batch

    def batches_per_epoch(self) -> int:
        """Batches this rank yields in a whole epoch (the current one)."""
        return self._epoch_batches(self.epoch)

    def __len__(self) -> int:
        return self._epoch_batches(self.epoch) - self.start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.split == "train":
            self.check_equal_batches()
        remaining = len(self)
        produced = 0
        copies = InFlightCopies(self.device)
        try:
            for host_images, host_labels, keys in self._iterate():
                copies.collect()
                if self.record is not None:
                    self.record.write(self.epoch, self.start_batch + produced, keys.tolist())
                images, labels = to_device_batch(
                    host_images, host_labels, self.device, self.channels_last
                )
                if self.device.type == "cpu" and not self.lends:
                    # worker processes reuse their batch buffers (pipeline/data/batches.py): a
                    # batch that stays on the host must not alias the slot a worker fills again
                    images, labels = _own(images, host_images), _own(labels, host_labels)
                if self.device.type == "cuda" and self.lends:
                    copies.hold(host_images, host_labels)  # a pinned slot, read by the copy
                del host_images, host_labels  # a lent slot is free again once nothing holds it
                yield images, labels
                del images, labels
                produced += 1
        finally:
            copies.wait()  # no slot is written again while the last copies read it
        assert produced == remaining, (
            f"{self.backend} loader yielded {produced} batches, planned {remaining}"
        )

    def check_equal_batches(self) -> None:
        """All-gather every rank's planned batch count; a mismatch would hang DDP at epoch end."""
        counts = all_gather_ints(len(self), self.dist)
        if len(set(counts)) != 1:
            raise LoaderError(
                f"ranks plan different numbers of {self.split} batches for epoch {self.epoch} "
                f"(start_batch {self.start_batch}): {counts}; every rank must use the same data, "
                "config and resume point"
            )

    # Backends implement these.
    def _planned_batches(self, epoch: int) -> int:
        raise NotImplementedError

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Host batches (uint8 [N,H,W,3], int labels, int64 sample keys) for self.epoch from
        self.start_batch (from `epoch_remainder()`'s batches when it is set)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, samples={self.num_samples}, "
            f"classes={self.num_classes}, batch_size={self.batch_size}, "
            f"rank={self.dist.rank}/{self.dist.world_size}, batches={len(self)})"
        )
