"""Two real gloo ranks (spawned processes): the distributed promises of every backend."""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp
from loaderfixtures import free_port, two_rank_worker


@pytest.fixture(scope="module")
def two_rank_report(tiny_shards, tiny_folders, tmp_path_factory):
    """What each of 2 ranks saw, per backend and layout (one spawn for all, to keep CI short)."""
    combos = [  # (backend, train, val, loader workers)
        ("folder", str(tiny_folders["train"]), str(tiny_folders["val"]), 0),
        ("wds", str(tiny_shards["train"]), str(tiny_shards["val"]), 0),
        ("wds", str(tiny_shards["train"]), str(tiny_shards["val"]), 2),
        ("dali", str(tiny_folders["train"]), str(tiny_folders["val"]), 0),
        ("dali", str(tiny_shards["train"]), str(tiny_shards["val"]), 0),
    ]
    out = tmp_path_factory.mktemp("two-ranks")
    mp.spawn(two_rank_worker, args=(2, free_port(), combos, str(out)), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    return {key: [ranks[0][key], ranks[1][key]] for key in ranks[0]}


KEYS = ["folder:folders", "wds:shards", "wds:shards:2workers", "dali:folders", "dali:shards"]


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS)
def test_val_is_visited_exactly_once_across_two_ranks(two_rank_report, tiny_folders, key):
    rank0, rank1 = two_rank_report[key]
    union = rank0["val_ids"] + rank1["val_ids"]
    assert sorted(union) == sorted(
        sample_id for _, sample_id in tiny_folders["val_ids"]
    )  # no duplicates, no drops
    assert rank0["labels_ok"] and rank1["labels_ok"]


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS)
def test_train_batch_counts_are_equal_on_both_ranks_and_the_ranks_are_disjoint(
    two_rank_report, key
):
    rank0, rank1 = two_rank_report[key]
    # 61 samples (shards of 10, the last holding 1), 4 per rank batch: 30 per rank → 7 batches each
    assert rank0["train_batches"] == rank1["train_batches"] == [7, 7]
    for epoch in (0, 1):
        assert len(rank0["train_ids"][epoch]) == len(rank1["train_ids"][epoch]) == 28
        assert not set(rank0["train_ids"][epoch]) & set(rank1["train_ids"][epoch])


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS)
def test_shuffle_differs_per_epoch_repeats_for_one_seed_and_resume_continues_the_epoch_on_each_rank(
    two_rank_report, key
):
    for rank in two_rank_report[key]:
        assert rank["train_ids"][0] != rank["train_ids"][1]
        assert rank["repeat_ids"] == rank["train_ids"][0]  # a second loader with the same seed
        assert rank["resumed_ids"] == rank["train_ids"][1][2 * 4 :]


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS)
def test_ranks_planning_different_batch_counts_fail_with_a_clear_message(two_rank_report, key):
    for rank in two_rank_report[key]:
        assert "ranks plan different numbers of train batches" in rank["mismatch_error"]
        assert "[7, 6]" in rank["mismatch_error"]
