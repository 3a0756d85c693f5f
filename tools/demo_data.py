"""Write scikit-learn's 1,797 real handwritten digits as a raw ImageNet in the Kaggle layout.

    python -m tools.demo_data demo/raw          # what `python -m tools.demo` runs first

The digits (UCI "Optical Recognition of Handwritten Digits", 8x8 pixels, 17 grey levels) ship
inside the scikit-learn wheel, so nothing is downloaded. Each digit becomes an upscaled RGB JPEG
and is filed under a real ImageNet WNID, in exactly the layout Kaggle's ImageNet download has:

    RAW/ILSVRC/Data/CLS-LOC/train/n01440764/n01440764_<sample>.JPEG  # digit 0, sklearn sample index
    RAW/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG         # flat, labels only in the CSV
    RAW/LOC_val_solution.csv                                         # ImageId,PredictionString
    RAW/LOC_synset_mapping.txt                                       # real lines for the 10 WNIDs

The 10 WNIDs are Imagenette's classes. They are already in sorted order, so digit d is class
index d (class index = position of the WNID in sorted order, as everywhere in this project).
The train/val split is stratified and seeded, so every build is byte-for-byte the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from core.logs import configure_logging
from preprocess.subsets import BUILTIN_CLASS_LISTS

logger = logging.getLogger(__name__)

# Imagenette's 10 classes (a real ImageNet subset), sorted; DEMO_WNIDS[d] holds digit d.
DEMO_WNIDS: tuple[str, ...] = BUILTIN_CLASS_LISTS["imagenette"]

# The full LOC_synset_mapping.txt from Kaggle's ImageNet download (1,000 lines, 31 KB).
SYNSET_MAPPING_PATH = Path(__file__).with_name("demo_assets") / "LOC_synset_mapping.txt"

TRAIN_SUBDIR = Path("ILSVRC/Data/CLS-LOC/train")
VAL_SUBDIR = Path("ILSVRC/Data/CLS-LOC/val")
COMPLETE_MARKER = ".demo-complete.json"


@dataclasses.dataclass(frozen=True)
class DemoDataset:
    """What `build_demo_raw` wrote: the raw root and its counts."""

    root: Path
    classes: tuple[str, ...]  # WNIDs in class-index order (digit d = classes[d])
    train_count: int
    val_count: int
    image_size: int  # pixels, square


def demo_synset_lines(wnids: tuple[str, ...] = DEMO_WNIDS) -> list[str]:
    """The real LOC_synset_mapping.txt lines ("nXXXXXXXX words") for `wnids`, in their order."""
    by_wnid = {}
    for line in SYNSET_MAPPING_PATH.read_text().splitlines():
        wnid = line.partition(" ")[0]
        by_wnid[wnid] = line
    missing = [wnid for wnid in wnids if wnid not in by_wnid]
    assert not missing, f"WNIDs {missing} are not in {SYNSET_MAPPING_PATH}"
    return [by_wnid[wnid] for wnid in wnids]


def render_digit(pixels: np.ndarray, image_size: int) -> bytes:
    """One 8x8 digit (values 0..16, ink high) → dark ink on white paper, RGB JPEG bytes."""
    grey = np.round(255.0 - pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [8, 8]
    image = Image.fromarray(grey).resize((image_size, image_size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def split_indices(
    targets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of sample indices into (train, val), each sorted."""
    generator = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        generator.shuffle(members)
        val_count = round(len(members) * val_fraction)
        val.extend(members[:val_count])
        train.extend(members[val_count:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def build_demo_raw(
    root: Path,
    *,
    image_size: int = 96,
    val_fraction: float = 0.2,
    seed: int = 0,
    per_class: int = 0,
) -> DemoDataset:
    """Write the digits as a raw Kaggle-layout ImageNet under `root` (reused when already complete).

    Args:
        image_size: side of the square JPEGs in pixels (the 8x8 digits are upscaled bicubically).
        per_class: keep only the first N digits of each class before splitting (0 = all ~180).
    """
    from sklearn.datasets import load_digits  # the data ships inside the scikit-learn wheel

    root = Path(root)
    parameters = {
        "image_size": image_size,
        "val_fraction": val_fraction,
        "seed": seed,
        "per_class": per_class,
    }
    finished = _finished_dataset(root, parameters, image_size)
    if finished is not None:
        return finished
    digits = load_digits()
    images, targets = digits.images, digits.target  # [1797, 8, 8] float 0..16, [1797] int
    train_indices, val_indices = _choose_digits(targets, per_class, val_fraction, seed)

    # Write into a sibling temp dir and rename at the end: a crash never leaves a half dataset.
    staging = root.with_name(root.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    if root.exists():
        shutil.rmtree(
            root
        )  # only ever a finished demo dataset with other parameters (checked above)
    _write_train_folders(staging, images, targets, train_indices, image_size)
    _write_flat_val(staging, images, targets, val_indices, image_size, seed)
    (staging / "LOC_synset_mapping.txt").write_text("\n".join(demo_synset_lines()) + "\n")
    (staging / COMPLETE_MARKER).write_text(
        json.dumps(
            {
                "parameters": parameters,
                "train_count": len(train_indices),
                "val_count": len(val_indices),
                "source": "sklearn.datasets.load_digits",
            },
            indent=2,
        )
    )
    staging.rename(root)
    logger.info(
        "wrote %d train and %d val digits to %s", len(train_indices), len(val_indices), root
    )
    return DemoDataset(root, DEMO_WNIDS, len(train_indices), len(val_indices), image_size)


def _finished_dataset(root: Path, parameters: dict, image_size: int) -> DemoDataset | None:
    """The dataset already in `root` when it was made with `parameters`; FileExistsError when
    `root` holds something else."""
    marker = root / COMPLETE_MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded.get("parameters") == parameters:
            logger.info("raw demo dataset already complete in %s", root)
            return DemoDataset(
                root, DEMO_WNIDS, recorded["train_count"], recorded["val_count"], image_size
            )
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise FileExistsError(
            f"{root} exists and is not a finished demo dataset: choose an empty directory or "
            "remove it"
        )
    return None


def _choose_digits(
    targets: np.ndarray, per_class: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) into the digits, after keeping `per_class` of each class."""
    if per_class:
        keep = np.concatenate([np.flatnonzero(targets == label)[:per_class] for label in range(10)])
        keep.sort()
    else:
        keep = np.arange(len(targets))
    train_local, val_local = split_indices(targets[keep], val_fraction, seed)
    return keep[train_local], keep[val_local]


def _write_train_folders(
    staging: Path,
    images: np.ndarray,
    targets: np.ndarray,
    train_indices: np.ndarray,
    image_size: int,
) -> None:
    """STAGING/train/WNID/WNID_INDEX.JPEG, one folder per class (Kaggle's train layout)."""
    for wnid in DEMO_WNIDS:
        (staging / TRAIN_SUBDIR / wnid).mkdir(parents=True)
    for index in train_indices:
        wnid = DEMO_WNIDS[targets[index]]
        path = staging / TRAIN_SUBDIR / wnid / f"{wnid}_{index}.JPEG"
        path.write_bytes(render_digit(images[index], image_size))


def _write_flat_val(
    staging: Path,
    images: np.ndarray,
    targets: np.ndarray,
    val_indices: np.ndarray,
    image_size: int,
    seed: int,
) -> None:
    """A flat val folder and LOC_val_solution.csv, as Kaggle ships ILSVRC2012 val."""
    (staging / VAL_SUBDIR).mkdir(parents=True)
    # Val is flat and numbered in a seeded random order, as ILSVRC2012 val is: the file name
    # says nothing about the class, only LOC_val_solution.csv does.
    val_order = np.random.default_rng(seed + 1).permutation(val_indices)
    rows = ["ImageId,PredictionString"]
    last = image_size - 1
    for number, index in enumerate(val_order, start=1):
        image_id = f"ILSVRC2012_val_{number:08d}"
        (staging / VAL_SUBDIR / f"{image_id}.JPEG").write_bytes(
            render_digit(images[index], image_size)
        )
        # Kaggle's form: "WNID xmin ymin xmax ymax" per box; the digit fills the whole image.
        rows.append(f"{image_id},{DEMO_WNIDS[targets[index]]} 0 0 {last} {last} ")
    (staging / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo_data", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", type=Path, help="directory to create (reused if already complete)")
    parser.add_argument("--image-size", type=int, default=96, help="JPEG side in pixels")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of each class held out for val"
    )
    parser.add_argument("--seed", type=int, default=0, help="split and val-order seed")
    parser.add_argument(
        "--per-class", type=int, default=0, help="first N digits per class only (0 = all)"
    )
    args = parser.parse_args(argv)
    configure_logging(logging.INFO, "%(message)s", None)
    try:
        dataset = build_demo_raw(
            args.root,
            image_size=args.image_size,
            val_fraction=args.val_fraction,
            seed=args.seed,
            per_class=args.per_class,
        )
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{dataset.train_count} train + {dataset.val_count} val images in {dataset.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
