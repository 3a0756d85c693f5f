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
from pathlib import Path

import numpy as np
from PIL import Image

from core.classes import find_class_names
from core.errors import UserError
from core.grid import caption, render_grid
from core.shard_format import (
    MANIFEST_NAME,
    ManifestError,
    dali_index_name,
    read_dali_index,
    read_manifest,
)

logger = logging.getLogger(__name__)


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
    found: dict[int, dict[str, bytes]] = {}
    if tar_path.with_name(dali_index_name(tar_path.name)).is_file():
        index = read_dali_index(tar_path)
        with open(tar_path, "rb") as handle:
            for position in positions:
                members = {}
                for member in index.samples[position]:
                    handle.seek(member.offset)
                    members[member.extension] = handle.read(member.size)
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
        except (ManifestError, KeyError, IndexError, ValueError, OSError, tarfile.TarError) as err:
            raise UserError(
                f"{tar_path} (or its DALI index) is corrupted: sample read failed with "
                f"{type(err).__name__}: {err}; run `python -m preprocess verify {directory}`"
            ) from None
    return images, captions


def sample_folders(directory: Path, count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` random images from class folders DIR/WNID/*."""
    from preprocess.shard_plan import list_samples

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
