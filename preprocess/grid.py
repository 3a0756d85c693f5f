"""`grid`: a labelled grid of random samples, the sanity check to run before training.

    python -m preprocess grid shards/train -o grid.png --count 32 --seed 0
    python -m preprocess grid train-256/ -o grid.png          # class folders work too

Each tile is captioned "class index  WNID" and the class name from LOC_synset_mapping.txt (found
next to the data or up to two folders above it, or taken from the shard manifest). A wrong label
offset, BGR channels or a rotated set shows up here at a glance. `render_grid` is shared with
the loaders' batch grid and the trainer's prediction grid; it needs matplotlib, not torch.
"""

from __future__ import annotations

import argparse
import bisect
import io
import itertools
import logging
import random
import tarfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from preprocess.errors import UserError
from preprocess.manifest import MANIFEST_NAME, dali_index_name, read_manifest
from preprocess.synsets import find_class_names

logger = logging.getLogger(__name__)


def render_grid(
    images: Sequence[np.ndarray], captions: Sequence[str], path: Path, columns: int = 8
) -> Path:
    """Save HWC uint8 RGB `images` with `captions` under each as one PNG at `path`; returns path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("render_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.35 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions):
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected HWC images, got shape {array.shape}")
        axis.imshow(
            array if array.shape[-1] != 1 else array[..., 0],
            cmap="gray" if array.shape[-1] == 1 else None,
        )
        axis.set_title("\n".join(textwrap.wrap(caption, 26)[:3]), fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def caption(label: int, wnid: str, class_names: dict[str, str]) -> str:
    name = class_names.get(wnid, "").split(",")[0]
    return f"{label} {wnid}" + (f"\n{name}" if name else "")


def _shard_dir(directory: Path) -> Path | None:
    """DIR itself when it holds shards, or DIR/train (then DIR/val) for a `prepare` output."""
    for candidate in (directory, directory / "train", directory / "val"):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return None


def read_shard_samples(tar_path: Path, positions: set[int]) -> dict[int, dict[str, bytes]]:
    """Members of the samples at `positions` (0-based, in tar order) of one shard.

    With the DALI index next to the tar, only those bytes are read (seek + read); without it the
    tar is scanned.
    """
    index_path = tar_path.with_name(dali_index_name(tar_path.name))
    found: dict[int, dict[str, bytes]] = {}
    if index_path.is_file():
        lines = index_path.read_text().splitlines()[1:]
        with open(tar_path, "rb") as handle:
            for position in positions:
                fields = lines[position].split()
                members = {}
                for start in range(0, len(fields), 4):
                    extension, offset, size = (
                        fields[start],
                        int(fields[start + 1]),
                        int(fields[start + 2]),
                    )
                    handle.seek(offset)
                    members[extension] = handle.read(size)
                found[position] = members
        return found
    with tarfile.open(tar_path) as tar:
        keys: list[str] = []
        for member in tar:
            key, _, extension = member.name.partition(".")
            if not keys or keys[-1] != key:
                keys.append(key)
            if len(keys) - 1 in positions:
                found.setdefault(len(keys) - 1, {})[extension] = tar.extractfile(member).read()
    return found


def sample_shards(directory: Path, count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` random samples from a shard directory, read straight from the tars."""
    manifest = read_manifest(directory)  # a ManifestError is a UserError: one line, exit 2
    class_names = manifest.class_names or find_class_names(directory)
    starts = list(itertools.accumulate((shard.count for shard in manifest.shards), initial=0))
    total = starts[-1]
    wanted: dict[int, set[int]] = {}
    for sample_index in random.Random(seed).sample(range(total), min(count, total)):
        shard_index = bisect.bisect_right(starts, sample_index) - 1
        wanted.setdefault(shard_index, set()).add(sample_index - starts[shard_index])
    images, captions = [], []
    for shard_index, positions in sorted(wanted.items()):
        tar_path = directory / manifest.shards[shard_index].name
        try:
            samples = read_shard_samples(tar_path, positions)
            for position in sorted(positions):
                members = samples[position]
                label = int(members["cls"])
                image = np.asarray(Image.open(io.BytesIO(members["jpg"])).convert("RGB"))
                images.append(image)
                captions.append(caption(label, manifest.classes[label], class_names))
        except (KeyError, IndexError, ValueError, OSError, tarfile.TarError) as err:
            raise UserError(
                f"{tar_path} (or its DALI index) is corrupted: sample read failed with "
                f"{type(err).__name__}: {err}; run `python -m preprocess verify {directory}`"
            ) from None
    return images, captions


def sample_folders(directory: Path, count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` random images from class folders DIR/WNID/*."""
    from preprocess.shards import list_samples

    _, samples = list_samples(directory)
    class_names = find_class_names(directory)
    chosen = random.Random(seed).sample(samples, min(count, len(samples)))
    images, captions = [], []
    for sample in chosen:
        with Image.open(directory / sample.path) as image:
            images.append(np.asarray(image.convert("RGB")))
        captions.append(caption(sample.label, sample.wnid, class_names))
    return images, captions


def build_grid(
    directory: Path, output: Path, count: int = 32, seed: int = 0, columns: int = 8
) -> Path:
    directory = Path(directory)
    if count < 1:
        raise UserError(f"--count must be >= 1, got {count}")
    shard_dir = _shard_dir(directory)
    if shard_dir is not None:
        images, captions = sample_shards(shard_dir, count, seed)
    else:
        images, captions = sample_folders(directory, count, seed)
    return render_grid(images, captions, output, columns)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", type=Path, help="a shard directory (with manifest.json) or class folders"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("grid.png"),
        help="PNG to write (default grid.png)",
    )
    parser.add_argument("--count", type=int, default=32, help="number of samples (default 32)")
    parser.add_argument(
        "--seed", type=int, default=0, help="which samples: same seed, same grid (default 0)"
    )
    parser.add_argument("--columns", type=int, default=8, help="tiles per row (default 8)")


def run(args: argparse.Namespace) -> int:
    path = build_grid(args.directory, args.output, args.count, args.seed, args.columns)
    print(f"grid: up to {args.count} samples from {args.directory} written to {path}")
    return 0
