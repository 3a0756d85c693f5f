"""One image in, one training-ready image out: decode → RGB → short side N (Lanczos) → JPEG.

    from preprocess.images import resize_image
    jpeg_bytes, info = resize_image(open("n01440764_10026.JPEG", "rb").read(), short_side=256)

Choices, and why:

- Short side exactly `short_side`; the long side is `round(long * short_side / short)` (at least
  1 px). This is ImageMagick's `256^` geometry and what the folder/WebDataset/DALI loaders expect.
- `only_shrink=True` is ImageMagick's `256^>`: an image whose short side is already <= N keeps
  its size. It is still decoded and re-encoded, never copied: every output is then a baseline RGB
  JPEG at one quality with no EXIF/ICC metadata, so PIL, DALI and nvJPEG all see the same pixels
  (DALI honours EXIF orientation, PIL does not; stripping the tag removes the disagreement).
- EXIF orientation is ignored, as in every ImageNet reference (torchvision's ImageFolder loader,
  the original devkit tools, ImageMagick without -auto-orient): pixels are kept as stored, so the
  labels and boxes in the official annotations still match.
- JPEG DCT scaling (`Image.draft`) decodes a large JPEG at 1/2, 1/4 or 1/8 size directly, which is
  most of the speed-up over ImageMagick. It is used only while the decoded image stays at least
  `DRAFT_REDUCING_GAP` times the target size, as Pillow's own `thumbnail(reducing_gap=2.0)` does,
  so a real Lanczos reduction of at least that factor always follows and the result stays close
  to a full decode (tests/preprocess/test_images.py bounds the difference).
- Repairs for what ImageNet really contains: 22 CMYK JPEGs in train, one PNG named
  n02105855_2933.JPEG, grayscale images, and (in other datasets) RGBA/LA/P with transparency
  (composited on white) and 16-bit images (scaled to 8 bits). Each repair is named in
  `ImageInfo.repairs`.
- A restart marker after every MCU (`core.jpegfile.RESTART_INTERVAL`, Pillow's
  `restart_marker_blocks`): the same quantized coefficients, so the same pixels for every
  decoder, and the ROI decoder Huffman-decodes only the MCUs a crop keeps (~20 % less CPU per
  train image), for 3.7 bytes a MCU (3.6 % over tools/photos at 256 px).
- The original's source name and size go into a JPEG comment (`PROVENANCE_PREFIX` + JSON), so
  `preprocess shard` can record the original size in each sample's .json member.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from core.jpegfile import RESTART_INTERVAL

# A truncated file is an error, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

Subsampling = Literal["4:2:0", "4:4:4"]
# Pillow's `subsampling` codes; 2 (4:2:0) is also what Pillow uses when none is given, so
# ImageNet outputs are byte-identical to those made before the option existed.
SUBSAMPLING: dict[str, int] = {"4:4:4": 0, "4:2:0": 2}
DRAFT_REDUCING_GAP = 2.0  # DCT-scale only while the decoded image stays >= 2x the target
PROVENANCE_PREFIX = "imagenet-pipeline "  # JPEG comment: prefix + {"source","width","height"}


class BadImage(Exception):
    """An input that cannot be decoded (zero bytes, truncated, not an image). str() is the reason.

    Deliberately not a `UserError`: a bad image is a finding about one input, not a mistake in
    the command. Resize catches it per image, lists the source and reason, carries on with the
    rest and exits 1 at the end; under the UserError root, any `except UserError` on the way up
    (every CLI's) would turn one bad JPEG among 1.28 M into a stopped run with exit 2.
    """


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    width: int  # original width in pixels
    height: int  # original height in pixels
    format: str  # original container format as PIL names it ("JPEG", "PNG", ...)
    mode: str  # original PIL mode ("RGB", "CMYK", "L", "RGBA", "P", "I;16", ...)
    out_width: int  # width of the written JPEG
    out_height: int  # height of the written JPEG
    repairs: tuple[str, ...] = ()  # what was fixed, e.g. ("cmyk-to-rgb",), ("png-named-jpeg",)

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)


def target_size(
    width: int, height: int, short_side: int, only_shrink: bool = False
) -> tuple[int, int]:
    """The output size: short side `short_side`, aspect kept (long side rounded to the nearest
    pixel)."""
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    short = min(width, height)
    if only_shrink and short <= short_side:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def _to_rgb(image: Image.Image, repairs: list[str]) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, naming each repair in `repairs`."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "CMYK":
        repairs.append("cmyk-to-rgb")
        return image.convert("RGB")
    if mode in ("L", "1"):
        repairs.append("grayscale-to-rgb")
        return image.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (or float) grayscale: scale the used range to 8 bits rather than clipping at 255.
        repairs.append("16bit-to-8bit")
        array = np.asarray(image).astype(np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        array = np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        repairs.append("alpha-on-white")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "P":
        repairs.append("palette-to-rgb")
    else:
        repairs.append(f"{mode.lower()}-to-rgb")
    return image.convert("RGB")


def decode_image(
    data: bytes, target: int | None = None
) -> tuple[Image.Image, ImageInfo, list[str]]:
    """Decode bytes to an RGB image (repairs applied). Raises BadImage on anything undecodable.

    With `target` (a short side), large JPEGs are DCT-scaled while staying >= DRAFT_REDUCING_GAP x
    target. Returns (image, info-without-output-size, repairs).
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            image_format, mode = image.format or "unknown", image.mode
            if target is not None and image_format == "JPEG":
                wanted = target_size(width, height, round(target * DRAFT_REDUCING_GAP))
                if min(wanted) < min(width, height):
                    image.draft("RGB" if mode == "RGB" else None, wanted)
            image.load()
    except UnidentifiedImageError:
        raise BadImage(
            f"not a recognised image format (first bytes {data[:8]!r}, {len(data)} bytes)"
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise BadImage(f"too many pixels ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL reports truncation as OSError("image file is truncated ...") and corrupt data as
        # OSError/SyntaxError/ValueError depending on the plugin.
        raise BadImage(f"cannot decode: {err}") from None
    repairs: list[str] = []
    if image_format != "JPEG":
        repairs.append(f"{image_format.lower()}-to-jpeg")
    rgb = _to_rgb(image, repairs)
    info = ImageInfo(width, height, image_format, mode, width, height, tuple(repairs))
    return rgb, info, repairs


def resize_image(
    data: bytes,
    short_side: int = 256,
    *,
    only_shrink: bool = False,
    quality: int = 90,
    subsampling: Subsampling = "4:2:0",
    source: str | None = None,
    use_draft: bool = True,
    restart_interval: int = RESTART_INTERVAL,
) -> tuple[bytes, ImageInfo]:
    """Decode `data`, repair to RGB, resize so the short side is `short_side`, encode as JPEG.

    Args:
        only_shrink: ImageMagick `256^>`: never enlarge an image whose short side is <= short_side.
        subsampling: JPEG chroma subsampling; "4:2:0" is libjpeg's default (what every ImageNet
            output has), "4:4:4" keeps full colour resolution (see `resize_pixels`).
        source: the original's name, recorded with its size in a JPEG comment for `shard`.
        use_draft: JPEG DCT scaling for large inputs (off only to measure its effect).
        restart_interval: MCUs between restart markers (0: none, the same pixels; only to
            measure or test what the markers do).
    Raises:
        BadImage: zero bytes, truncated, or not an image; str(err) is the reason.
    """
    image, info, repairs = decode_image(data, short_side if use_draft else None)
    return _resize_and_encode(
        image,
        info,
        repairs,
        short_side,
        only_shrink,
        quality,
        subsampling,
        source,
        restart_interval,
    )


def resize_pixels(
    pixels: np.ndarray,
    short_side: int,
    *,
    only_shrink: bool = False,
    quality: int = 100,
    subsampling: Subsampling = "4:4:4",
    source: str | None = None,
) -> tuple[bytes, ImageInfo]:
    """An image given as uint8 pixels ([H, W, 3] RGB or [H, W] gray: CIFAR, MNIST) → RGB JPEG.

    Gray becomes R = G = B (the shard contract is RGB JPEGs), which JPEG stores as luma with
    constant chroma. The defaults are near-lossless (within 4 levels on 32 px photos, 1 on
    gray; preprocess/prepare.py `default_options` says why): 4:2:0 would halve the colour
    resolution of an image this small.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise BadImage(
            f"pixels are {pixels.dtype} {list(pixels.shape)}, expected uint8 [H, W(, 3)]"
        )
    gray = pixels.ndim == 2
    image = Image.fromarray(pixels, "L" if gray else "RGB")
    image = image.convert("RGB") if gray else image
    height, width = pixels.shape[:2]
    info = ImageInfo(width, height, "pixels", "L" if gray else "RGB", width, height)
    return _resize_and_encode(
        image, info, [], short_side, only_shrink, quality, subsampling, source
    )


def _resize_and_encode(
    image: Image.Image,
    info: ImageInfo,
    repairs: list[str],
    short_side: int,
    only_shrink: bool,
    quality: int,
    subsampling: Subsampling,
    source: str | None,
    restart_interval: int = RESTART_INTERVAL,
) -> tuple[bytes, ImageInfo]:
    out_width, out_height = target_size(info.width, info.height, short_side, only_shrink)
    if image.size != (out_width, out_height):
        image = image.resize((out_width, out_height), Image.LANCZOS)
    comment = PROVENANCE_PREFIX + json.dumps(
        {"source": source or "", "width": info.width, "height": info.height},
        sort_keys=True,
        separators=(",", ":"),
    )
    buffer = io.BytesIO()
    image.save(
        buffer,
        "JPEG",
        quality=quality,
        subsampling=SUBSAMPLING[subsampling],
        comment=comment.encode("utf-8"),
        restart_marker_blocks=restart_interval,
    )
    info = dataclasses.replace(
        info, out_width=out_width, out_height=out_height, repairs=tuple(repairs)
    )
    return buffer.getvalue(), info


def read_provenance(image: Image.Image) -> dict | None:
    """The {"source","width","height"} that resize_image stored in a JPEG comment, or None."""
    comment = image.info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", "replace")
    if not comment or not comment.startswith(PROVENANCE_PREFIX):
        return None
    try:
        value = json.loads(comment[len(PROVENANCE_PREFIX) :])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
