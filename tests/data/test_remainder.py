"""The rest of an interrupted epoch under another plan (pipeline/data/remainder.py), without a
process group: the consumed set replayed from the plan alone matches what a loader really
yielded, and the new ranks' parts are disjoint and complete."""

from __future__ import annotations

import numpy as np
import pytest
from loaderfixtures import decode_identity, tiny_config

from pipeline.data.plans import IndexPlan
from pipeline.data.remainder import (
    PlanLink,
    first_plan_consumed,
    layout_batches,
    layout_sizes,
    plan_remainder,
    rank_plan,
    rank_sequence,
)
from pipeline.distributed import DistInfo


def link(backend="folder", world=2, batch=4, accum=1, workers=1, batches=0, planned=0):
    return PlanLink(backend, world, batch, accum, workers, 16, batches, planned)


def reference(plan, first: PlanLink, epoch: int) -> np.ndarray:
    parts = [rank_sequence(rank_plan(plan, first, r), epoch) for r in range(first.world_size)]
    return np.concatenate(parts)


def new_ranks_read(plan, links, epoch, new: PlanLink, max_batches: int) -> list:
    parts = [plan_remainder(plan, links, epoch, new, r, max_batches) for r in range(new.world_size)]
    assert len({part.num_batches for part in parts}) == 1, "every rank the same batch count"
    assert all(0 < size <= new.batch_size + 1 for part in parts for size in part.sizes)
    return parts


@pytest.mark.parametrize(
    "old, new",
    [
        (link(world=2, batch=4, batches=3), link(world=1, batch=12)),
        (link(world=1, batch=8, batches=2), link(world=2, batch=3, accum=2)),
        (link(world=3, batch=5, batches=1), link(world=2, batch=6)),
    ],
)
def test_the_rest_of_an_epoch_is_every_unread_key_once_over_the_new_ranks(old, new):
    plan = IndexPlan(61, old.batch_size, 0, old.world_size, True, seed=3)
    consumed = np.concatenate([first_plan_consumed(plan, old, 1, r) for r in range(old.world_size)])
    new_plan = IndexPlan(61, new.batch_size, 0, new.world_size, True, seed=3)
    max_batches = new_plan.num_batches() - new_plan.num_batches() % new.accum
    parts = new_ranks_read(plan, [old], 1, new, max_batches)
    rest = np.concatenate([part.keys for part in parts])
    everything = np.concatenate([consumed, rest])
    assert len(set(everything.tolist())) == len(everything)  # nothing twice
    assert sorted(everything.tolist()) == sorted(reference(plan, old, 1).tolist())  # nothing lost
    assert parts[0].first_batch + parts[0].num_batches == max_batches


def test_a_remainder_interrupted_again_under_a_third_plan_still_reads_each_key_once():
    old = link(world=2, batch=4, batches=2)
    plan = IndexPlan(61, 4, 0, 2, True, seed=3)
    second = plan_remainder(plan, [old], 0, link(world=1, batch=6), 0, 10)
    read_second = np.concatenate([second.batch_keys(b) for b in range(3)])
    links = [old, PlanLink(**{**second.link.as_dict(), "batches": 3})]
    parts = new_ranks_read(plan, links, 0, link(world=3, batch=2), 10)
    first = np.concatenate([first_plan_consumed(plan, old, 0, r) for r in range(2)])
    everything = np.concatenate([first, read_second, *[part.keys for part in parts]])
    assert sorted(everything.tolist()) == sorted(reference(plan, old, 0).tolist())


def test_layout_gives_whole_batches_then_a_last_step_shared_evenly():
    assert layout_sizes(56, 6, 1, 10) == (6,) * 9 + (2,)
    assert layout_sizes(23, 4, 2, 6) == (4, 4, 4, 4, 3, 4)
    # 11 samples on 2 ranks of 5: a third batch would leave rank 0 none, so it joins the second
    assert layout_batches(11, 2, 5, 1, 100) == 1
    assert layout_sizes(6, 5, 1, 1) == (6,)
    assert layout_batches(40, 1, 8, 1, 3) == 3  # never past the new plan's epoch
    assert layout_batches(1, 2, 8, 1, 10) == 0  # fewer samples than ranks: left out


def test_the_wds_consumed_set_replayed_through_the_shuffle_buffer_is_what_the_loader_yielded(
    tiny_shards,
):
    """2 loader workers and a shuffle buffer: the keys of rank 1's first 3 batches (of 2 ranks)
    are those the replay computes from the plan alone."""
    from pipeline.data.classes import resolve_classes
    from pipeline.data.wds import WdsLoader

    cfg = tiny_config(
        tiny_shards["train"], tiny_shards["val"], "wds", num_workers=2, shuffle_buffer=5
    )
    dist = DistInfo(rank=1, world_size=2)
    loader = WdsLoader(cfg, "train", dist, tiny_shards["train"], 4, resolve_classes(cfg))
    loader.set_epoch(1)
    batches = loader._iterate()  # no process group here: the batch-count all-gather is skipped
    yielded = np.concatenate([next(batches)[2].numpy() for _ in range(3)])
    old = link("wds", world=2, batch=4, workers=2, batches=3)
    old = PlanLink(**{**old.as_dict(), "shuffle_buffer": cfg.data.shuffle_buffer})
    assert sorted(yielded.tolist()) == sorted(first_plan_consumed(loader.plan, old, 1, 1).tolist())


@pytest.mark.parametrize(
    "backend, data",
    [
        ("folder", "tiny_folders"),
        ("wds", "tiny_shards"),
        pytest.param("dali", "tiny_folders", marks=pytest.mark.dali),
        pytest.param("dali", "tiny_shards", marks=pytest.mark.dali),
    ],
)
def test_each_backend_reads_exactly_the_remainders_keys_in_its_batch_sizes(backend, data, request):
    """Rank 1 of 2 (per-rank batch 4), the rest of epoch 1 after 2 ranks x 3 read 3 batches,
    resumed at its second batch: the loader hands over exactly those keys, batch by batch."""
    from pipeline.data import build_loader

    split = request.getfixturevalue(data)
    cfg = tiny_config(split["train"], split["val"], backend, num_workers=2, shuffle_buffer=5)
    dist = DistInfo(rank=1, world_size=2)
    loader = build_loader(cfg, "train", dist)
    old = link(backend, world=3, batch=3, workers=2, batches=3)
    old = PlanLink(**{**old.as_dict(), "shuffle_buffer": 5})
    new = link(backend, world=2, batch=4, workers=2)
    remainder = plan_remainder(loader.plan, [old], 1, new, 1, loader.batches_per_epoch())
    loader.set_remainder(remainder)
    loader.set_epoch(1, start_batch=remainder.first_batch + 1)
    batches = list(loader._iterate())  # no process group here: no batch-count all-gather
    got = [keys.tolist() for _, _, keys in batches]
    expected = [remainder.batch_keys(b).tolist() for b in range(1, remainder.num_batches)]
    assert got == expected and len(got) == len(loader) > 1
    if data == "tiny_folders":  # file index == sample id there: the pixels are those samples
        decoded = [decode_identity(images.permute(0, 3, 1, 2)) for images, _, _ in batches]
        assert [[sample for _, sample in batch] for batch in decoded] == expected
