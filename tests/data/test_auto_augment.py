"""data.auto_augment (TrivialAugmentWide, AutoAugment's ImageNet policy) in every backend:
deterministic per (seed, epoch, sample), whatever the worker count, and the same distribution
of images in folder, wds (torchvision's v2 ops) and dali (nvidia.dali.auto_aug).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from loaderfixtures import WNIDS, make_shards, single_rank, tiny_config
from PIL import Image
from scipy import stats

from pipeline.data import build_loader
from pipeline.data import transforms as transforms_module
from pipeline.data.transforms import Augmentation, decode_train, sample_rng
from pipeline.errors import LoaderError

PHOTO = Path(__file__).parent / "fixtures" / "photo.jpg"  # a real 570x401 photograph
PHOTOS = Path(__file__).parents[2] / "tools" / "photos"
MODES = ["none", "trivial", "imagenet"]


@pytest.mark.parametrize("mode", ["trivial", "imagenet"])
def test_the_same_seed_epoch_and_sample_give_the_same_augmented_pixels(mode):
    data, aug = PHOTO.read_bytes(), Augmentation(train_crop=64, auto_augment=mode)
    draws = [decode_train(data, aug, sample_rng(3, 1, index)) for index in range(12)]
    again = [decode_train(data, aug, sample_rng(3, 1, index)) for index in range(12)]
    assert all(np.array_equal(first, second) for first, second in zip(draws, again))
    other_epoch = [decode_train(data, aug, sample_rng(3, 2, index)) for index in range(12)]
    assert sum(not np.array_equal(a, b) for a, b in zip(draws, other_epoch)) >= 10


@pytest.mark.parametrize("mode", ["trivial", "imagenet"])
def test_auto_augment_acts_after_the_crop_and_flip_and_leaves_their_draws_alone(mode):
    """`none` and an op draw the same crop and flip; the op then changes most of them (each
    policy also picks identity-like ops now and then, so not all)."""
    data = PHOTO.read_bytes()
    plain = Augmentation(train_crop=64)
    augmented = Augmentation(train_crop=64, auto_augment=mode)
    changed = 0
    for index in range(40):
        before = decode_train(data, plain, sample_rng(0, 0, index))
        after = decode_train(data, augmented, sample_rng(0, 0, index))
        assert after.shape == before.shape == (64, 64, 3) and after.dtype == np.uint8
        changed += not np.array_equal(before, after)
    assert changed >= 25, changed


def test_auto_augment_leaves_the_callers_torch_random_stream_as_it_was():
    """With num_workers=0 the ops run in the training process: its torch stream (dropout,
    the per-step seeds) must not move."""
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    aug = Augmentation(train_crop=32, auto_augment="trivial")
    for index in range(5):
        decode_train(PHOTO.read_bytes(), aug, sample_rng(0, 0, index))
    assert torch.equal(torch.get_rng_state(), state)


def test_dali_runs_torchvisions_imagenet_policy_table():
    """DALI's own get_image_net_policy is another policy; ours is torchvision's, op for op."""
    from torchvision.transforms import v2

    from pipeline.data.dali.autoaugment import IMAGENET_POLICY

    reference = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)._policies  # private: test only
    assert [tuple(map(tuple, sub_policy)) for sub_policy in reference] == list(IMAGENET_POLICY)


def digests(batches) -> list[str]:
    return [
        hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()
        for images, _ in batches
        for image in images
    ]


def epoch_images(cfg, epoch):
    loader = build_loader(cfg, "train", single_rank())
    loader.set_epoch(epoch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


@pytest.mark.parametrize(
    ("backend", "layout", "workers"),
    [
        ("folder", "folders", (0, 2)),
        ("wds", "shards", (1, 2)),
        pytest.param("dali", "folders", (1, 2), marks=pytest.mark.dali),
        pytest.param("dali", "shards", (1, 2), marks=pytest.mark.dali),
    ],
)
@pytest.mark.parametrize("mode", ["trivial", "imagenet"])
def test_each_sample_gets_the_same_augmentation_with_any_number_of_workers(
    textured_data, backend, layout, workers, mode
):
    """folder and dali read the same order with any worker (thread) count: equal batches. wds
    reads another order per worker count (see wds.py), but each sample's draws follow its index
    in the split: the same images, in another order."""
    paths = textured_data[layout]
    few, many = (
        epoch_images(
            tiny_config(
                paths["train"], paths["val"], backend=backend, auto_augment=mode, num_workers=n
            ),
            epoch=1,
        )
        for n in workers
    )
    if backend == "wds":
        assert sorted(digests(few)) == sorted(digests(many))
    else:
        assert digests(few) == digests(many)
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(few, many))


def test_a_torchvision_without_v2_ops_is_one_line_before_any_worker_starts(
    tiny_folders, monkeypatch
):
    import torchvision.transforms

    # `from torchvision.transforms import v2` then fails as it does on torchvision < 0.15
    monkeypatch.delattr(torchvision.transforms, "v2", raising=False)
    monkeypatch.setitem(sys.modules, "torchvision.transforms.v2", None)
    transforms_module.build_auto_augment.cache_clear()
    try:
        cfg = tiny_config(tiny_folders["train"], tiny_folders["val"], auto_augment="trivial")
        with pytest.raises(LoaderError) as err:
            build_loader(cfg, "train", single_rank())
    finally:
        transforms_module.build_auto_augment.cache_clear()
    message = str(err.value)
    assert "\n" not in message and "data.auto_augment=trivial" in message
    assert "data.auto_augment=none" in message
    build_loader(cfg, "val", single_rank())  # val never augments


@pytest.mark.dali
def test_a_dali_without_auto_aug_is_one_line_naming_the_other_backends(tiny_folders, monkeypatch):
    import nvidia.dali

    monkeypatch.delattr(nvidia.dali, "auto_aug", raising=False)  # as on a DALI without it
    monkeypatch.setitem(sys.modules, "nvidia.dali.auto_aug", None)
    cfg = tiny_config(
        tiny_folders["train"], tiny_folders["val"], backend="dali", auto_augment="imagenet"
    )
    with pytest.raises(LoaderError) as err:
        build_loader(cfg, "train", single_rank())
    message = str(err.value)
    assert "\n" not in message and "nvidia.dali.auto_aug" in message
    assert "data.backend=folder or wds" in message


# --- the three backends, statistically, on the same photographs --------------------------------

STAT_PHOTOS = ["asheville", "chicago", "flowers", "golden_gate"]
COPIES = 16  # files per photo: 64 samples, each with its own draws
EPOCHS = 16  # 64 x 16 = 1024 augmented draws per backend and mode


@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory):
    """Four real photographs at 64 px short side, 16 copies each, as folders and shards."""
    root = tmp_path_factory.mktemp("stat-photos")
    for class_index, name in enumerate(STAT_PHOTOS):
        image = Image.open(PHOTOS / f"{name}.jpg").convert("RGB")
        scale = 64 / min(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
        folder = root / "folders" / WNIDS[class_index]
        folder.mkdir(parents=True)
        for copy in range(COPIES):
            image.save(folder / f"{name}_{copy:02d}.JPEG", quality=90)
    return {
        "folders": root / "folders",
        "shards": make_shards(root / "folders", root / "shards", "train", 16),
    }


def image_statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image of uint8 [N, 3, H, W], in grey levels: what each op moves.

    brightness (mean of all pixels: the enhance ops, solarize, invert, equalize, black fill
    of the geometric ops), contrast (std of the luma: contrast, autocontrast, equalize,
    posterize), colour balance (mean red minus mean blue) and saturation (mean max − min over
    the channels: color, and every op that moves channels apart or together).
    """
    pixels = images.float()
    luma = 0.299 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    return {
        "brightness": pixels.mean(dim=(1, 2, 3)).numpy(),
        "contrast": luma.flatten(1).std(1).numpy(),
        "red_minus_blue": (pixels[:, 0] - pixels[:, 2]).mean(dim=(1, 2)).numpy(),
        "saturation": (pixels.amax(1) - pixels.amin(1)).mean(dim=(1, 2)).numpy(),
    }


@pytest.fixture(scope="module")
def draws(photo_sets):
    """{(backend, mode): statistics of 1024 train draws at 32 px}."""
    result = {}
    for backend, layout in [("folder", "folders"), ("wds", "shards"), ("dali", "folders")]:
        for mode in MODES:
            directory = photo_sets[layout]
            cfg = tiny_config(
                directory,
                directory,
                backend=backend,
                auto_augment=mode,
                global_batch_size=32,
                num_workers=0 if backend != "dali" else 1,
            )
            loader = build_loader(cfg, "train", single_rank())
            images = []
            for epoch in range(EPOCHS):
                loader.set_epoch(epoch)
                images.extend(batch for batch, _ in loader)
            result[backend, mode] = image_statistics(torch.cat(images))
    return result


# Grey levels of Wasserstein-1 (earth mover's) distance between two backends' distributions of
# a statistic, for the same mode. Measured (2026-11, 1024 draws): at most 2.7, 1.5, 3.2 and
# 2.4. Two runs of one backend with other draws differ by ~1 (sampling noise); the rest is real
# and small: DALI's equalize follows OpenCV's formula, ~3 levels from PIL's on the images it
# touches, and decoders and resizers differ by ±1. A KS test would reject on that 3-level shift
# (equalized images pile up near mid-grey), so agreement is a distance, not a p-value. Checked by
# breaking the DALI backend on purpose: a grey (128) fill for the geometric ops, the op left
# out, or DALI's own get_image_net_policy (TensorFlow's policy_v0) each fail these tests.
AGREEMENT = {"brightness": 5.0, "contrast": 3.0, "red_minus_blue": 5.0, "saturation": 4.0}


def w1(first: dict, second: dict, name: str) -> float:
    return float(stats.wasserstein_distance(first[name], second[name]))


@pytest.mark.slow
@pytest.mark.dali
@pytest.mark.parametrize("mode", MODES)
def test_the_three_backends_give_the_same_distribution_of_image_statistics(draws, mode):
    for first, second in [("folder", "wds"), ("folder", "dali"), ("wds", "dali")]:
        for name, bound in AGREEMENT.items():
            distance = w1(draws[first, mode], draws[second, mode], name)
            assert distance <= bound, (mode, first, second, name, distance)


@pytest.mark.slow
@pytest.mark.dali
@pytest.mark.parametrize("backend", ["folder", "wds", "dali"])
@pytest.mark.parametrize("mode", ["trivial", "imagenet"])
def test_none_differs_from_each_policy_in_every_backend(draws, backend, mode):
    """Two-sample KS on brightness and contrast: p below 1e-6 (measured: 1e-16 or less), and
    brightness at least 10 grey levels (W1) away. A policy that silently did nothing would give
    p ~ 1 and a distance ~ 1."""
    plain, augmented = draws[backend, "none"], draws[backend, mode]
    for name in ("brightness", "contrast"):
        assert stats.ks_2samp(plain[name], augmented[name]).pvalue < 1e-6, name
    assert w1(plain, augmented, "brightness") >= 10.0


@pytest.mark.slow
@pytest.mark.dali
@pytest.mark.parametrize("backend", ["wds", "dali"])
@pytest.mark.parametrize("mode", MODES)
def test_each_backends_mode_is_nearest_the_folder_backends_same_mode(draws, backend, mode):
    """The mode a backend runs is recognisable: its brightness distribution is at least 3x
    nearer folder's same mode than folder's other two (measured: 2.7 or less against 12 or
    more), so a backend running the wrong policy, or none, fails here."""
    same = w1(draws[backend, mode], draws["folder", mode], "brightness")
    for other in MODES:
        if other != mode:
            assert 3 * same < w1(draws[backend, mode], draws["folder", other], "brightness")
