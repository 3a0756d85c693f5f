"""The augmentation contract against torchvision, the reference every ImageNet recipe uses."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as tv

from pipeline.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    collate_uint8,
    decode_train,
    decode_val,
    denormalize,
    normalize,
    sample_crop_box,
    sample_rng,
)

PHOTO = Path(__file__).parent / "fixtures" / "photo.jpg"  # a real 570x401 photograph


class TorchDraws:
    """A RandomSource drawing from torch's global RNG exactly as RandomResizedCrop.get_params
    does."""

    def uniform(self, a, b):
        return torch.empty(1).uniform_(a, b).item()

    def randint(self, a, b):
        return torch.randint(a, b + 1, size=(1,)).item()


@pytest.mark.parametrize("size", [(570, 401), (224, 224), (60, 900), (1000, 50), (33, 47)])
def test_crop_box_is_torchvision_get_params_draw_for_draw(size):
    width, height = size
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    image = Image.new("RGB", size)
    for seed in range(300):
        torch.manual_seed(seed)
        expected = tv.RandomResizedCrop.get_params(image, scale=list(scale), ratio=list(ratio))
        torch.manual_seed(seed)
        assert sample_crop_box(width, height, scale, ratio, TorchDraws()) == tuple(expected), (
            size,
            seed,
        )


def test_crop_box_falls_back_to_a_ratio_clamped_center_crop_like_torchvision():
    class NeverFits:  # every try asks for more area than the image has
        def uniform(self, a, b):
            return b

        def randint(self, a, b):
            raise AssertionError("no try may succeed")

    for width, height in [(400, 100), (100, 400), (120, 100), (90, 120)]:
        # scale (2, 2): twice the image area never fits, so all 10 tries fail in both
        # implementations
        expected = tv.RandomResizedCrop.get_params(
            Image.new("RGB", (width, height)), [2.0, 2.0], [3 / 4, 4 / 3]
        )
        assert sample_crop_box(width, height, (2.0, 2.0), (3 / 4, 4 / 3), NeverFits()) == tuple(
            expected
        )


def test_crop_box_statistics_match_torchvision_with_python_random():
    rng = random.Random(0)
    ours = np.array(
        [sample_crop_box(500, 375, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(4000)],
        dtype=float,
    )
    torch.manual_seed(0)
    image = Image.new("RGB", (500, 375))
    theirs = np.array(
        [tv.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)],
        dtype=float,
    )
    area_ours, area_theirs = ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]
    assert abs(area_ours.mean() - area_theirs.mean()) / area_theirs.mean() < 0.05
    assert (
        abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 5
        and abs(ours[:, 1].mean() - theirs[:, 1].mean()) < 5
    )


def test_val_output_equals_torchvision_resize_and_center_crop():
    aug = Augmentation()
    ours = decode_val(PHOTO.read_bytes(), aug).astype(np.int16)
    reference = tv.Compose([tv.Resize(256), tv.CenterCrop(224)])(Image.open(PHOTO).convert("RGB"))
    theirs = np.asarray(reference).astype(np.int16)
    assert ours.shape == theirs.shape == (224, 224, 3)
    difference = np.abs(ours - theirs)
    assert difference.mean() < 0.5 and difference.max() <= 3


def test_val_with_draft_decoding_stays_close_to_the_full_decode():
    aug = Augmentation(val_resize=96, val_crop=80)  # short side 401 >= 2*96: decoded at 1/2 or 1/4
    ours = decode_val(str(PHOTO), aug).astype(np.int16)
    reference = tv.Compose([tv.Resize(96), tv.CenterCrop(80)])(Image.open(PHOTO).convert("RGB"))
    assert np.abs(ours - np.asarray(reference).astype(np.int16)).mean() < 4


def test_train_crop_with_draft_matches_the_same_box_decoded_at_full_size():
    aug = Augmentation(train_crop=64, flip_prob=0.0)
    for index in range(20):
        ours = decode_train(PHOTO.read_bytes(), aug, sample_rng(1, 0, index)).astype(np.int16)
        top, left, height, width = sample_crop_box(
            570, 401, aug.scale, aug.ratio, sample_rng(1, 0, index)
        )
        full = Image.open(PHOTO).convert("RGB")
        reference = full.resize(
            (64, 64), Image.Resampling.BILINEAR, box=(left, top, left + width, top + height)
        )
        assert ours.shape == (64, 64, 3)
        assert np.abs(ours - np.asarray(reference).astype(np.int16)).mean() < 6, index


def test_flip_probability_one_mirrors_and_zero_does_not():
    data = PHOTO.read_bytes()
    plain = decode_train(data, Augmentation(train_crop=48, flip_prob=0.0), sample_rng(0, 0, 5))
    flipped = decode_train(data, Augmentation(train_crop=48, flip_prob=1.0), sample_rng(0, 0, 5))
    assert np.array_equal(plain[:, ::-1], flipped)


def test_train_decoding_is_reproducible_from_seed_epoch_and_index():
    data = PHOTO.read_bytes()
    aug = Augmentation(train_crop=32)
    assert np.array_equal(
        decode_train(data, aug, sample_rng(3, 1, 7)), decode_train(data, aug, sample_rng(3, 1, 7))
    )
    assert not np.array_equal(
        decode_train(data, aug, sample_rng(3, 1, 7)), decode_train(data, aug, sample_rng(3, 2, 7))
    )


def test_grayscale_and_png_inputs_come_out_rgb():
    buffer = io.BytesIO()
    Image.new("L", (50, 40), 128).save(buffer, format="PNG")
    pixels = decode_train(buffer.getvalue(), Augmentation(train_crop=16), sample_rng(0, 0, 0))
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8 and (pixels == 128).all()


def test_normalize_matches_torchvision_normalize_and_keeps_channels_last():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last
    )
    ours = normalize(images)
    theirs = tv.Normalize(IMAGENET_MEAN, IMAGENET_STD)(images.float() / 255)
    assert ours.dtype == torch.float32 and torch.allclose(ours, theirs, atol=1e-5)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert normalize(images, torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(denormalize(ours), images)
    with pytest.raises(TypeError):
        normalize(images.float())


def test_collate_writes_a_uint8_nhwc_batch_and_int64_labels():
    samples = [(np.full((4, 5, 3), value, dtype=np.uint8), value) for value in (1, 2, 3)]
    images, labels = collate_uint8(samples)
    assert images.shape == (3, 4, 5, 3) and images.dtype == torch.uint8
    assert labels.tolist() == [1, 2, 3] and labels.dtype == torch.int64
    assert images[2].eq(3).all()


def test_a_path_decodes_as_its_bytes_and_a_missing_or_empty_file_fails(tmp_path):
    aug = Augmentation()
    data = PHOTO.read_bytes()
    from_path = decode_train(str(PHOTO), aug, sample_rng(0, 1, 2))
    np.testing.assert_array_equal(from_path, decode_train(data, aug, sample_rng(0, 1, 2)))
    np.testing.assert_array_equal(decode_val(str(PHOTO), aug), decode_val(data, aug))
    with pytest.raises(FileNotFoundError):
        decode_train(str(tmp_path / "gone.JPEG"), aug, sample_rng(0, 1, 2))
    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    with pytest.raises(UnidentifiedImageError):  # what an empty file always gave
        decode_train(str(empty), aug, sample_rng(0, 1, 2))
