"""The ROI decoder (pipeline/data/jpeg.py) against today's full decode, on real photos.

The reference is Pillow's full-decode path, `jpeg.decode_full` (pillow-simd: draft, RGB, bilinear
resize of the box, flip; what `decode_train` / `decode_val` did before they took the ROI path),
for the very same box and flip. The stated tolerance, per image: mean absolute error
< 0.1 levels and no pixel off by more than 3; over all the photos, mean < 0.01. Measured on
tools/photos (2026-12-06, the fixed-point resize): mean 0.0002, worst image 0.004, max 1 (the
earlier float32 resize: 0.003-0.004, 0.06, 2).
"""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.jpegfile import RESTART_INTERVAL, restart_interval
from pipeline.data import jpeg
from pipeline.data.transforms import (
    Augmentation,
    decode_train,
    decode_train_batch,
    decode_val,
    sample_crop_box,
    sample_rng,
    sample_seeds,
    val_geometry,
)
from preprocess.images import resize_image

REPO = Path(__file__).resolve().parents[2]
PHOTOS = sorted((REPO / "tools" / "photos").glob("*.jpg"))  # the 26 benchmark photos
ODD_FIXTURES = Path(__file__).parent / "fixtures" / "jpeg"  # made by cjpeg/jpegtran, see README
MEAN_TOLERANCE = 0.1  # levels, mean absolute difference of one image, every pixel and channel
MAX_TOLERANCE = 3  # levels, any one pixel and channel

needs_extension = pytest.mark.skipif(
    not jpeg.AVAILABLE,
    reason=f"the ROI extension did not build here ({jpeg.UNAVAILABLE_REASON}): `make setup`",
)


@pytest.fixture(scope="session")
def shard_photos() -> dict[str, bytes]:
    """tools/photos as the shards hold them: 256 px short side (preprocess.images)."""
    return {path.name: resize_image(path.read_bytes(), 256)[0] for path in PHOTOS}


def pillow(data: bytes, box, size: int, flip: bool) -> np.ndarray:
    """Pillow's full decode of `box` (the reference)."""
    out = np.empty((size, size, 3), dtype=np.uint8)
    jpeg.decode_full(data, tuple(float(value) for value in box), size, flip, out)
    return out


def train_pair(data: bytes, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(Pillow's pixels, the ROI decoder's) for the box and flip that `seed` draws."""
    aug = Augmentation()
    header = jpeg.probe(data)
    rng = random.Random(seed)
    box = sample_crop_box(header.width, header.height, aug.scale, aug.ratio, rng)
    flip = rng.random() < aug.flip_prob
    reference = pillow(data, box, size, flip)
    return reference, jpeg.decode_crop(data, box, size, flip, header=header)


def assert_close(reference: np.ndarray, decoded: np.ndarray, what: str) -> None:
    difference = np.abs(reference.astype(np.int16) - decoded.astype(np.int16))
    assert reference.shape == decoded.shape, what
    assert difference.mean() < MEAN_TOLERANCE, f"{what}: mean error {difference.mean():.3f}"
    assert difference.max() <= MAX_TOLERANCE, f"{what}: max error {difference.max()}"


@needs_extension
@pytest.mark.parametrize("size", [224, 128, 160, 192])
def test_train_crops_match_the_full_decode_on_every_photo(shard_photos, size):
    differences = []
    for name, data in shard_photos.items():
        assert jpeg.decode_path(jpeg.probe(data))[0] is jpeg.DecodePath.ROI, name
        for seed in range(4):
            reference, decoded = train_pair(data, size, seed)
            assert_close(reference, decoded, f"{name} seed {seed} at {size} px")
            differences.append(np.abs(reference.astype(np.int16) - decoded).ravel())
    assert np.concatenate(differences).mean() < MEAN_TOLERANCE / 10


@needs_extension
def test_dct_scaled_crops_of_full_size_photos_match_the_full_decode():
    """The original photos (up to 1582 px) at 64 and 128 px: reductions 2, 4 and 8 all occur."""
    aug = Augmentation()
    reductions = set()
    for path in PHOTOS:
        data = path.read_bytes()
        header = jpeg.probe(data)
        for size in (64, 128):
            for seed in range(3):
                _, _, height, width = sample_crop_box(
                    header.width, header.height, aug.scale, aug.ratio, random.Random(seed)
                )
                reductions.add(jpeg.dct_reduction(width, height, size))
                reference, decoded = train_pair(data, size, seed)
                assert_close(reference, decoded, f"{path.name} seed {seed} at {size} px")
    assert {1, 2, 4, 8} <= reductions


@needs_extension
def test_the_val_centre_crop_matches_the_full_decode(shard_photos):
    aug = Augmentation()
    for name, data in shard_photos.items():
        header = jpeg.probe(data)
        box = jpeg.box_from_corners(
            *val_geometry(header.width, header.height, aug.val_resize, aug.val_crop)
        )
        decoded = jpeg.decode_crop(data, box, aug.val_crop, False, header=header)
        assert_close(pillow(data, box, aug.val_crop, False), decoded, name)


def test_the_reduction_rule_is_the_scale_pillows_draft_picks():
    """Pillow's draft, asked for the reduced size, decodes at exactly dct_reduction's scale."""
    data = (REPO / "tools" / "photos" / "flower_of_life.jpg").read_bytes()  # 1320x1582
    for box_side, size, expected in [(100, 128, 1), (230, 128, 1), (460, 224, 2), (900, 224, 4)]:
        reduction = jpeg.dct_reduction(box_side, box_side, size)
        assert reduction == expected, (box_side, size)
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (image.width // reduction, image.height // reduction))
            assert round(1320 / image.size[0]) == reduction, (box_side, size)
    assert jpeg.dct_reduction(1300, 1300, 128) == 8


# --- decode_train / decode_val take the ROI path --------------------------------------------


@needs_extension
def test_decode_train_is_the_roi_decode_of_the_same_draws(shard_photos):
    """Box and flip from the header, the same rng in the same order: the loaders' pixels are
    decode_crop's, bit for bit, and an `out` slot is filled in place."""
    aug = Augmentation()
    for name, data in list(shard_photos.items())[:6]:
        header = jpeg.probe(data)
        for seed in range(3):
            rng = random.Random(seed)
            box = sample_crop_box(header.width, header.height, aug.scale, aug.ratio, rng)
            flip = rng.random() < aug.flip_prob
            out = np.zeros((160, 160, 3), dtype=np.uint8)
            assert decode_train(data, aug, random.Random(seed), 160, out=out) is out
            np.testing.assert_array_equal(
                out, jpeg.decode_crop(data, box, 160, flip, header=header), name
            )


@needs_extension
def test_decode_val_is_the_roi_decode_of_the_centre_box(shard_photos):
    aug = Augmentation()
    for name, data in list(shard_photos.items())[:6]:
        header = jpeg.probe(data)
        box = jpeg.box_from_corners(
            *val_geometry(header.width, header.height, aug.val_resize, aug.val_crop)
        )
        expected = jpeg.decode_crop(data, box, aug.val_crop, False, header=header)
        np.testing.assert_array_equal(decode_val(data, aug), expected, name)


def test_without_the_extension_decode_train_and_val_are_pillows_full_decode(monkeypatch):
    """The fall-back, in process: every file takes Pillow's path, pixel for pixel."""
    monkeypatch.setattr(jpeg, "AVAILABLE", False)
    aug = Augmentation()
    for path in PHOTOS[:4]:
        data = resize_image(path.read_bytes(), 256)[0]
        header = jpeg.probe(data)
        assert jpeg.decode_path(header)[0] is jpeg.DecodePath.FULL
        rng = random.Random(5)
        box = sample_crop_box(header.width, header.height, aug.scale, aug.ratio, rng)
        flip = rng.random() < aug.flip_prob
        expected = pillow(data, box, 192, flip)
        np.testing.assert_array_equal(decode_train(data, aug, random.Random(5), 192), expected)
        corners = val_geometry(header.width, header.height, aug.val_resize, aug.val_crop)
        expected = pillow(data, jpeg.box_from_corners(*corners), aug.val_crop, False)
        np.testing.assert_array_equal(decode_val(data, aug), expected)


def test_roi_decode_off_gives_pillows_full_decode_pixel_for_pixel(monkeypatch):
    """data.roi_decode=false (Augmentation.roi): the extension is built, Pillow decodes anyway."""
    calls = []
    full = jpeg.decode_full
    monkeypatch.setattr(jpeg, "decode_full", lambda *args: calls.append(args[2]) or full(*args))
    pillow_aug, roi_aug = Augmentation(roi=False), Augmentation()
    for path in PHOTOS[:4]:
        data = resize_image(path.read_bytes(), 256)[0]
        header = jpeg.probe(data)
        rng = random.Random(5)
        box = sample_crop_box(header.width, header.height, pillow_aug.scale, pillow_aug.ratio, rng)
        flip = rng.random() < pillow_aug.flip_prob
        corners = val_geometry(header.width, header.height, 256, 224)
        expected = [pillow(data, box, 192, flip)]
        expected.append(pillow(data, jpeg.box_from_corners(*corners), 224, False))
        calls.clear()
        np.testing.assert_array_equal(
            decode_train(data, pillow_aug, random.Random(5), 192), expected[0]
        )
        np.testing.assert_array_equal(decode_val(data, pillow_aug), expected[1])
        assert calls == [192, 224]  # both took Pillow's path
        decode_train(data, roi_aug, random.Random(5), 192)
        decode_val(data, roi_aug)
        assert calls == [192, 224]  # the default takes the ROI path


# --- oddballs: each takes the ROI path and matches, or falls back and matches --------------


def _photo_crop(size: tuple[int, int]) -> Image.Image:
    with Image.open(REPO / "tools" / "photos" / "golden_gate.jpg") as image:
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def _save(image: Image.Image, restart: int, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, restart_marker_blocks=restart, **options)
    return buffer.getvalue()


def oddball(kind: str, restart: int = 0) -> bytes:
    """Real encoders' output for each odd kind (Pillow here; cjpeg/jpegtran files committed),
    with a restart marker after every `restart` MCUs (0 or 1)."""
    if kind == "progressive":
        return _save(_photo_crop((341, 256)), restart, progressive=True)
    if kind == "grayscale":
        return _save(_photo_crop((341, 256)).convert("L"), restart)
    if kind == "cmyk":
        return _save(_photo_crop((341, 256)).convert("CMYK"), restart)
    if kind == "4:4:4":
        return _save(_photo_crop((300, 256)), restart, subsampling=0)
    if kind == "4:2:2":
        return _save(_photo_crop((300, 256)), restart, subsampling=1)
    if kind == "4:2:0-odd-size":
        return _save(_photo_crop((257, 255)), restart, subsampling=2)
    if kind == "png-as-jpeg":
        buffer = io.BytesIO()
        _photo_crop((300, 256)).save(buffer, format="PNG")
        return buffer.getvalue()
    return (ODD_FIXTURES / f"{kind}{'-rst1' if restart else ''}.jpg").read_bytes()


# kind → the path it must take where the extension is built
ODDBALLS = {
    "progressive": jpeg.DecodePath.ROI,
    "grayscale": jpeg.DecodePath.ROI,
    "4:4:4": jpeg.DecodePath.ROI,
    "4:2:2": jpeg.DecodePath.ROI,
    "4:2:0-odd-size": jpeg.DecodePath.ROI,
    "411-odd-size": jpeg.DecodePath.ROI,  # cjpeg -sample 4x1, 251x197
    "440-odd-size": jpeg.DecodePath.ROI,  # cjpeg -sample 1x2, 251x197
    "progressive-420-odd-size": jpeg.DecodePath.ROI,  # jpegtran -progressive of a photo
    "rgb-adobe": jpeg.DecodePath.ROI,  # cjpeg -rgb: RGB components, no YCbCr transform
    "cmyk": jpeg.DecodePath.FULL,  # Pillow's CMYK conversion is the reference
    "png-as-jpeg": jpeg.DecodePath.FULL,  # ImageNet's n02105855_2933.JPEG
}


@needs_extension
@pytest.mark.parametrize("kind", sorted(ODDBALLS))
def test_each_oddball_takes_its_path_and_matches_the_full_decode(kind):
    data = oddball(kind)
    header = jpeg.probe(data)
    path, reason = jpeg.decode_path(header)
    assert path is ODDBALLS[kind], f"{kind}: {reason} ({header})"
    for size in (224, 128):
        for seed in range(6):
            reference, decoded = train_pair(data, size, seed)
            assert_close(reference, decoded, f"{kind} seed {seed} at {size} px")


def test_a_truncated_jpeg_fails_as_decode_train_does():
    """No end-of-image marker: Pillow decodes it and raises, even for a crop above the cut."""
    whole = (REPO / "tools" / "photos" / "chicago.jpg").read_bytes()
    data = whole[: len(whole) // 2]
    with pytest.raises(OSError) as reference:
        decode_train(data, Augmentation(), random.Random(0), 224)
    assert jpeg.decode_path(jpeg.probe(data))[0] is jpeg.DecodePath.FULL
    with pytest.raises(OSError) as ours:
        jpeg.decode_crop(data, (0, 0, 300, 300), 224, False)
    assert type(ours.value) is type(reference.value)


# --- restart windows: a marker after every MCU, only the box's MCUs decoded ---------------


def roi(data: bytes, box, size: int, flip: bool) -> tuple[np.ndarray, bool]:
    """The ROI path's pixels for `box`, and whether it decoded only a restart window."""
    out = np.empty((size, size, 3), dtype=np.uint8)
    *_, windowed = jpeg._decode_roi(data, jpeg.probe(data), box, size, flip, out)
    return out, windowed


def window_boxes(data: bytes, count: int, seed: int):
    """Train boxes down to 2 % of the image (DCT-scaled at small sizes), and the val box."""
    header = jpeg.probe(data)
    rng = random.Random(seed)
    for _ in range(count):
        yield sample_crop_box(header.width, header.height, (0.02, 1.0), (0.5, 2.0), rng)
    yield jpeg.box_from_corners(*val_geometry(header.width, header.height, 256, 224))


@pytest.fixture(scope="session")
def plain_photos() -> dict[str, bytes]:
    """shard_photos encoded without restart markers: the same coefficients, the same pixels."""
    return {
        path.name: resize_image(path.read_bytes(), 256, restart_interval=0)[0] for path in PHOTOS
    }


@needs_extension
def test_a_restart_window_gives_the_whole_file_paths_very_bytes(shard_photos, plain_photos):
    """preprocess's files (a marker after every MCU) decode only the box's MCUs, to the same
    bytes as the same coefficients without markers, where every row above the box's bottom is
    Huffman-decoded; at every DCT scale (sizes 32-224 from 256 px photos), flipped or not."""
    checked = 0
    for name, data in shard_photos.items():
        plain = plain_photos[name]
        assert restart_interval(data) == RESTART_INTERVAL and restart_interval(plain) == 0, name
        for size in (224, 128, 64, 32):
            for index, box in enumerate(window_boxes(data, 3, seed=size)):
                flip = index % 2 == 1
                windowed, cut = roi(data, box, size, flip)
                whole, not_cut = roi(plain, box, size, flip)
                assert cut and not not_cut, f"{name} {box}"
                np.testing.assert_array_equal(windowed, whole, err_msg=f"{name} {box} at {size}")
                checked += 1
    assert checked == len(PHOTOS) * 4 * 4


@needs_extension
@pytest.mark.parametrize(
    "kind", sorted(kind for kind, path in ODDBALLS.items() if path.name == "ROI")
)
def test_each_oddball_with_markers_decodes_to_the_bytes_of_the_one_without(kind):
    """Grayscale, 4:4:4, 4:2:2, 4:1:1, 4:4:0, odd sizes, RGB: each MCU shape cut out and decoded
    as the whole file decodes it. Progressive files with markers take the whole-file path (their
    scans are not one MCU sequence), to the same bytes."""
    marked, plain = oddball(kind, restart=1), oddball(kind)
    assert restart_interval(marked) == 1 and restart_interval(plain) == 0
    progressive = jpeg.probe(marked).progressive
    for size in (224, 96, 40):
        for index, box in enumerate(window_boxes(marked, 4, seed=size)):
            windowed, cut = roi(marked, box, size, index % 2 == 0)
            whole, not_cut = roi(plain, box, size, index % 2 == 0)
            assert cut is not progressive and not not_cut, kind
            np.testing.assert_array_equal(windowed, whole, err_msg=f"{kind} {box} at {size}")


@needs_extension
def test_markers_out_of_sequence_fall_back_to_the_whole_file_and_pillow_decides(shard_photos):
    """A damaged scan is never cut into a window that hides the damage: the whole-file path
    runs, libjpeg flags the marker, and Pillow's decode is what the sample gets, as before."""
    data = bytearray(next(iter(shard_photos.values())))
    scan = data.index(b"\xff\xda")
    third = [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", bytes(data[scan:]))][2]
    data[scan + third + 1] = 0xD0 + (data[scan + third + 1] - 0xD0 + 3) % 8
    data = bytes(data)
    box = (40.0, 30.0, 150.0, 160.0)
    with pytest.raises(jpeg._jpeg.JpegError, match="(?i)corrupt|marker"):
        roi(data, box, 128, False)
    np.testing.assert_array_equal(
        jpeg.decode_crop(data, box, 128, False), pillow(data, box, 128, False)
    )


# --- the AVX2 build against the plain-C one -----------------------------------------------

SOURCE = REPO / "pipeline" / "data" / "_jpeg.c"


def build_plain_extension(directory: Path):
    """_jpeg.c compiled without its AVX2 loops (-DJPEG_ROI_PLAIN), as a machine without AVX2
    builds it, imported under its own name from `directory`."""
    import importlib.util
    import shutil
    import sysconfig

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the plain variant")
    target = directory / ("_jpeg" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(
        [
            compiler,
            "-O3",
            "-std=gnu11",
            "-fPIC",
            "-shared",
            "-ffp-contract=off",
            "-DJPEG_ROI_PLAIN",
            "-I" + sysconfig.get_paths()["include"],
            str(SOURCE),
            "-ljpeg",
            "-o",
            str(target),
        ],
        check=True,
        timeout=120,
    )
    spec = importlib.util.spec_from_file_location("_jpeg", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.SIMD == "plain"
    return module


@needs_extension
def test_the_plain_c_build_writes_the_same_bytes_as_the_installed_one(shard_photos, tmp_path):
    """Integer arithmetic: the AVX2 loops and the plain-C ones must agree to the byte (also
    for odd sizes, whose last pixels and bytes take the narrower loops, for upscales, whose
    pixels have two taps, for the many taps of a large downscale (37 px from a DCT-scaled
    whole image), and for the scale-1 copy of whole pixels)."""
    plain = build_plain_extension(tmp_path)
    installed = jpeg._jpeg
    cases = 0
    for index, data in enumerate(list(shard_photos.values())[:12]):
        header = jpeg.probe(data)
        for size, seed in ((224, index), (161, index + 50), (37, index + 90), (255, index + 7)):
            rng = random.Random(seed)
            top, left, height, width = sample_crop_box(
                header.width, header.height, (0.08, 1.0), (3 / 4, 4 / 3), rng
            )
            flip = rng.random() < 0.5
            boxes = [(left, top, left + width, top + height, 1)]
            boxes.append((0, 0, size, size, 1))  # whole pixels at scale 1: the copy
            boxes.append((0.0, 0.0, header.width / 2, header.height / 2, 2))  # DCT-scaled
            boxes.append((10.5, 20.25, 70.5, 95.75, 1))  # an upscale: two taps a pixel
            for box in boxes:
                outputs = []
                for module in (installed, plain):
                    out = np.empty((size, size, 3), dtype=np.uint8)
                    module.decode_crop(data, out, *box, size, flip)
                    outputs.append(out)
                np.testing.assert_array_equal(outputs[0], outputs[1], f"{box} at {size} px")
                cases += 1
    assert cases == 12 * 4 * 4
    for seed in range(300):  # the draws are plain C in both builds: the same boxes
        args = (seed * 7919 + 1, 341 + seed, 256 + seed % 7, (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
        assert plain.draw_train(*args) == installed.draw_train(*args)


# --- the batch call: read, draws and decode of a batch in C ----------------------------------

DRAW_RANGES = [  # (scale, ratio, flip_prob): ImageNet's, a tight scale that often falls back,
    ((0.08, 1.0), (3 / 4, 4 / 3), 0.5),  # ratios given high to low, degenerate, extreme
    ((0.9, 1.0), (3 / 4, 4 / 3), 0.5),
    ((0.25, 1.0), (4 / 3, 3 / 4), 0.3),
    ((1.0, 1.0), (1.0, 1.0), 1.0),
    ((0.5, 0.5), (0.1, 10.0), 0.0),
]


@needs_extension
def test_the_c_draws_are_pythons_draw_for_draw():
    """random.Random(seed) → sample_crop_box → random() < flip_prob, against the C twin over
    seeds of one and two 32-bit words (0, 2**32 - 1, 2**32, 2**63 - 1 among them), sizes from
    1 px to 4,000 px (1 px wide or tall: the fall-back branches) and every range above."""
    meta = random.Random(20261206)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**63 - 1]
    fallbacks = 0
    for case in range(12_000):
        scale, ratio, flip_prob = DRAW_RANGES[case % len(DRAW_RANGES)]
        width = meta.choice([1, 2, 3, 17, 256, 341, 1582, meta.randint(1, 4000)])
        height = meta.choice([1, 5, 256, 300, 2000, meta.randint(1, 4000)])
        seed = seeds[case] if case < len(seeds) else meta.getrandbits(meta.choice([20, 33, 63]))
        rng = random.Random(seed)
        box = sample_crop_box(width, height, scale, ratio, rng)
        expected = (*box, rng.random() < flip_prob)
        got = jpeg._jpeg.draw_train(seed, width, height, scale, ratio, flip_prob)
        assert got == expected, f"seed {seed}, {width}x{height}, {scale}, {ratio}"
        fallbacks += box[:2] == ((height - box[2]) // 2, (width - box[3]) // 2)
    assert fallbacks > 500, "the fall-back branches were not reached"


def _batch_sources(shard_photos, tmp_path) -> tuple[list, list[int]]:
    """Paths, bytes and the oddballs in one batch: (sources, the positions the Python path must
    take: CMYK, the PNG, a truncated JPEG, a missing file, an empty file, a non-source)."""
    photos = list(shard_photos.items())[:8]
    sources, left = [], []
    for index, (name, data) in enumerate(photos):
        if index % 2:
            sources.append(data)
        else:
            path = tmp_path / name
            path.write_bytes(data)
            sources.append(str(path))
    for kind in sorted(ODDBALLS):
        if ODDBALLS[kind] is jpeg.DecodePath.FULL:
            left.append(len(sources))
        sources.append(oddball(kind))
    whole = shard_photos[photos[0][0]]
    left.append(len(sources))
    sources.append(whole[: len(whole) * 2 // 3])  # truncated: Pillow decides (and raises)
    left.append(len(sources))
    sources.append(str(tmp_path / "missing.JPEG"))
    (tmp_path / "empty.JPEG").write_bytes(b"")
    left.append(len(sources))
    sources.append(str(tmp_path / "empty.JPEG"))
    left.append(len(sources))
    sources.append(None)
    return sources, left


@needs_extension
@pytest.mark.parametrize("size", [224, 128])
def test_a_batch_is_the_bytes_of_decode_train_and_leaves_the_rest(shard_photos, tmp_path, size):
    """Every position the batch decodes holds decode_train's very bytes for the same sample
    seed (so every draw, resume and cross-backend test holds); the positions it leaves are
    exactly those the ROI path does not take, and unreadable ones, untouched."""
    aug = Augmentation()
    sources, expected_left = _batch_sources(shard_photos, tmp_path)
    indices = np.arange(100, 100 + len(sources))
    out = np.full((len(sources), size, size, 3), 17, dtype=np.uint8)
    left = decode_train_batch(sources, aug, 7, 3, indices, size, out)
    assert left == expected_left
    for position, source in enumerate(sources):
        if position in left:
            assert (out[position] == 17).all(), f"position {position} was written"
            continue
        rng = sample_rng(7, 3, int(indices[position]))
        reference = decode_train(source, aug, rng, size)
        np.testing.assert_array_equal(out[position], reference, f"position {position}")


@needs_extension
def test_a_batch_leaves_everything_to_python_with_auto_augment_or_roi_off(shard_photos):
    data = list(shard_photos.values())[:3]
    out = np.zeros((3, 64, 64, 3), dtype=np.uint8)
    for aug in (Augmentation(auto_augment="trivial"), Augmentation(roi=False)):
        assert decode_train_batch(data, aug, 0, 0, np.arange(3), 64, out) == [0, 1, 2]
    assert not out.any()


def test_a_batch_with_a_wrong_out_or_seeds_is_refused():
    data = [(REPO / "tools" / "photos" / "chicago.jpg").read_bytes()] * 2
    seeds = sample_seeds(0, 0, np.arange(2))
    with pytest.raises(ValueError, match=r"uint8 \[2, 64, 64, 3\], got uint8 \(3, 64, 64, 3\)"):
        decode_train_batch(
            data, Augmentation(), 0, 0, np.arange(2), 64, np.empty((3, 64, 64, 3), np.uint8)
        )
    if jpeg.AVAILABLE:
        with pytest.raises(ValueError, match="2 sources need 16 bytes of uint64 seeds"):
            jpeg.decode_train_batch(
                data,
                seeds[:1],
                (0.08, 1.0),
                (0.75, 1.33),
                0.5,
                64,
                np.empty((2, 64, 64, 3), np.uint8),
            )


# --- the output buffer ----------------------------------------------------------------------


@needs_extension
def test_the_same_out_array_is_filled_twice_without_allocating(shard_photos):
    first, second = list(shard_photos.values())[:2]
    out = np.empty((224, 224, 3), dtype=np.uint8)
    assert jpeg.decode_crop(first, (10, 20, 150, 160), 224, False, out=out) is out
    header = jpeg.probe(second)
    tracemalloc.start()
    try:
        returned = jpeg.decode_crop(second, (5, 7, 200, 180), 224, True, out=out, header=header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert returned is out
    assert peak < 16 * 1024, f"{peak} bytes allocated in Python for a 150,528-byte image"
    np.testing.assert_array_equal(out, jpeg.decode_crop(second, (5, 7, 200, 180), 224, True))


@needs_extension
def test_a_batch_slot_is_filled_in_place_and_its_neighbours_kept(shard_photos):
    batch = np.zeros((3, 160, 160, 3), dtype=np.uint8)
    data = next(iter(shard_photos.values()))
    jpeg.decode_crop(data, (0, 0, 200, 200), 160, False, out=batch[1])
    assert batch[1].any()
    assert not batch[0].any() and not batch[2].any()
    np.testing.assert_array_equal(batch[1], jpeg.decode_crop(data, (0, 0, 200, 200), 160, False))


def test_a_wrong_out_array_is_refused_with_what_was_expected():
    data = (REPO / "tools" / "photos" / "chicago.jpg").read_bytes()
    with pytest.raises(ValueError, match=r"shape \(224, 224, 3\), got uint8 \(224, 224, 4\)"):
        jpeg.decode_crop(data, (0, 0, 100, 100), 224, False, out=np.empty((224, 224, 4), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        jpeg.decode_crop(data, (0, 0, 0, 100), 224, False)


# --- the fall-back when the extension is missing --------------------------------------------

MISSING_EXTENSION = """
import logging, random, sys
sys.modules["pipeline.data._jpeg"] = None  # what a machine without the build sees: ImportError
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from pipeline.data import jpeg
from pipeline.data.transforms import Augmentation, decode_train, sample_crop_box
data = open(sys.argv[1], "rb").read()
header = jpeg.probe(data)
path, reason = jpeg.decode_path(header)
assert not jpeg.AVAILABLE and path is jpeg.DecodePath.FULL, (path, reason)
rng = random.Random(3)
aug = Augmentation()
box = sample_crop_box(header.width, header.height, aug.scale, aug.ratio, rng)
decoded = jpeg.decode_crop(data, box, 160, rng.random() < 0.5, header=header)
assert (decoded == decode_train(data, aug, random.Random(3), 160)).all()
for _ in range(3):
    jpeg.decode_crop(data, box, 160, False, header=header)
import numpy as np
from pipeline.data.transforms import decode_train_batch
batch = np.zeros((2, 160, 160, 3), np.uint8)
assert decode_train_batch([data, data], aug, 0, 0, np.arange(2), 160, batch) == [0, 1]
print("full decode ok")
"""


def test_without_the_extension_one_line_says_so_and_the_full_decode_runs():
    result = subprocess.run(
        [sys.executable, "-c", MISSING_EXTENSION, str(PHOTOS[0])],
        capture_output=True,
        check=False,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "full decode ok"
    lines = [line for line in result.stderr.splitlines() if "ROI JPEG decoder" in line]
    assert len(lines) == 1, result.stderr
    assert "unavailable" in lines[0] and "full-decode path" in lines[0], lines[0]
    assert "pipeline.data._jpeg" in lines[0], "the line says why"
