"""Every backend over every layout it reads, on tiny fixtures: shapes, labels, order, resume.

Pixels encode (class, sample id) (see loaderfixtures.py), so labels and coverage are checked
against what was actually decoded.
"""

from __future__ import annotations

import pytest
import torch
from loaderfixtures import WNIDS, decode_identity, single_rank, tiny_config

from pipeline.config import replace
from pipeline.data import build_loader

COMBINATIONS = [
    pytest.param(("folder", "tiny_folders"), id="folder-folders"),
    pytest.param(("wds", "tiny_shards"), id="wds-shards"),
    pytest.param(("dali", "tiny_folders"), id="dali-folders", marks=pytest.mark.dali),
    pytest.param(("dali", "tiny_shards"), id="dali-shards", marks=pytest.mark.dali),
]


@pytest.fixture(params=COMBINATIONS)
def setup(request):
    backend, layout = request.param
    data = request.getfixturevalue(layout)
    return backend, data


def config_for(setup, **data):
    backend, paths = setup
    return tiny_config(paths["train"], paths["val"], backend=backend, **data)


def identities(loader):
    seen = []
    for images, labels in loader:
        decoded = decode_identity(images)
        assert [class_index for class_index, _ in decoded] == labels.tolist(), (
            "label differs from the image's class"
        )
        seen.extend(sample_id for _, sample_id in decoded)
    return seen


def test_train_batches_are_uint8_nchw_on_the_device_with_matching_labels(setup):
    loader = build_loader(config_for(setup), "train", single_rank())
    assert loader.classes == WNIDS and loader.num_samples == 61 and len(loader) == 61 // 8
    assert loader.class_names[WNIDS[0]].startswith("tench")
    batches = 0
    for images, labels in loader:
        assert (
            images.shape == (8, 3, 32, 32)
            and images.dtype == torch.uint8
            and images.device.type == "cpu"
        )
        assert labels.shape == (8,) and labels.dtype == torch.int64
        for (class_index, _), label in zip(decode_identity(images), labels.tolist()):
            assert class_index == label
        batches += 1
    assert batches == len(loader) == 7


def test_val_reads_every_image_exactly_once_with_a_partial_last_batch(setup):
    loader = build_loader(config_for(setup), "val", single_rank())
    assert loader.num_samples == 27 and len(loader) == 4
    shapes = [images.shape for images, _ in loader]
    assert shapes[-1] == (3, 3, 32, 32) and all(shape == (8, 3, 32, 32) for shape in shapes[:-1])
    seen = identities(loader)
    assert sorted(seen) == sorted(sample_id for _, sample_id in setup[1]["val_ids"])


def test_channels_last_is_an_option(setup):
    cfg = config_for(setup)
    images, _ = next(
        iter(build_loader(replace(cfg, "train", channels_last=True), "val", single_rank()))
    )
    assert images.is_contiguous(memory_format=torch.channels_last)
    images, _ = next(
        iter(build_loader(replace(cfg, "train", channels_last=False), "val", single_rank()))
    )
    assert images.is_contiguous()


def test_shuffle_differs_per_epoch_and_repeats_for_the_same_seed(setup):
    cfg = config_for(setup)
    first, second = (
        build_loader(cfg, "train", single_rank()),
        build_loader(cfg, "train", single_rank()),
    )
    epoch0 = identities(first)
    first.set_epoch(1)
    epoch1 = identities(first)
    assert epoch0 != epoch1 and len(set(epoch0)) == len(epoch0) == 56
    assert identities(second) == epoch0
    other_seed = build_loader(replace(cfg, "train", seed=4), "train", single_rank())
    assert identities(other_seed) != epoch0


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(setup):
    backend, _ = setup
    loader = build_loader(config_for(setup, num_workers=2), "train", single_rank())
    loader.set_epoch(2)
    whole = [(images.clone(), labels.clone()) for images, labels in loader]
    loader.set_epoch(2, start_batch=3)
    assert len(loader) == len(whole) - 3 == 4
    resumed = [(images.clone(), labels.clone()) for images, labels in loader]
    assert len(resumed) == len(whole) - 3
    for (expected, expected_labels), (got, got_labels) in zip(whole[3:], resumed):
        assert torch.equal(expected_labels, got_labels)
        assert decode_identity(expected) == decode_identity(
            got
        )  # the same samples, in the same order
        if backend != "dali":  # DALI redraws the crops of a resumed epoch (see pipeline/data/dali/)
            assert torch.equal(expected, got)


@pytest.mark.gpu
@pytest.mark.parametrize("decode", ["mixed", "cpu"])
def test_batches_land_on_the_gpu_with_mixed_and_cpu_dali_decoding(tiny_shards, decode):
    from pipeline.distributed import DistInfo

    gpu = DistInfo(device="cuda:0")
    folders = {
        "train": tiny_shards["root"] / "folders" / "train",
        "val": tiny_shards["root"] / "folders" / "val",
    }
    for backend, paths in [
        ("dali", tiny_shards),
        ("dali", folders),
        ("folder", folders),
        ("wds", tiny_shards),
    ]:
        cfg = tiny_config(paths["train"], paths["val"], backend=backend, dali_decode=decode)
        for split in ("train", "val"):
            seen = []
            for images, labels in build_loader(cfg, split, gpu):
                assert (
                    images.device.type == "cuda"
                    and labels.device.type == "cuda"
                    and images.dtype == torch.uint8
                )
                decoded = decode_identity(images)
                assert [class_index for class_index, _ in decoded] == labels.tolist()
                seen.extend(sample_id for _, sample_id in decoded)
            assert len(seen) == (56 if split == "train" else 27)


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory):
    """One real photograph (570x401) as a one-class folder and as a shard."""
    import shutil

    from loaderfixtures import FIXTURES, make_shards

    root = tmp_path_factory.mktemp("photo")
    (root / "folders" / WNIDS[0]).mkdir(parents=True)
    shutil.copy(FIXTURES / "photo.jpg", root / "folders" / WNIDS[0] / "photo.JPEG")
    return {
        "folders": root / "folders",
        "shards": make_shards(root / "folders", root / "shards", "val", 10),
    }


@pytest.mark.parametrize(
    ("backend", "layout"),
    [
        ("folder", "folders"),
        ("wds", "shards"),
        pytest.param("dali", "folders", marks=pytest.mark.dali),
        pytest.param("dali", "shards", marks=pytest.mark.dali),
    ],
)
def test_val_pixels_equal_torchvision_resize_256_center_crop_224_for_every_backend(
    photo_data, backend, layout
):
    import numpy as np
    from loaderfixtures import FIXTURES
    from PIL import Image
    from torchvision import transforms as tv

    directory = photo_data[layout]
    cfg = tiny_config(
        directory, directory, backend=backend, global_batch_size=1, val_resize=256, val_crop=224
    )
    images, labels = next(iter(build_loader(cfg, "val", single_rank())))
    ours = images[0].permute(1, 2, 0).numpy().astype(np.int16)
    reference = tv.Compose([tv.Resize(256), tv.CenterCrop(224)])(
        Image.open(FIXTURES / "photo.jpg").convert("RGB")
    )
    difference = np.abs(ours - np.asarray(reference).astype(np.int16))
    assert labels.tolist() == [0]
    assert difference.mean() < 0.25 and difference.max() <= 2


def test_val_with_two_workers_on_each_of_two_ranks_reads_every_sample_once(setup):
    from pipeline.distributed import DistInfo

    cfg = config_for(
        setup, num_workers=2, global_batch_size=4
    )  # batches of 2: 7 per rank over 2 workers
    seen = []
    for rank in range(2):  # val needs no process group: each rank's plan is computed locally
        seen.extend(identities(build_loader(cfg, "val", DistInfo(rank=rank, world_size=2))))
    assert sorted(seen) == sorted(sample_id for _, sample_id in setup[1]["val_ids"])


def test_val_on_more_ranks_than_samples_gives_empty_ranks_zero_batches_and_reads_every_sample_once(
    setup,
):
    from pipeline.distributed import DistInfo

    world = 32  # 27 val images: some ranks read none, which exact eval allows (train would refuse)
    cfg = config_for(setup, global_batch_size=world)
    seen, empty = [], 0
    for rank in range(world):
        loader = build_loader(cfg, "val", DistInfo(rank=rank, world_size=world))
        loader.set_epoch(0)
        empty += len(loader) == 0
        seen.extend(identities(loader))
    assert empty == world - 27
    assert sorted(seen) == sorted(sample_id for _, sample_id in setup[1]["val_ids"])


@pytest.fixture(scope="module")
def gradient_data(tmp_path_factory):
    """64 copies of a 256x256 image whose red channel is x and green is y, as folders and shards."""
    import numpy as np
    from loaderfixtures import make_shards
    from PIL import Image

    root = tmp_path_factory.mktemp("gradient")
    ramp = np.arange(256, dtype=np.uint8)
    pixels = np.stack(
        [
            np.tile(ramp, (256, 1)),
            np.tile(ramp[:, None], (1, 256)),
            np.full((256, 256), 128, np.uint8),
        ],
        -1,
    )
    folder = root / "folders" / WNIDS[0]
    folder.mkdir(parents=True)
    for index in range(64):
        Image.fromarray(pixels).save(folder / f"ramp_{index:03d}.JPEG", quality=95)
    return {
        "folders": root / "folders",
        "shards": make_shards(root / "folders", root / "shards", "train", 16),
    }


@pytest.mark.parametrize(
    ("backend", "layout"),
    [
        ("folder", "folders"),
        ("wds", "shards"),
        pytest.param("dali", "folders", marks=pytest.mark.dali),
        pytest.param("dali", "shards", marks=pytest.mark.dali),
    ],
)
def test_train_crops_follow_the_random_resized_crop_and_flip_contract(
    gradient_data, backend, layout
):
    """Read each crop's box back from the gradient: area, aspect ratio and flips like
    torchvision's."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as tv

    directory = gradient_data[layout]
    cfg = tiny_config(directory, directory, backend=backend, global_batch_size=64)
    loader = build_loader(cfg, "train", single_rank())
    areas, log_ratios, flips = [], [], []
    for epoch in range(4):
        loader.set_epoch(epoch)
        for images, _ in loader:
            pixels = images.float()  # [N, 3, 32, 32]
            left, right = pixels[:, 0, :, 0].mean(1), pixels[:, 0, :, -1].mean(1)  # red = source x
            top, bottom = (
                pixels[:, 1, 0, :].mean(1),
                pixels[:, 1, -1, :].mean(1),
            )  # green = source y
            width = (right - left).abs() * 32 / 31  # the edge pixels' centres span 31/32 of the box
            height = (bottom - top).abs() * 32 / 31
            areas.extend((width * height / 256**2).tolist())
            log_ratios.extend(torch.log(width / height).tolist())
            flips.extend((right < left).tolist())
    torch.manual_seed(0)
    reference = [
        tv.RandomResizedCrop.get_params(Image.new("RGB", (256, 256)), [0.08, 1.0], [3 / 4, 4 / 3])
        for _ in range(4000)
    ]
    expected_area = np.mean([h * w / 256**2 for _, _, h, w in reference])
    assert len(areas) == 256
    assert abs(np.mean(areas) - expected_area) < 0.07, (np.mean(areas), expected_area)
    assert 0.05 < min(areas) and max(areas) < 1.05
    assert abs(np.mean(log_ratios)) < 0.08 and max(np.abs(log_ratios)) < np.log(4 / 3) + 0.1
    assert 0.35 < np.mean(flips) < 0.65
