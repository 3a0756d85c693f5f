"""Every mistake a user can make with data paths gets one LoaderError line saying what to do."""

from __future__ import annotations

import json
import shutil

import pytest
from loaderfixtures import single_rank, tiny_config

import pipeline.data.dali as dali_module
from pipeline.data import build_loader
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("backend", ["folder", "wds", "dali"])
def test_a_missing_directory_is_named(tmp_path, backend):
    with pytest.raises(LoaderError) as err:
        build_loader(
            tiny_config(tmp_path / "nope", tmp_path / "nope", backend=backend),
            "train",
            single_rank(),
        )
    assert_one_line(err, "data.train_dir", "does not exist")


@pytest.mark.parametrize("backend", ["folder", "wds", "dali"])
def test_an_empty_directory_is_named(tmp_path, backend):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoaderError) as err:
        build_loader(
            tiny_config(tmp_path / "empty", tmp_path / "empty", backend=backend),
            "val",
            single_rank(),
        )
    assert_one_line(err, "data.val_dir", "is empty")


def test_class_folders_without_images_are_rejected(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(LoaderError) as err:
        build_loader(tiny_config(tmp_path / "train", tmp_path / "train"), "train", single_rank())
    assert_one_line(err, "no images")


def test_folder_backend_pointed_at_shards_says_to_use_wds_or_dali(tiny_shards):
    with pytest.raises(LoaderError) as err:
        build_loader(
            tiny_config(tiny_shards["train"], tiny_shards["val"], backend="folder"),
            "train",
            single_rank(),
        )
    assert_one_line(err, "data.backend=wds")


def test_wds_backend_pointed_at_class_folders_says_how_to_shard(tiny_folders):
    with pytest.raises(LoaderError) as err:
        build_loader(
            tiny_config(tiny_folders["train"], tiny_folders["val"], backend="wds"),
            "train",
            single_rank(),
        )
    assert_one_line(err, "manifest.json", "preprocess shard")


@pytest.mark.parametrize("backend", ["wds", pytest.param("dali", marks=pytest.mark.dali)])
def test_shards_of_the_other_split_are_rejected(tiny_shards, backend):
    cfg = tiny_config(tiny_shards["val"], tiny_shards["train"], backend=backend)  # swapped
    with pytest.raises(LoaderError) as err:
        build_loader(cfg, "train", single_rank())
    assert_one_line(err, "'val' shards but 'train' was asked for")


@pytest.mark.parametrize("backend", ["wds", pytest.param("dali", marks=pytest.mark.dali)])
def test_a_manifest_that_does_not_match_its_tars_is_rejected(tiny_shards, tmp_path, backend):
    copy = shutil.copytree(tiny_shards["val"], tmp_path / "val")
    with open(copy / "imagenet-val-000002.tar", "ab") as handle:
        handle.write(b"\0" * 512)  # a tar that is no longer the one the manifest describes
    with pytest.raises(LoaderError) as err:
        build_loader(tiny_config(tiny_shards["train"], copy, backend=backend), "val", single_rank())
    assert_one_line(err, "imagenet-val-000002.tar", "does not match")
    (copy / "imagenet-val-000002.tar").unlink()
    with pytest.raises(LoaderError) as err:
        build_loader(tiny_config(tiny_shards["train"], copy, backend=backend), "val", single_rank())
    assert_one_line(err, "missing")


def test_a_malformed_manifest_is_rejected(tiny_shards, tmp_path):
    copy = shutil.copytree(tiny_shards["val"], tmp_path / "val")
    data = json.loads((copy / "manifest.json").read_text())
    data["shards"][0]["count"] += 1
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(LoaderError) as err:
        build_loader(tiny_config(tiny_shards["train"], copy, backend="wds"), "val", single_rank())
    assert_one_line(err, "class counts")


@pytest.mark.dali
def test_dali_index_that_disagrees_with_the_manifest_is_rejected(tiny_shards, tmp_path):
    copy = shutil.copytree(tiny_shards["val"], tmp_path / "val")
    index = copy / "imagenet-val-000001.idx"
    lines = index.read_text().splitlines()
    index.write_text(f"v1.2 {len(lines) - 2}\n" + "\n".join(lines[1:-1]) + "\n")
    with pytest.raises(LoaderError) as err:
        build_loader(tiny_config(tiny_shards["train"], copy, backend="dali"), "val", single_rank())
    assert_one_line(err, "imagenet-val-000001.idx", "does not match")


def test_dali_without_dali_installed_says_what_to_install(tiny_folders, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_dali)
    with pytest.raises(LoaderError) as err:
        build_loader(
            tiny_config(tiny_folders["train"], tiny_folders["val"], backend="dali"),
            "train",
            single_rank(),
        )
    assert_one_line(err, "nvidia-dali", "data.backend=folder")


@pytest.mark.dali
def test_mixed_decoding_without_a_gpu_says_to_use_cpu(tiny_folders):
    cfg = tiny_config(
        tiny_folders["train"], tiny_folders["val"], backend="dali", dali_decode="mixed"
    )
    with pytest.raises(LoaderError) as err:
        build_loader(cfg, "train", single_rank())
    assert_one_line(err, "data.dali_decode=cpu")
    assert dali_module.resolve_decode("auto", single_rank()) == "cpu"


def test_a_global_batch_that_does_not_divide_over_ranks_and_accumulation_is_rejected(tiny_folders):
    cfg = tiny_config(tiny_folders["train"], tiny_folders["val"], global_batch_size=12)
    from pipeline.config import replace

    cfg = replace(cfg, "optim", grad_accum_steps=2)
    with pytest.raises(LoaderError) as err:
        build_loader(cfg, "train", DistInfo(rank=0, world_size=4))
    assert_one_line(err, "12", "world size 4", "multiple of 8")


def test_too_few_images_for_one_batch_is_rejected(tiny_folders):
    cfg = tiny_config(tiny_folders["train"], tiny_folders["val"], global_batch_size=64)
    with pytest.raises(LoaderError) as err:
        build_loader(cfg, "train", single_rank())
    assert_one_line(err, "no full batch")


def test_val_folders_missing_a_class_keep_the_train_class_indices(tiny_folders, tmp_path):
    from loaderfixtures import WNIDS, decode_identity

    for wnid in (WNIDS[1], WNIDS[5]):
        shutil.copytree(tiny_folders["val"] / wnid, tmp_path / "val" / wnid)
    loader = build_loader(
        tiny_config(tiny_folders["train"], tmp_path / "val"), "val", single_rank()
    )
    assert loader.classes == WNIDS
    labels = [label for _, batch_labels in loader for label in batch_labels.tolist()]
    assert sorted(set(labels)) == [1, 5]
    images, batch_labels = next(iter(loader))
    assert [class_index for class_index, _ in decode_identity(images)] == batch_labels.tolist()


@pytest.mark.parametrize("backend", ["wds", pytest.param("dali", marks=pytest.mark.dali)])
def test_val_shards_with_other_classes_than_train_are_rejected(tiny_shards, tmp_path, backend):
    from loaderfixtures import WNIDS, make_shards

    for wnid in (WNIDS[1], WNIDS[5]):
        shutil.copytree(tiny_shards["root"] / "folders" / "val" / wnid, tmp_path / "folders" / wnid)
    shards = make_shards(tmp_path / "folders", tmp_path / "val", "val", 4)
    with pytest.raises(LoaderError) as err:
        build_loader(
            tiny_config(tiny_shards["train"], shards, backend=backend), "val", single_rank()
        )
    assert_one_line(err, "lists 2 classes but the train data lists 8", "empty folder")


def test_a_resume_point_past_the_end_of_the_epoch_is_a_loader_error_saying_what_to_do(tiny_folders):
    loader = build_loader(
        tiny_config(tiny_folders["train"], tiny_folders["val"]), "train", single_rank()
    )
    with pytest.raises(
        LoaderError, match="past the end of train epoch 0: this rank plans 7 batches"
    ):
        loader.set_epoch(0, start_batch=len(loader) + 1)


@pytest.mark.dali
def test_dali_shards_with_older_v1_1_indexes_are_read_with_their_own_index_version(
    tiny_shards, tmp_path
):
    from loaderfixtures import decode_identity

    copy = shutil.copytree(tiny_shards["val"], tmp_path / "val")
    for index in copy.glob("*.idx"):  # v1.1: (ext, offset, size) per member, no file names
        header, *lines = index.read_text().splitlines()
        older = [
            " ".join(f for position, f in enumerate(line.split()) if position % 4 != 3)
            for line in lines
        ]
        index.write_text(f"v1.1 {header.split()[1]}\n" + "\n".join(older) + "\n")
    loader = build_loader(
        tiny_config(tiny_shards["train"], copy, backend="dali"), "val", single_rank()
    )
    seen = [sample_id for images, _ in loader for _, sample_id in decode_identity(images)]
    assert sorted(seen) == sorted(sample_id for _, sample_id in tiny_shards["val_ids"])
    written = list(loader.workdir.glob("*.idx"))
    assert written and all(path.read_text().startswith("v1.1 ") for path in written)


def corrupt_first_image(directory, layout):
    """Overwrite the first image's bytes with zeros (same size, so tars and manifests still line
    up)."""
    import tarfile

    if layout == "tiny_folders":
        image = min(directory.glob("*/*.JPEG"))
        image.write_bytes(b"\0" * image.stat().st_size)
        return str(image)
    tar_path = min(directory.glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    with open(tar_path, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(b"\0" * member.size)
    return str(tar_path)


@pytest.mark.parametrize(
    ("backend", "layout"), [("folder", "tiny_folders"), ("wds", "tiny_shards")]
)
@pytest.mark.parametrize(
    ("workers", "kind"), [(0, "threads"), (2, "threads"), (0, "processes"), (2, "processes")]
)
def test_an_image_that_does_not_decode_is_one_line_naming_it_even_from_a_loader_worker(
    request, tmp_path, backend, layout, workers, kind
):
    from pipeline.errors import SampleDecodeError

    data = request.getfixturevalue(layout)
    val = shutil.copytree(data["val"], tmp_path / "val")
    source = corrupt_first_image(val, layout)
    cfg = tiny_config(data["train"], val, backend=backend, num_workers=workers, worker_kind=kind)
    loader = build_loader(cfg, "val", single_rank())
    with pytest.raises(SampleDecodeError) as err:
        list(loader)
    assert_one_line(err, source, "cannot decode", f"python -m preprocess verify {val} --decode")
    assert "Caught" not in str(err.value) and "Traceback" not in str(err.value)
    # where it was raised is kept aside: torch's report from a worker process, or the thread's
    where = "worker process" if kind == "processes" else "Raised in loader thread"
    assert (where in err.value.worker_report) == (workers > 0)


@pytest.mark.parametrize(
    ("backend", "layout"), [("folder", "tiny_folders"), ("wds", "tiny_shards")]
)
def test_a_train_image_that_does_not_decode_is_one_line_naming_it(
    request, tmp_path, backend, layout
):
    """The batch call hands the damaged file back; the per-sample path names it."""
    from pipeline.errors import SampleDecodeError

    data = request.getfixturevalue(layout)
    train = shutil.copytree(data["train"], tmp_path / "train")
    source = corrupt_first_image(train, layout)
    loader = build_loader(tiny_config(train, data["val"], backend=backend), "train", single_rank())
    with pytest.raises(SampleDecodeError) as err:
        list(loader)
    assert_one_line(err, source, "cannot decode")


def test_a_shard_label_that_is_not_a_number_is_one_line_naming_its_shard_and_key(
    tiny_shards, tmp_path
):
    import tarfile

    train = shutil.copytree(tiny_shards["train"], tmp_path / "train")
    tar_path = min(train.glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".cls"))
    with open(tar_path, "r+b") as handle:  # same size: the index and manifest still agree
        handle.seek(member.offset_data)
        handle.write(b"x" * member.size)
    loader = build_loader(
        tiny_config(train, tiny_shards["val"], backend="wds"), "train", single_rank()
    )
    with pytest.raises(LoaderError) as err:
        list(loader)
    assert_one_line(err, str(tar_path), repr(member.name.rsplit(".", 1)[0]))
