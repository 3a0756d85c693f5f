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
import io
import logging
import random
import tarfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from preprocess.errors import UserError
from preprocess.manifest import MANIFEST_NAME, ManifestError, read_manifest
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


def sample_shards(directory: Path, count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` random samples from a shard directory, read straight from the tars."""
    try:
        manifest = read_manifest(directory)
    except ManifestError as err:
        raise UserError(str(err)) from None
    class_names = manifest.class_names or find_class_names(directory)
    positions = [
        (shard_index, position)
        for shard_index, shard in enumerate(manifest.shards)
        for position in range(shard.count)
    ]
    chosen = sorted(random.Random(seed).sample(positions, min(count, len(positions))))
    wanted: dict[int, set[int]] = {}
    for shard_index, position in chosen:
        wanted.setdefault(shard_index, set()).add(position)
    images, captions = [], []
    for shard_index, positions_wanted in sorted(wanted.items()):
        with tarfile.open(directory / manifest.shards[shard_index].name) as tar:
            samples: dict[str, dict[str, bytes]] = {}
            order: list[str] = []
            for member in tar:
                key, _, extension = member.name.partition(".")
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][extension] = tar.extractfile(member).read()
        for position in sorted(positions_wanted):
            members = samples[order[position]]
            label = int(members["cls"])
            wnid = manifest.classes[label]
            images.append(np.asarray(Image.open(io.BytesIO(members["jpg"])).convert("RGB")))
            captions.append(caption(label, wnid, class_names))
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
