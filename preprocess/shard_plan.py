"""The shard run's plan: which samples, in which global order, in which shard.

`list_samples` reads class folders SRC/WNID/*.JPEG; `build_plan` sorts them by (WNID, key),
shuffles once with `random.Random(seed)` (DALI's and WebDataset's readers shuffle only inside a
buffer, so the order across the whole split is mixed at write time) and cuts them into shards of
`shard_size`: the `WritePlan`, saved as DST/.shard_plan.json before any tar is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path

from core.classes import find_class_names, folder_classes
from core.classes import read_class_list as read_class_list_file
from core.errors import UserError
from core.fileio import file_names
from core.imagefiles import is_image_file
from core.shard_format import MANIFEST_NAME, SPLITS, read_manifest
from preprocess.resize_records import FOLDER_MANIFEST_KIND, FOLDER_MANIFEST_NAME

PLAN_NAME = ".shard_plan.json"


PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Sample:
    key: str  # WebDataset key: the file stem, unique within the split, no dots
    wnid: str  # class folder name
    label: int  # class index = position of wnid in sorted order
    path: str  # relative to SRC, for reading and messages


@dataclasses.dataclass(frozen=True)
class WritePlan:
    """What a shard run writes: every shard's samples in order, and the digest that names it.

    Saved as DST/.shard_plan.json (`to_json`; the file name and fields predate the class name,
    which says "write" to keep it apart from the loaders' read plan in pipeline/data).
    """

    split: str
    seed: int
    shard_size: int
    classes: list[str]  # sorted class folder names
    shards: list[list[Sample]]  # shard index -> its samples, in write order
    digest: str  # sha256 over every setting and every sample in order: "same plan" test
    class_names: dict[str, str]  # WNID -> words (may be empty)
    short_side: int | None  # from SRC/resize_manifest.json when present
    only_shrink: bool | None = None  # likewise
    dataset: str = ""  # what prepare read ("imagenet", "cifar10", ...); "" for plain `shard`
    subset: dict | None = None  # prepare's subset record for this split, if any

    @property
    def num_samples(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def to_json(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "split": self.split,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "num_samples": self.num_samples,
            "num_shards": len(self.shards),
            "shard_counts": [len(shard) for shard in self.shards],
            "plan_sha256": self.digest,
            "classes": self.classes,
            "class_names": self.class_names,
            "short_side": self.short_side,
            "only_shrink": self.only_shrink,
            "dataset": self.dataset,
            "subset": self.subset,
        }


def sample_key(stem: str) -> str:
    """The WebDataset key for a file stem. WebDataset splits member names at the first dot, and a
    DALI index line separates its fields with whitespace, so dots and whitespace become underscores
    (two files that then collide are refused by `list_samples`)."""
    return re.sub(r"[.\s]", "_", stem)


def list_samples(src: Path, classes: list[str] | None = None) -> tuple[list[str], list[Sample]]:
    """(classes, samples sorted by (wnid, key)) for class folders SRC/WNID/*.JPEG.

    Args:
        classes: the split's full class list (label = position), when SRC may lack some folders;
            default: SRC's own folders.
    """
    src = Path(src)
    present = folder_classes(src)
    if not present:
        raise UserError(
            f"{src}: no class folders: "
            "expected SRC/n01440764/*.JPEG (run `preprocess resize` first)"
        )
    if classes is None:
        classes = present
    else:
        classes = sorted(classes)
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise UserError(
                f"{src}: class folders {unknown[:5]} are not in the given class list of "
                f"{len(classes)} classes: pass a class list that covers every folder"
            )
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for label, wnid in enumerate(classes):
        if wnid not in present:
            continue  # a class with no images in this split keeps its index
        names = file_names(src / wnid, is_image_file)
        for name in names:
            key = sample_key(Path(name).stem)
            relative = f"{wnid}/{name}"
            if key in seen:
                raise UserError(
                    f"{src}: {seen[key]} and {relative} both give the sample key {key!r}: "
                    f"keys must be unique within a split; rename one"
                )
            seen[key] = relative
            samples.append(Sample(key, wnid, label, relative))
    if not samples:
        raise UserError(f"{src}: the class folders hold no images")
    samples.sort(key=lambda sample: (sample.wnid, sample.key))
    return classes, samples


def read_resize_settings(src: Path) -> tuple[int | None, bool | None]:
    """(short side, only shrink) `resize` recorded in SRC/resize_manifest.json, (None, None) if
    none."""
    path = Path(src) / FOLDER_MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, None
    if (
        not isinstance(data, dict)
        or data.get("kind") != FOLDER_MANIFEST_KIND
        or "short_side" not in data
    ):
        return None, None
    return int(data["short_side"]), bool(data.get("only_shrink"))


def read_short_side(src: Path) -> int | None:
    """The short side `resize` recorded in SRC/resize_manifest.json, if any."""
    return read_resize_settings(src)[0]


def read_class_list(path: Path) -> list[str]:
    """Sorted WNIDs from a shard directory (its manifest), a LOC_synset_mapping.txt, or class
    folders."""
    path = Path(path)
    if path.is_file():
        return read_class_list_file(path)
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path).classes  # a broken one raises ManifestError, a UserError
    return folder_classes(path)


def build_plan(
    src: Path,
    split: str,
    shard_size: int = 1000,
    seed: int = 0,
    short_side: int | None = None,
    classes: list[str] | None = None,
    dataset: str = "",
    subset: dict | None = None,
) -> WritePlan:
    """List SRC, shuffle globally with `seed`, cut into shards of `shard_size`."""
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    classes, samples = list_samples(src, classes)
    random.Random(seed).shuffle(samples)  # now: the global order every shard and task agrees on
    shards = [samples[start : start + shard_size] for start in range(0, len(samples), shard_size)]
    names = find_class_names(src)
    class_names = {wnid: names[wnid] for wnid in classes if wnid in names}
    only_shrink = None
    recorded_side, recorded_shrink = read_resize_settings(src)
    if short_side is None:
        short_side = recorded_side
    if short_side is not None and short_side == recorded_side:
        only_shrink = recorded_shrink
    digest = hashlib.sha256(f"{split}\n{seed}\n{shard_size}\n{len(samples)}\n".encode())
    for sample in samples:
        digest.update(f"{sample.key}\t{sample.label}\t{sample.wnid}\t{sample.path}\n".encode())
    return WritePlan(
        split,
        seed,
        shard_size,
        classes,
        shards,
        digest.hexdigest(),
        class_names,
        short_side,
        only_shrink,
        dataset,
        subset,
    )


def read_plan(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / PLAN_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
