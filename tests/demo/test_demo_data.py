"""The demo's raw dataset: real digits in Kaggle's ImageNet layout, read back by our own readers.

.venv/bin/pytest tests/demo/test_demo_data.py
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.classes import is_wnid, read_synset_mapping
from preprocess.labels import load_val_labels
from tools.demo_data import (
    DEMO_WNIDS,
    SYNSET_MAPPING_PATH,
    TRAIN_SUBDIR,
    VAL_SUBDIR,
    build_demo_raw,
    main,
    render_digit,
    split_indices,
)

# the ILSVRC2012 metadata copied unchanged into tests/fixtures-data, and the SHA-256 of Kaggle's
# file
FIXTURE_MAPPING = Path(__file__).resolve().parents[1] / "fixtures-data" / "LOC_synset_mapping.txt"
KAGGLE_MAPPING_SHA256 = "4f04dc0131b72a3463ac1ff62df6d2da5d98388e1f843f542a44f81898188ceb"


@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory) -> Path:
    """A small build (20 digits per class) shared by the layout tests."""
    root = tmp_path_factory.mktemp("demo") / "raw"
    build_demo_raw(root, image_size=64, per_class=20)
    return root


def test_train_has_one_folder_per_demo_wnid_holding_jpegs_named_like_imagenet(demo_raw):
    train = demo_raw / TRAIN_SUBDIR
    assert sorted(p.name for p in train.iterdir()) == list(DEMO_WNIDS)
    for wnid in DEMO_WNIDS:
        files = sorted((train / wnid).iterdir())
        assert len(files) == 16  # 20 per class, 20 % held out for val
        assert all(f.name.startswith(wnid + "_") and f.suffix == ".JPEG" for f in files)


def test_val_is_flat_and_numbered_like_ilsvrc2012(demo_raw):
    val_files = sorted(p.name for p in (demo_raw / VAL_SUBDIR).iterdir())
    assert val_files == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 41)]
    assert all(p.is_file() for p in (demo_raw / VAL_SUBDIR).iterdir())


def test_kaggle_csv_is_read_by_the_projects_label_reader_and_matches_the_images(demo_raw):
    val_dir = demo_raw / VAL_SUBDIR
    names = sorted(p.name for p in val_dir.iterdir())
    labels = load_val_labels(demo_raw / "LOC_val_solution.csv", names)
    assert sorted(labels) == names
    assert sorted(set(labels.values())) == list(DEMO_WNIDS)
    assert [list(labels.values()).count(wnid) for wnid in DEMO_WNIDS] == [4] * 10
    header, first = (demo_raw / "LOC_val_solution.csv").read_text().splitlines()[:2]
    assert header == "ImageId,PredictionString"
    image_id, prediction = first.split(",")
    assert image_id == "ILSVRC2012_val_00000001"
    assert prediction.split()[1:5] == ["0", "0", "63", "63"]  # one whole-image box


def test_val_label_is_the_digit_drawn_in_the_image(demo_raw):
    """Each val JPEG, decoded and shrunk to 8x8, is nearest to a training digit of its labelled
    class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    references = digits.images.reshape(len(digits.images), -1)  # [1797, 64], ink 0..16
    labels = load_val_labels(demo_raw / "LOC_val_solution.csv")
    for name, wnid in list(labels.items())[:10]:
        image = Image.open(demo_raw / VAL_SUBDIR / name).convert("L").resize((8, 8), Image.BILINEAR)
        ink = (255.0 - np.asarray(image, dtype=np.float64)) * 16.0 / 255.0
        nearest = np.argmin(((references - ink.reshape(1, -1)) ** 2).sum(axis=1))
        assert DEMO_WNIDS[digits.target[nearest]] == wnid, name


def test_synset_mapping_holds_the_real_imagenet_lines_for_the_ten_wnids(demo_raw):
    written = read_synset_mapping(demo_raw / "LOC_synset_mapping.txt")
    assert list(written) == list(DEMO_WNIDS)
    assert written["n01440764"] == "tench, Tinca tinca"
    assert written["n03888257"] == "parachute, chute"
    bundled = read_synset_mapping(SYNSET_MAPPING_PATH)
    assert len(bundled) == 1000
    assert all(is_wnid(wnid) and bundled[wnid] == words for wnid, words in written.items())
    assert list(DEMO_WNIDS) == sorted(DEMO_WNIDS)  # so class index d is digit d


def test_bundled_synset_mapping_is_identical_to_kaggles_file():
    bundled = SYNSET_MAPPING_PATH.read_bytes()
    assert hashlib.sha256(bundled).hexdigest() == KAGGLE_MAPPING_SHA256
    assert bundled == FIXTURE_MAPPING.read_bytes()


def test_images_are_rgb_jpegs_of_the_requested_size(demo_raw):
    path = next((demo_raw / TRAIN_SUBDIR / DEMO_WNIDS[3]).iterdir())
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))


def test_split_is_stratified_disjoint_complete_and_seeded():
    targets = np.repeat(np.arange(10), 50)
    train, val = split_indices(targets, 0.2, seed=3)
    assert len(set(train) & set(val)) == 0
    assert sorted(np.concatenate([train, val])) == list(range(500))
    assert np.bincount(targets[val]).tolist() == [10] * 10
    again_train, again_val = split_indices(targets, 0.2, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(val, split_indices(targets, 0.2, seed=4)[1])


def test_two_builds_with_the_same_seed_are_byte_identical(tmp_path):
    first = build_demo_raw(tmp_path / "a", image_size=64, per_class=5)
    second = build_demo_raw(tmp_path / "b", image_size=64, per_class=5)
    files_a = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second.root) for p in second.root.rglob("*") if p.is_file())
    assert files_a == files_b
    assert all((first.root / f).read_bytes() == (second.root / f).read_bytes() for f in files_a)


def test_a_finished_build_is_reused_and_a_foreign_directory_is_refused(tmp_path):
    root = tmp_path / "raw"
    build_demo_raw(root, image_size=64, per_class=5)
    sentinel = root / TRAIN_SUBDIR / DEMO_WNIDS[0] / "extra.txt"
    sentinel.write_text("kept")
    again = build_demo_raw(root, image_size=64, per_class=5)
    assert sentinel.read_text() == "kept"  # nothing was rewritten
    assert (again.train_count, again.val_count) == (40, 10)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not a finished demo dataset"):
        build_demo_raw(foreign)
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"
    assert main([str(foreign)]) == 2


def test_render_digit_draws_dark_ink_on_white_paper():
    pixels = np.zeros((8, 8))
    pixels[2:6, 3:5] = 16.0  # a bar of full ink
    image = np.asarray(
        Image.open(io.BytesIO(render_digit(pixels, 64))).convert("L"), dtype=np.int64
    )
    assert image[0:8, 0:8].mean() > 240  # paper
    assert image[28:36, 28:36].mean() < 40  # ink


def test_preprocess_sees_a_kaggle_download_with_ten_named_classes(demo_raw):
    from preprocess.sources import detect_layout, iter_raw_images, raw_class_names, raw_classes

    assert detect_layout(demo_raw) == "kaggle"
    assert raw_classes(demo_raw) == list(DEMO_WNIDS)
    assert raw_class_names(demo_raw)["n03445777"] == "golf ball"
    val = list(iter_raw_images(demo_raw, "val"))
    assert len(val) == 40
    labels = load_val_labels(demo_raw / "LOC_val_solution.csv")
    assert all(labels[image.key + ".JPEG"] == image.wnid for image in val)
