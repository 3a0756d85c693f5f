"""resize_image: repairs, sizes, only-shrink, DCT-scaling accuracy, bad inputs, EXIF, provenance."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from imagefixtures import LARGE_PHOTO, TYPICAL_PHOTO, generated_jpeg
from PIL import Image
from rawfixtures import make_oddball

from core.jpegfile import RESTART_INTERVAL, restart_interval
from preprocess.images import (
    BadImage,
    decode_image,
    read_provenance,
    resize_image,
    resize_pixels,
    target_size,
)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("kind", "repair"),
    [
        ("cmyk", "cmyk-to-rgb"),
        ("png-as-jpeg", "png-to-jpeg"),
        ("grayscale", "grayscale-to-rgb"),
        ("rgba", "alpha-on-white"),
    ],
)
def test_oddball_inputs_become_rgb_jpegs_with_short_side_256(kind, repair):
    data = make_oddball(kind, size=(56, 44))
    jpeg, info = resize_image(data, 256)
    image = decoded(jpeg)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert min(image.size) == 256 and image.size == (326, 256)  # 56 * 256 / 44 = 325.8
    assert (info.width, info.height) == (56, 44)
    assert repair in info.repairs and info.repaired


def test_a_plain_rgb_jpeg_needs_no_repair():
    _, info = resize_image(generated_jpeg(1, (300, 200)), 256)
    assert info.repairs == () and not info.repaired
    assert (info.out_width, info.out_height) == (384, 256)


def test_rgba_is_composited_on_white_not_black():
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 40), (200, 0, 0, 0)).save(buffer, "PNG")  # fully transparent red
    jpeg, _ = resize_image(buffer.getvalue(), 32)
    assert np.asarray(decoded(jpeg)).min() >= 250  # white, the transparent colour is not leaked


def test_palette_image_with_transparency_and_16bit_grayscale_are_repaired():
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    _, info = resize_image(buffer.getvalue(), 30)
    assert info.mode == "P" and "alpha-on-white" in info.repairs

    sixteen = Image.fromarray(np.full((30, 40), 32768, dtype=np.uint16))  # mid grey at 16 bits
    buffer = io.BytesIO()
    sixteen.save(buffer, "PNG")
    jpeg, info = resize_image(buffer.getvalue(), 30)
    assert "16bit-to-8bit" in info.repairs
    assert abs(float(np.asarray(decoded(jpeg)).mean()) - 128) < 3  # scaled, not clipped to 255


def test_only_shrink_never_enlarges_but_still_shrinks():
    small = generated_jpeg(2, (200, 150))
    jpeg, info = resize_image(small, 256, only_shrink=True)
    assert decoded(jpeg).size == (200, 150) and (info.out_width, info.out_height) == (200, 150)
    enlarged, _ = resize_image(small, 256)
    assert decoded(enlarged).size == (341, 256)
    large, _ = resize_image(generated_jpeg(3, (600, 400)), 256, only_shrink=True)
    assert decoded(large).size == (384, 256)


def test_dct_scaled_decode_stays_close_to_a_full_decode():
    data = LARGE_PHOTO.read_bytes()
    drafted, _, _ = decode_image(data, target=256)
    assert drafted.size == (660, 791)  # decoded at 1/2: still >= 2x the 256 px target
    fast = np.asarray(decoded(resize_image(data, 256)[0])).astype(np.float64)
    exact = np.asarray(decoded(resize_image(data, 256, use_draft=False)[0])).astype(np.float64)
    assert fast.shape == exact.shape == (307, 256, 3)
    psnr = 10 * np.log10(255**2 / np.mean((fast - exact) ** 2))
    assert psnr > 35, f"DCT-scaled resize is {psnr:.1f} dB from a full decode"
    assert np.abs(fast - exact).mean() < 2.5


def test_typical_photo_is_not_dct_scaled():
    drafted, _, _ = decode_image(TYPICAL_PHOTO.read_bytes(), target=256)
    assert drafted.size == (570, 401)  # 1/2 would fall under 2x the target: full decode


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (make_oddball("truncated", size=(120, 90)), "(?i)truncated"),
        (b"this is not an image at all" * 10, "not a recognised image"),
    ],
)
def test_undecodable_inputs_raise_bad_image_with_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        resize_image(data, 256)


def test_exif_orientation_is_ignored_like_imagenet_tooling():
    image = Image.fromarray(np.zeros((30, 60, 3), np.uint8))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    jpeg, _ = resize_image(buffer.getvalue(), 30)
    out = decoded(jpeg)
    assert out.size == (60, 30)  # stored pixels kept: still landscape
    assert 0x0112 not in out.getexif()  # and the tag is gone, so no loader rotates it either


def test_output_records_source_name_and_original_size_in_a_comment():
    jpeg, _ = resize_image(generated_jpeg(4, (90, 70)), 64, source="n01440764_10026.JPEG")
    assert read_provenance(decoded(jpeg)) == {
        "source": "n01440764_10026.JPEG",
        "width": 90,
        "height": 70,
    }


def test_target_size_keeps_aspect_and_puts_the_short_side_on_target():
    assert target_size(500, 375, 256) == (341, 256)
    assert target_size(375, 500, 256) == (256, 341)
    assert target_size(100, 100, 256) == (256, 256)
    assert target_size(100, 80, 256, only_shrink=True) == (100, 80)
    assert target_size(10000, 10, 1) == (1000, 1)


def test_output_is_deterministic():
    data = TYPICAL_PHOTO.read_bytes()
    assert resize_image(data, 256)[0] == resize_image(data, 256)[0]


def test_outputs_carry_a_restart_marker_after_every_mcu_and_the_same_pixels():
    """The ROI decoder's layout (core.jpegfile): every MCU of the scan followed by RSTn, the
    pixels those of the same encode without markers, the provenance kept, a few bytes a MCU."""
    data = TYPICAL_PHOTO.read_bytes()
    marked, info = resize_image(data, 256, source="n01440764_10026.JPEG")
    plain, _ = resize_image(data, 256, source="n01440764_10026.JPEG", restart_interval=0)
    assert restart_interval(marked) == RESTART_INTERVAL == 1 and restart_interval(plain) == 0
    mcus = -(-info.out_width // 16) * -(-info.out_height // 16)  # 4:2:0
    scan = marked.index(b"\xff\xda")
    assert len(re.findall(rb"\xff[\xd0-\xd7]", marked[scan:])) == mcus - 1
    np.testing.assert_array_equal(np.asarray(decoded(marked)), np.asarray(decoded(plain)))
    assert read_provenance(decoded(marked)) == read_provenance(decoded(plain))
    # 2 bytes of marker and the padding to a byte, 3.7 bytes a MCU on tools/photos
    assert 2 * mcus < len(marked) - len(plain) < 6 * mcus, (len(marked), len(plain), mcus)
    pixels = np.asarray(decoded(plain))[:32, :32]
    assert restart_interval(resize_pixels(pixels, 32)[0]) == RESTART_INTERVAL
