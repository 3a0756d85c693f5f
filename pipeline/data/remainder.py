"""The rest of an interrupted train epoch under another plan: which samples the epoch's earlier
plans consumed, and how the ones not yet consumed are spread over a new world.

    links = (PlanLink("wds", world_size=2, batch_size=8, accum=1, num_workers=2,
                      shuffle_buffer=64, batches=5),)          # what the checkpoint recorded
    remainder = plan_remainder(loader.plan, links, epoch, world_size=1, batch_size=16, accum=1,
                               rank=0, max_batches=loader_batches)

An epoch's reference set is the set of samples its first plan (`links[0]`, the plan the epoch
started under) reads over all ranks: pipeline/data/plans.py drops a few per epoch so that every
rank has whole, equal batches, and those stay dropped. The samples a plan consumed are a pure
function of the plan and the batches each rank consumed:
  * IndexPlan (folder, dali over folders): the first k batches of each rank's block;
  * ShardReadPlan read by wds: per loader worker, the first (its batches among the first k) x
    batch samples that come out of webdataset's shuffle buffer. The buffer's picks depend on the
    count of samples only, never on their content, and its rng on (seed, epoch, rank, worker),
    so the consumed set is replayed on the keys alone, without reading a tar;
  * ShardReadPlan read by dali: the first k batches of the rank's order (its block, each tar
    slice permuted by `Purpose.DALI_FILE_ORDER`).
The remaining samples keep the order of the reference sequence (each old rank's block in
sequence order, ranks in order). A new plan gives rank r the contiguous part
`rank_range(n, r, world)` of them, in micro-batches of `batch_size` and then one last optimizer
step whose `accum` micro-batches share the rest evenly (`layout_sizes`), so every rank has the
same number of micro-batches and every remaining sample is read exactly once. A remainder epoch
interrupted again adds a link: its consumed samples are the first batches of each rank's part.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.seeds import Purpose, stream_seed
from pipeline.data.plans import IndexPlan, ShardReadPlan, rank_range

ReadPlan = IndexPlan | ShardReadPlan


@dataclasses.dataclass(frozen=True)
class PlanLink:
    """One plan an epoch was read under, and how far each rank got in it."""

    backend: str  # folder | wds | dali: wds and dali order a rank's shard block differently
    world_size: int
    batch_size: int  # per rank, per micro-batch
    accum: int  # micro-batches per optimizer step
    num_workers: int  # wds: a rank's batch j comes from worker j % num_workers
    shuffle_buffer: int  # wds: the buffer each worker's stream passes through
    batches: int  # micro-batches each rank consumed under this plan
    planned: int = 0  # a remainder plan: the micro-batches per rank it laid out (0: a first plan)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PlanLink:
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})

    def same_layout(self, other: PlanLink) -> bool:
        """The same cut of a remainder: world, batch and accumulation (workers do not matter)."""
        return (self.world_size, self.batch_size, self.accum) == (
            other.world_size,
            other.batch_size,
            other.accum,
        )


@dataclasses.dataclass(frozen=True)
class EpochRemainder:
    """This rank's part of the rest of an interrupted epoch."""

    epoch: int
    keys: np.ndarray  # int64 sample keys (file index or index in the split), reading order
    sizes: tuple[int, ...]  # micro-batch sizes; every rank has as many
    first_batch: int  # the trainer's batch number of the first micro-batch here
    history: tuple[PlanLink, ...]  # the plans before this one, with what each consumed
    link: PlanLink  # this plan (`batches` = 0: filled in when a checkpoint records it)
    remaining: int = 0  # samples of the epoch not yet consumed, over all ranks
    left_out: int = 0  # samples too few for every rank to fill a step (then none are read)

    @property
    def num_batches(self) -> int:
        return len(self.sizes)

    def batch_keys(self, batch: int) -> np.ndarray:
        """Keys of micro-batch `batch` (counted from this remainder's first)."""
        start = sum(self.sizes[:batch])
        return self.keys[start : start + self.sizes[batch]]


def sequence_keys(plan: ShardReadPlan, epoch: int, first: int, size: int) -> np.ndarray:
    """Split-wide keys of positions [first, first + size) of the epoch's shard sequence."""
    parts = [
        np.arange(seg.shard_start + seg.skip, seg.shard_start + seg.skip + seg.take)
        for seg in plan.segments(epoch, first, size)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def rank_plan(plan: ReadPlan, link: PlanLink, rank: int) -> ReadPlan:
    """`plan` as rank `rank` of `link`'s world would have built it."""
    if isinstance(plan, IndexPlan):
        return dataclasses.replace(
            plan, rank=rank, world_size=link.world_size, batch_size=link.batch_size
        )
    return dataclasses.replace(
        plan,
        rank=rank,
        world_size=link.world_size,
        batch_size=link.batch_size,
        num_workers=max(1, link.num_workers),
    )


def rank_sequence(plan: ReadPlan, epoch: int) -> np.ndarray:
    """The keys of the rank's block in sequence order (its share of the reference set)."""
    if isinstance(plan, IndexPlan):
        return plan.rank_indices(epoch).astype(np.int64)
    start, count = plan.rank_samples()
    return sequence_keys(plan, epoch, start, count)


def shuffled(keys: np.ndarray, buffer: int, seed: int) -> np.ndarray:
    """`keys` in the order webdataset's shuffle buffer yields them (the rng as wds.py seeds it)."""
    import webdataset as wds  # deferred: only wds plans need it, and the folder backend does not

    stage = wds.shuffle(buffer, initial=buffer, rng=random.Random(seed))
    return np.array([sample["__index__"] for sample in stage(iter(_tagged(keys)))], np.int64)


def _tagged(keys: np.ndarray):
    for key in keys:
        yield {"__index__": int(key)}


def first_plan_consumed(plan: ReadPlan, link: PlanLink, epoch: int, rank: int) -> np.ndarray:
    """Keys rank `rank` consumed in its first `link.batches` batches of the epoch's first plan."""
    mine = rank_plan(plan, link, rank)
    taken = link.batches * link.batch_size
    if isinstance(mine, IndexPlan):
        return mine.rank_indices(epoch)[:taken].astype(np.int64)
    if link.backend == "dali":
        starts = dict(zip(mine.paths, mine.shard_starts()))
        order = mine.permuted_rank_order(epoch)[:taken]
        return np.array([starts[tar] + sample for tar, sample in order], np.int64)
    parts = []
    for worker in range(mine.num_workers):  # wds: batch j came from worker j % num_workers
        block = mine.worker_block(epoch, worker)
        keys = sequence_keys(mine, epoch, block.first_position, block.size)
        if mine.train:
            seed = stream_seed(mine.seed, Purpose.SHUFFLE_BUFFER, epoch, rank=rank, sub=worker)
            keys = shuffled(keys, link.shuffle_buffer, seed)
        parts.append(keys[: len(range(worker, link.batches, mine.num_workers)) * link.batch_size])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def layout_sizes(count: int, batch_size: int, accum: int, batches: int) -> tuple[int, ...]:
    """Micro-batch sizes for `count` samples in `batches` micro-batches (a multiple of accum):
    whole batches, then the last optimizer step's `accum` micro-batches share the rest evenly."""
    if batches == 0:
        return ()
    full = batches - accum
    rest = count - full * batch_size
    assert rest >= accum, f"{count} samples cannot fill {batches} micro-batches"
    tail = [rank_range(rest, micro, accum) for micro in range(accum)]
    return (batch_size,) * full + tuple(stop - start for start, stop in tail)


def layout_batches(
    count: int, world_size: int, batch_size: int, accum: int, max_batches: int
) -> int:
    """The micro-batches per rank for `count` samples over `world_size` ranks: whole steps of
    whole batches, one more step for the rest if every rank can give each of its micro-batches
    a sample, else the rest joins the last step; at most `max_batches` (the new plan's epoch)."""
    smallest = count // world_size
    largest = -(-count // world_size)
    step_samples = batch_size * accum
    batches = -(-largest // step_samples) * accum
    batches = min(batches, max_batches - max_batches % accum)
    if batches and smallest - (batches - accum) * batch_size < accum:
        batches -= accum  # some rank's last step would hold an empty micro-batch
    if smallest < accum:
        return 0  # fewer samples left on a rank than micro-batches in a step
    return batches


def remaining_keys(plan: ReadPlan, links: Sequence[PlanLink], epoch: int) -> np.ndarray:
    """The reference sequence of the epoch minus what every link consumed, in sequence order."""
    first = links[0]
    sequence = [rank_sequence(rank_plan(plan, first, r), epoch) for r in range(first.world_size)]
    consumed = [first_plan_consumed(plan, first, epoch, r) for r in range(first.world_size)]
    keys = np.concatenate(sequence)
    keys = keys[~np.isin(keys, np.concatenate(consumed))]
    for link in links[1:]:  # remainder plans: each rank consumed the head of its part
        taken = []
        for rank in range(link.world_size):
            start, stop = rank_range(len(keys), rank, link.world_size)
            sizes = layout_sizes(stop - start, link.batch_size, link.accum, link.planned)
            taken.append(keys[start : start + sum(sizes[: link.batches])])
        keys = keys[~np.isin(keys, np.concatenate(taken))] if taken else keys
    return keys


def plan_remainder(
    plan: ReadPlan,
    links: Sequence[PlanLink],
    epoch: int,
    new: PlanLink,
    rank: int,
    max_batches: int,
) -> EpochRemainder:
    """Rank `rank`'s part of what `links` left of `epoch`, laid out for the plan `new` in at most
    `max_batches` micro-batches (the new plan's epoch). `new.planned` > 0 keeps that layout (the
    same remainder, continued)."""
    keys = remaining_keys(plan, links, epoch)
    batches = new.planned or layout_batches(
        len(keys), new.world_size, new.batch_size, new.accum, max_batches
    )
    start, stop = rank_range(len(keys), rank, new.world_size)
    sizes = layout_sizes(stop - start, new.batch_size, new.accum, batches)
    return EpochRemainder(
        epoch=epoch,
        keys=keys[start : start + sum(sizes)],
        sizes=sizes,
        first_batch=max_batches - batches,
        history=tuple(links),
        link=dataclasses.replace(new, batches=0, planned=batches),
        remaining=len(keys),
        left_out=len(keys) if not batches else 0,
    )
