"""Rank and worker arithmetic, checked without a process group over many world sizes."""

from __future__ import annotations

import itertools

import pytest

from pipeline.data.plans import IndexPlan, ShardReadPlan

CASES = list(itertools.product([1, 2, 3, 5, 8], [7, 64, 101], [1, 4]))  # world, samples, batch


@pytest.mark.parametrize(("world", "samples", "batch"), CASES)
def test_index_plan_val_covers_every_sample_once_and_train_counts_are_equal(world, samples, batch):
    val = [IndexPlan(samples, batch, rank, world, train=False, seed=0) for rank in range(world)]
    seen = [int(index) for plan in val for indices in plan.batches(0) for index in indices]
    assert sorted(seen) == list(range(samples))
    train = [IndexPlan(samples, batch, rank, world, train=True, seed=0) for rank in range(world)]
    counts = {plan.num_batches(0) for plan in train}
    assert counts == {samples // world // batch}
    chosen = [int(index) for plan in train for indices in plan.batches(3) for index in indices]
    assert len(chosen) == len(set(chosen)) == world * (samples // world // batch) * batch


def shard_counts(total: int, shard_size: int) -> tuple[int, ...]:
    return tuple(
        [shard_size] * (total // shard_size) + ([total % shard_size] if total % shard_size else [])
    )


@pytest.mark.parametrize(("world", "samples", "batch"), CASES)
@pytest.mark.parametrize("workers", [1, 3])
def test_shard_plan_splits_by_rank_then_worker_exactly(world, samples, batch, workers):
    counts = shard_counts(samples, 10)
    paths = tuple(f"shard{index}.tar" for index in range(len(counts)))

    def positions(plan: ShardReadPlan, epoch: int) -> list[tuple[str, int]]:
        """(tar, sample number) of every sample the rank's workers read, worker by worker."""
        read = []
        for worker in range(workers):
            block = plan.worker_block(epoch, worker)
            assert sum(segment.take for segment in block.segments) == block.size
            read.extend(
                (segment.path, segment.skip + offset)
                for segment in block.segments
                for offset in range(segment.take)
            )
        return read

    everything = [(path, number) for path, count in zip(paths, counts) for number in range(count)]
    val = [
        ShardReadPlan(paths, counts, batch, rank, world, workers, train=False, seed=0)
        for rank in range(world)
    ]
    assert sorted(sample for plan in val for sample in positions(plan, 0)) == sorted(everything)
    for rank, plan in enumerate(
        val
    ):  # rank r holds [N*r//W, N*(r+1)//W), with a partial last batch
        size = samples * (rank + 1) // world - samples * rank // world
        assert plan.num_batches() == -(-size // batch)
    train = [
        ShardReadPlan(paths, counts, batch, rank, world, workers, train=True, seed=0)
        for rank in range(world)
    ]
    assert {plan.num_batches() for plan in train} == {samples // world // batch}
    for epoch in (0, 1):
        read = [sample for plan in train for sample in positions(plan, epoch)]
        assert len(read) == len(set(read)) == world * (samples // world // batch) * batch


def test_shard_order_changes_per_epoch_and_repeats_per_seed():
    counts = (10,) * 12
    paths = tuple(f"shard{index}.tar" for index in range(12))
    plan = ShardReadPlan(paths, counts, 4, 0, 1, 1, train=True, seed=5)
    assert list(plan.shard_order(0)) != list(plan.shard_order(1))
    assert list(plan.shard_order(1)) == list(
        ShardReadPlan(paths, counts, 4, 0, 1, 1, train=True, seed=5).shard_order(1)
    )
    assert list(plan.shard_order(1)) != list(
        ShardReadPlan(paths, counts, 4, 0, 1, 1, train=True, seed=6).shard_order(1)
    )


def test_a_slice_starting_inside_a_tar_seeks_to_the_same_samples_a_sequential_read_finds(
    tiny_shards,
):
    from pipeline.data.plans import Segment
    from pipeline.data.wds import read_segments, sample_offset

    tar = str(tiny_shards["train"] / "imagenet-train-000002.tar")
    assert sample_offset(tar, 0) == 0 and sample_offset(tar, 4) > 0
    whole = [sample["__key__"] for sample in read_segments(iter([Segment(tar, 0, 10)]))]
    assert len(whole) == 10
    for skip in range(1, 10):
        sliced = [
            sample["__key__"] for sample in read_segments(iter([Segment(tar, skip, 10 - skip)]))
        ]
        assert sliced == whole[skip:]
    for skip, take in [(3, 2), (7, 1)]:
        samples = list(read_segments(iter([Segment(tar, skip, take)])))
        assert [sample["__key__"] for sample in samples] == whole[skip : skip + take]
        assert all(set(sample) >= {"jpg", "cls", "json"} for sample in samples)


def test_a_missing_or_shifted_index_falls_back_to_reading_the_tar_from_the_start(
    tiny_shards, tmp_path
):
    import shutil

    from pipeline.data.plans import Segment
    from pipeline.data.wds import read_segments, sample_offset

    tar = str(
        shutil.copy(
            tiny_shards["train"] / "imagenet-train-000002.tar",
            tmp_path / "imagenet-train-000002.tar",
        )
    )
    whole = [sample["__key__"] for sample in read_segments(iter([Segment(tar, 0, 10)]))]
    assert sample_offset(tar, 3) == 0  # no index next to the copy
    assert [sample["__key__"] for sample in read_segments(iter([Segment(tar, 3, 7)]))] == whole[3:]
    lines = (tiny_shards["train"] / "imagenet-train-000002.idx").read_text().splitlines()
    shifted = [lines[0]] + [
        " ".join(
            str(int(f) + 512) if f.isdigit() and i % 4 == 1 else f
            for i, f in enumerate(line.split())
        )
        for line in lines[1:]
    ]
    (tmp_path / "imagenet-train-000002.idx").write_text("\n".join(shifted) + "\n")
    assert sample_offset(tar, 3) == 0  # the header it points at is not the named member's
    assert [sample["__key__"] for sample in read_segments(iter([Segment(tar, 3, 7)]))] == whole[3:]


def test_with_one_train_shard_each_epoch_drops_other_samples_and_val_drops_none():
    def read(plan: ShardReadPlan, epoch: int) -> set[int]:
        block = plan.worker_block(epoch, 0)
        return {
            segment.skip + offset for segment in block.segments for offset in range(segment.take)
        }

    counts = (61,)  # 2 ranks x 7 batches of 4 = 56 read, 5 dropped per epoch
    plans = [
        ShardReadPlan(("only.tar",), counts, 4, rank, 2, 1, train=True, seed=3) for rank in range(2)
    ]
    dropped = []
    for epoch in range(4):
        rank0, rank1 = read(plans[0], epoch), read(plans[1], epoch)
        assert len(rank0) == len(rank1) == 28 and not rank0 & rank1
        dropped.append(frozenset(set(range(61)) - rank0 - rank1))
    assert len(set(dropped)) == 4, "the same tail is dropped every epoch"
    val = [
        ShardReadPlan(("only.tar",), counts, 4, rank, 2, 1, train=False, seed=3)
        for rank in range(2)
    ]
    assert sorted(read(val[0], 0) | read(val[1], 0)) == list(range(61))


def _tar_reader_samples(tar: str, skip: int, take: int) -> list[dict]:
    """webdataset's own reader: every member's header parsed, the truth for the indexed read."""
    import itertools

    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(tar, "rb") as stream:
        members = tar_file_expander([{"url": tar, "stream": stream}])
        return list(itertools.islice(group_by_keys(members), skip, skip + take))


def test_slices_read_by_the_index_are_webdatasets_samples_and_parse_no_tar_header(
    tiny_shards, monkeypatch
):
    from pipeline.data import wds
    from pipeline.data.plans import Segment

    tar = str(tiny_shards["train"] / "imagenet-train-000002.tar")
    expected = _tar_reader_samples(tar, 0, 10)

    def no_tar_reader(*args, **kwargs):
        raise AssertionError("the indexed read parsed the tar")

    monkeypatch.setattr(wds, "tar_file_expander", no_tar_reader)
    for skip, take in [(0, 10), (3, 2), (7, 3), (9, 1)]:
        got = list(wds.read_segments(iter([Segment(tar, skip, take, shard_start=100)])))
        assert [{k: v for k, v in s.items() if k != "__index__"} for s in got] == expected[
            skip : skip + take
        ]
        assert [s["__index__"] for s in got] == list(range(100 + skip, 100 + skip + take))
        assert all(isinstance(s["jpg"], memoryview) and s["jpg"].readonly for s in got)


def test_where_a_shard_cannot_be_mapped_each_sample_is_read_and_the_same(tiny_shards, monkeypatch):
    """Some FUSE mounts refuse mmap (ENODEV): the reader falls back to a pread a sample."""
    import errno
    import mmap

    from pipeline.data import wds
    from pipeline.data.plans import Segment

    tar = str(tiny_shards["train"] / "imagenet-train-000002.tar")
    expected = _tar_reader_samples(tar, 2, 6)

    def no_mapping(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(mmap, "mmap", no_mapping)
    got = list(wds.read_segments(iter([Segment(tar, 2, 6)])))
    assert [{k: v for k, v in s.items() if k != "__index__"} for s in got] == expected
    assert all(type(s["jpg"]) is bytes for s in got)


def test_an_index_that_disagrees_with_the_tar_or_has_no_names_is_not_used(tiny_shards, tmp_path):
    import shutil

    from pipeline.data import wds
    from pipeline.data.plans import Segment

    source = tiny_shards["train"] / "imagenet-train-000002"
    tar = str(shutil.copy(f"{source}.tar", tmp_path / "imagenet-train-000002.tar"))
    expected = _tar_reader_samples(tar, 2, 6)
    lines = source.with_suffix(".idx").read_text().splitlines()
    index = tmp_path / "imagenet-train-000002.idx"
    shifted = [lines[0]] + [
        " ".join(str(int(f) + 512) if i % 4 == 1 else f for i, f in enumerate(line.split()))
        for line in lines[1:]
    ]
    v11 = ["v1.1 " + lines[0].split(" ", 1)[1]] + [
        " ".join(f for i, f in enumerate(line.split()) if i % 4 != 3) for line in lines[1:]
    ]
    fields = lines[5].split()  # a middle sample: the tar's headers at the slice's ends agree
    fields[7] = "other_key." + fields[7].split(".", 1)[1]  # its cls under another key
    two_keys = lines[:5] + [" ".join(fields)] + lines[6:]
    for variant in (shifted, v11, two_keys):
        index.write_text("\n".join(variant) + "\n")
        segment = Segment(tar, 2, 6)
        assert wds._indexed_members(tar, segment, None) is None
        got = [
            {k: v for k, v in s.items() if k != "__index__"}
            for s in wds.read_segments(iter([segment]))
        ]
        assert got == expected


def test_sample_names_split_as_webdatasets_base_plus_ext():
    """The string-method split of a member name is webdataset's regex's answer, for plain
    names and for every odd one (hidden files, dots in folders, no dot, newlines)."""
    from webdataset.tariterators import base_plus_ext

    from pipeline.data import wds

    names = [
        "n01440764_10026.cls",
        "n01440764_10026.jpg",
        "train/n01440764/n01440764_10026.JPEG",
        "a.b.c",
        "dir.v2/key.tar.gz",
        "dir/.hidden.jpg",
        ".hidden",
        "dir/noext",
        "noext",
        "a.b/c",
        "key.",
        "/abs/key.jpg",
        "x/y\nz/k.j",
        "key.jpg\n",
        "a\nb/c.d",
        "",
        "/",
        "dir/",
        "__key__.json",
    ]
    for name in names:
        assert wds._name_parts(name) == base_plus_ext(name), repr(name)
