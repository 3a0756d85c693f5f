"""CIFAR-10/100 and the MNIST family, as downloaded, through `prepare`: every pixel within the
stated JPEG bound, every label, the class names; a broken file is one line.

    .venv/bin/python -m pytest tests/preprocess/test_small_datasets.py -q

Bounds (max |error| per channel value, 0..255), measured with preprocess.images.resize_pixels on
2,000 of smallfixtures' 32 px photo crops and 1,700 28 px digits, and asserted here:
    quality 100, 4:4:4 (the default for these sets)   photos <= 4 (mean 0.45); gray digits <= 1
    quality 95, 4:4:4                                  photos <= 27 (mean 2.35, any image <= 3.3)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from smallfixtures import build_cifar, build_idx
from stderr_lines import problem_lines

from core.classes import class_wnid, read_synset_mapping
from core.shard_format import read_manifest
from preprocess.cli import main
from tools.official_formats import CIFAR10_NAMES, CIFAR100_COARSE_NAMES, CIFAR100_FINE_NAMES

DEFAULT_MAX_ERROR = 4  # quality 100, 4:4:4 on photo crops
DEFAULT_MEAN_ERROR = 0.6
GRAY_MAX_ERROR = 1
Q95_MAX_ERROR = 27
Q95_MEAN_ERROR = 3.3


def shard_samples(directory: Path) -> dict[str, dict[str, bytes]]:
    """key -> {"jpg": .., "cls": .., "json": ..} of every sample in a split's tars."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in read_manifest(directory).shards:
        with tarfile.open(directory / shard.name) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def prepare(raw: Path, dst: Path, *extra: str) -> int:
    return main(["prepare", str(raw), str(dst), "--workers", "1", "--shard-size", "16", *extra])


def pixel_errors(samples, prefix: str, split_arrays) -> tuple[int, float]:
    """(max, mean) |decoded shard pixel - original pixel| over a split; checks every label too."""
    errors = []
    assert len(samples) == len(split_arrays.labels)
    for index, (original, label) in enumerate(zip(split_arrays.images, split_arrays.labels)):
        sample = samples[f"{prefix}_{index:05d}"]
        assert int(sample["cls"]) == label
        assert json.loads(sample["json"])["wnid"] == class_wnid(int(label))
        decoded = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")).astype(int)
        if original.ndim == 2:  # gray: the contract's RGB JPEG holds R = G = B
            original = np.repeat(original[..., None], 3, axis=2)
        assert decoded.shape == original.shape  # no upscaling by default
        errors.append(np.abs(decoded - original.astype(int)))
    stacked = np.stack(errors)
    return int(stacked.max()), float(stacked.mean())


def test_torchvision_reads_the_fixture_archives_as_the_official_files(tmp_path, monkeypatch):
    """The fixtures are the official formats: torchvision's own classes (md5 check off, since
    these are not the real files) read back every image and label."""
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    for family, reader in (("cifar10", CIFAR10), ("cifar100", CIFAR100)):
        fixture = build_cifar(tmp_path / family, family, 2, 1)
        with tarfile.open(fixture.path) as archive:
            archive.extractall(tmp_path / family, filter="data")
        monkeypatch.setattr(reader, "_check_integrity", lambda self: True)
        for train, split in ((True, fixture.train), (False, fixture.test)):
            dataset = reader(str(tmp_path / family), train=train)
            assert np.array_equal(dataset.data, split.images)
            assert dataset.targets == split.labels.tolist()
        names = CIFAR10_NAMES if family == "cifar10" else CIFAR100_FINE_NAMES
        assert tuple(dataset.classes) == names
    digits = build_idx(tmp_path / "MNIST" / "raw", 12, 5)
    for gz in (tmp_path / "MNIST" / "raw").glob("*.gz"):  # torchvision reads them extracted
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
    dataset = MNIST(str(tmp_path), train=False)
    assert np.array_equal(dataset.data.numpy(), digits.test.images)
    assert dataset.targets.tolist() == digits.test.labels.tolist()
    # the pickles are Python 2's: byte-string keys with encoding="bytes", as the originals
    with tarfile.open(build_cifar(tmp_path / "keys", "cifar10", 1, 1).path) as archive:
        batch = archive.extractfile("cifar-10-batches-py/data_batch_1").read()
    assert batch[:2] == b"\x80\x02"  # protocol 2
    assert set(pickle.loads(batch, encoding="bytes")) == {
        b"data",
        b"labels",
        b"filenames",
        b"batch_label",
    }


@pytest.mark.parametrize("archive_given_as", ["file", "folder"])
def test_cifar10_keeps_every_label_and_every_pixel_within_4_levels(
    tmp_path, capsys, archive_given_as
):
    cifar = build_cifar(tmp_path / "raw", "cifar10", train_per_class=4, test_per_class=2)
    before = hashlib.sha256(cifar.path.read_bytes()).hexdigest()
    raw = cifar.path if archive_given_as == "file" else cifar.path.parent
    dst = tmp_path / "out"
    assert prepare(raw, dst) == 0, capsys.readouterr()
    for split, arrays, official in (("train", cifar.train, "train"), ("val", cifar.test, "test")):
        manifest = read_manifest(dst / split)
        assert manifest.dataset == "cifar10" and manifest.short_side == 32
        assert manifest.classes == [f"n{index:08d}" for index in range(10)]
        assert list(manifest.class_names.values()) == list(CIFAR10_NAMES)
        worst, mean = pixel_errors(shard_samples(dst / split), f"cifar10_{official}", arrays)
        assert worst <= DEFAULT_MAX_ERROR and mean <= DEFAULT_MEAN_ERROR, (worst, mean)
    mapping = read_synset_mapping(dst / "LOC_synset_mapping.txt")
    assert mapping == {class_wnid(index): name for index, name in enumerate(CIFAR10_NAMES)}
    # the download is only ever read: same bytes, nothing extracted beside it
    assert hashlib.sha256(cifar.path.read_bytes()).hexdigest() == before
    assert sorted(path.name for path in cifar.path.parent.iterdir()) == [cifar.path.name]
    assert main(["verify", str(dst), "--decode", "--workers", "1"]) == 0


def test_quality_95_keeps_pixels_within_27_levels_and_a_mean_of_3_3(tmp_path, capsys):
    cifar = build_cifar(tmp_path / "raw", "cifar10", train_per_class=4, test_per_class=1)
    assert prepare(cifar.path, tmp_path / "out", "--quality", "95") == 0, capsys.readouterr()
    worst, mean = pixel_errors(
        shard_samples(tmp_path / "out" / "train"), "cifar10_train", cifar.train
    )
    assert worst <= Q95_MAX_ERROR and mean <= Q95_MEAN_ERROR, (worst, mean)
    assert worst > DEFAULT_MAX_ERROR  # it really is lossier than the default


def test_cifar100_has_its_100_fine_classes_in_label_order_and_the_coarse_20_on_request(
    tmp_path, capsys
):
    cifar = build_cifar(tmp_path / "raw", "cifar100", train_per_class=1, test_per_class=1)
    assert prepare(cifar.path, tmp_path / "fine", "--splits", "val") == 0, capsys.readouterr()
    manifest = read_manifest(tmp_path / "fine" / "val")
    # zero-padded ids: sorted order is numeric order, so n00000010 comes after n00000009
    assert manifest.classes == [class_wnid(index) for index in range(100)]
    assert [manifest.class_names[wnid] for wnid in manifest.classes] == list(CIFAR100_FINE_NAMES)
    worst, _ = pixel_errors(shard_samples(tmp_path / "fine" / "val"), "cifar100_test", cifar.test)
    assert worst <= DEFAULT_MAX_ERROR
    coarse = tmp_path / "coarse"
    argv = ("--splits", "val", "--dataset", "cifar100-coarse")
    assert prepare(cifar.path, coarse, *argv) == 0
    manifest = read_manifest(coarse / "val")
    assert manifest.dataset == "cifar100-coarse" and manifest.num_classes == 20
    assert [manifest.class_names[wnid] for wnid in manifest.classes] == list(CIFAR100_COARSE_NAMES)
    samples = shard_samples(coarse / "val")
    assert [int(samples[f"cifar100_test_{i:05d}"]["cls"]) for i in range(len(samples))] == list(
        cifar.coarse_test
    )


@pytest.mark.parametrize(
    ("dataset", "folder"),
    [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")],
)
def test_the_mnist_family_becomes_rgb_within_1_level_with_its_class_names(
    tmp_path, capsys, dataset, folder
):
    # torchvision's layout (ROOT/<Dataset>/raw/) names the dataset, since the files do not
    digits = build_idx(tmp_path / "root" / folder / "raw", 20, 8)
    dst = tmp_path / "out"
    assert prepare(tmp_path / "root", dst) == 0, capsys.readouterr()
    prefix = dataset.replace("-", "_")
    for split, arrays, official in (("train", digits.train, "train"), ("val", digits.test, "test")):
        manifest = read_manifest(dst / split)
        assert manifest.dataset == dataset and manifest.short_side == 28
        worst, _ = pixel_errors(shard_samples(dst / split), f"{prefix}_{official}", arrays)
        assert worst <= GRAY_MAX_ERROR, worst
    names = list(read_manifest(dst / "train").class_names.values())
    assert names[1] == {"mnist": "1 - one", "fashion-mnist": "Trouser", "kmnist": "ki"}[dataset]


def test_idx_files_that_do_not_say_which_dataset_need_dataset_and_short_side_upscales(
    tmp_path, capsys
):
    digits = build_idx(tmp_path / "digits", 10, 4)
    assert prepare(digits.path, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert len(problem_lines(error)) == 1 and "--dataset mnist | fashion-mnist | kmnist" in error
    argv = ("--dataset", "mnist", "--short-side", "64")
    assert prepare(digits.path, tmp_path / "out", *argv) == 0, capsys.readouterr()
    sample = next(iter(shard_samples(tmp_path / "out" / "train").values()))
    assert Image.open(io.BytesIO(sample["jpg"])).size == (64, 64)  # asked for: upscaled
    meta = json.loads(sample["json"])
    assert meta["width"] == 28 and meta["source"].startswith("train-images-idx3-ubyte[")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _without(path: Path, member: str) -> None:
    with tarfile.open(path) as archive:
        members = [(info, archive.extractfile(info)) for info in archive]
        kept = [(info, handle.read() if handle else None) for info, handle in members]
    with tarfile.open(path, "w:gz") as archive:
        for info, data in kept:
            if not info.name.endswith(member):
                archive.addfile(info, io.BytesIO(data) if data is not None else None)


def _relabelled(path: Path, member: str, change) -> None:
    """Rewrite one pickle member of a CIFAR archive with `change(dict)`."""
    from tools.official_formats import python2_pickle

    with tarfile.open(path) as archive:
        kept = [
            (info, archive.extractfile(info).read() if info.isfile() else None) for info in archive
        ]
    with tarfile.open(path, "w:gz") as archive:
        for info, data in kept:
            if info.name.endswith(member):
                batch = pickle.loads(data, encoding="bytes")
                data = change(batch) if callable(change) else change
                data = data if isinstance(data, bytes) else python2_pickle(data)
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)


def _cut_labels(batch: dict) -> dict:
    batch[b"labels"] = batch[b"labels"][:-1]
    return batch


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncated, "truncated or corrupt"),
        (lambda path: _without(path, "data_batch_5"), "has no cifar-10-batches-py/data_batch_5"),
        (lambda path: _relabelled(path, "data_batch_2", _cut_labels), "but 1 labels"),
        (
            lambda path: _relabelled(path, "data_batch_1", pickle.dumps(_Evil(), protocol=2)),
            "refers to posix.system",
        ),
    ],
    ids=["truncated", "missing-batch", "wrong-count", "code-in-pickle"],
)
def test_a_broken_cifar_archive_is_one_line_and_leaves_no_complete_looking_output(
    tmp_path, capsys, damage, expected
):
    cifar = build_cifar(tmp_path / "raw", "cifar10", train_per_class=1, test_per_class=1)
    damage(cifar.path)
    assert prepare(cifar.path, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(problem_lines(error)) == 1, error
    assert expected in error and "re-download" in error
    assert (
        not list(tmp_path.glob("out/*/manifest.json"))
        and not (tmp_path / "out/_info.json").exists()
    )


def _idx_header(path: Path, header: bytes) -> None:
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(header + data[len(header) :], mtime=0))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda folder: _idx_header(
                folder / "train-images-idx3-ubyte.gz", struct.pack(">I", 2049)
            ),
            "magic number 2049, expected 2051",
        ),
        (
            lambda folder: _idx_header(
                folder / "train-labels-idx1-ubyte.gz", struct.pack(">II", 2049, 19)
            ),
            "header says 19 = 19 bytes of data, but the file holds 20",
        ),
        (
            lambda folder: _idx_header(
                folder / "t10k-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, 7, 28, 28)
            ),
            "header says 7 x 28 x 28",
        ),
        (lambda folder: _truncated(folder / "t10k-labels-idx1-ubyte.gz"), "truncated or corrupt"),
        (
            lambda folder: (folder / "t10k-labels-idx1-ubyte.gz").unlink(),
            "has no t10k-labels-idx1-ubyte.gz",
        ),
    ],
    ids=["images-magic", "label-count", "image-count", "truncated-gzip", "missing-file"],
)
def test_a_broken_idx_file_is_one_line(tmp_path, capsys, damage, expected):
    digits = build_idx(tmp_path / "raw", 20, 8)
    damage(digits.path)
    assert prepare(digits.path, tmp_path / "out", "--dataset", "mnist") == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(problem_lines(error)) == 1, error
    assert expected in error


def test_the_cifar_classes_and_per_class_counts_can_be_a_subset(tmp_path, capsys):
    cifar = build_cifar(tmp_path / "raw", "cifar10", train_per_class=5, test_per_class=3)
    argv = ("--classes", "4", "--train-per-class", "2", "--val-per-class", "1")
    assert prepare(cifar.path, tmp_path / "out", *argv) == 0, capsys.readouterr()
    train, val = (read_manifest(tmp_path / "out" / split) for split in ("train", "val"))
    assert train.classes == val.classes == [class_wnid(index) for index in range(4)]
    assert set(train.class_counts.values()) == {2} and set(val.class_counts.values()) == {1}
    assert train.class_names[class_wnid(3)] == "cat"
    assert main(["verify", str(tmp_path / "out"), "--workers", "1"]) == 0


def test_torchvisions_extracted_cifar_folder_gives_the_same_shards_as_the_archive(tmp_path, capsys):
    cifar = build_cifar(tmp_path / "raw", "cifar10", train_per_class=2, test_per_class=1)
    extracted = tmp_path / "torchvision-root"
    with tarfile.open(cifar.path) as archive:
        archive.extractall(extracted, filter="data")  # what CIFAR10(root, download=True) leaves
    assert prepare(cifar.path, tmp_path / "from-archive") == 0, capsys.readouterr()
    assert prepare(extracted, tmp_path / "from-folder") == 0, capsys.readouterr()
    for split in ("train", "val"):
        names = sorted(path.name for path in (tmp_path / "from-archive" / split).glob("*.tar"))
        assert names
        for name in names:
            archive_tar = (tmp_path / "from-archive" / split / name).read_bytes()
            assert archive_tar == (tmp_path / "from-folder" / split / name).read_bytes()
