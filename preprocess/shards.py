"""`shard`: class folders → globally shuffled WebDataset tars, manifest, _info.json, DALI indexes.

    python -m preprocess shard train-256/ shards/train --split train --shard-size 1000 --seed 0
    python -m preprocess shard val-256/ shards/val --split val
    sbatch --array=0-7 --wrap "python -m preprocess shard train-256/ shards/train --split train"
    python -m preprocess merge shards/train          # after a sliced (Slurm array) run

What is written, and why:

- Samples are sorted by (WNID, key), then shuffled once with `random.Random(seed)`: DALI's and
  WebDataset's readers shuffle only inside a buffer, so the order across the whole split must be
  mixed at write time. Shard i holds samples [i*shard_size, (i+1)*shard_size): equal counts
  except the last.
- Each tar is byte-deterministic: members `{key}.jpg`, `{key}.cls`, `{key}.json` in that order,
  GNU format, mtime 0, uid/gid 0, empty user/group names, mode 0644, compact sorted-key JSON. The
  same input and seed give byte-identical tars, whatever the worker count or slicing.
- Next to each tar, `imagenet-{split}-{index:06d}.idx` in DALI's tools/wds2idx.py v1.2 format:
  "v1.2 <samples>" then one line per sample listing, per member, "ext offset size name", where
  offset is the member's data offset in the tar. fn.readers.webdataset(index_paths=...) reads it.
- Writes are atomic (temp file + os.replace). The order on disk makes partial work never look
  complete: `.shard_plan.json` first (what every shard must hold), then per shard the .idx, the
  tar and a `.{tar}.json` record (count, bytes, sha256, plan digest); `manifest.json` and
  `_info.json` last. A rerun recomputes the plan and skips a shard only when its record matches
  the plan and the tar's size and sha256 match the record; anything else is rewritten.
- Slurm slices: every task computes the same plan and writes the shards with
  index % num_tasks == task_index plus `manifest.task-{i:04d}-of-{n:04d}.json`; `preprocess merge
  DIR` checks all shards are present and writes manifest.json + _info.json.
- Inputs must be RGB JPEGs (run `preprocess resize` first). The `.json` member records the
  original's name and size from the comment `resize` leaves in each JPEG (else the file's own).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import re
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from core.classes import find_class_names, folder_classes
from core.classes import read_class_list as read_class_list_file
from core.errors import UserError
from core.fileio import atomic_output, atomic_write_text, file_names, remove_stale_temps
from core.imagefiles import is_image_file
from core.shard_format import (
    MANIFEST_NAME,
    SHARD_PATTERN,
    SPLITS,
    TIMM_INFO_NAME,
    IndexMember,
    Manifest,
    ShardEntry,
    dali_index_name,
    format_dali_index,
    read_manifest,
    shard_name,
    write_manifest,
    write_timm_info,
)
from preprocess.images import read_provenance
from preprocess.parallel import run_bounded
from preprocess.progress import add_workers_argument, progress_bar, rate, resolve_workers
from preprocess.resize import FOLDER_MANIFEST_KIND, FOLDER_MANIFEST_NAME
from preprocess.slices import add_slice_arguments, in_slice, resolve_slice

logger = logging.getLogger(__name__)

PLAN_NAME = ".shard_plan.json"
PLAN_VERSION = 1
TEMP_SUFFIX = ".shard-tmp"
MEMBER_EXTENSIONS = ("jpg", "cls", "json")  # member order inside each sample


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


@dataclasses.dataclass(frozen=True)
class ShardResult:
    index: int
    entry: ShardEntry | None  # None when the shard could not be written
    class_counts: dict[str, int]
    skipped: bool  # already complete and verified
    errors: tuple[tuple[str, str], ...] = ()  # (source, reason) for inputs that are not RGB JPEGs


@dataclasses.dataclass(frozen=True)
class ShardSummary:
    split: str
    samples: int  # samples in this task's shards
    shards: int  # shards this task is responsible for
    written: int
    skipped: int
    failed: int  # shards not written because an input was bad
    seconds: float
    errors: tuple[tuple[str, str], ...] = ()
    manifest: Path | None = None  # manifest.json when this run completed the split

    def line(self) -> str:
        text = (
            f"shard {self.split}: {self.samples} images in {self.shards} shards, "
            f"{self.seconds:.1f} s ({rate(self.samples, self.seconds):.1f} images/s), "
            f"written {self.written}, skipped {self.skipped} already complete, "
            f"failed {self.failed}"
        )
        if self.manifest is not None:
            text += f"; manifest {self.manifest}"
        return text


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


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _sample_members(src: Path, sample: Sample) -> list[tuple[str, bytes]]:
    """The three members of one sample; raises ValueError(reason) for an input that is not an RGB
    JPEG."""
    data = (src / sample.path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, mode, (width, height) = image.format, image.mode, image.size
            provenance = read_provenance(image) if image_format == "JPEG" else None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(
            f"not a readable image ({err}): run `preprocess resize` on the folders first"
        ) from None
    if image_format != "JPEG" or mode != "RGB":
        raise ValueError(
            f"is a {image_format} {mode} image, expected an RGB JPEG: run `preprocess resize` first"
        )
    if provenance is not None:
        source, width, height = (
            provenance.get("source") or Path(sample.path).name,
            provenance["width"],
            provenance["height"],
        )
    else:
        source = Path(sample.path).name
    meta = {"wnid": sample.wnid, "source": source, "width": int(width), "height": int(height)}
    return [
        (f"{sample.key}.jpg", data),
        (f"{sample.key}.cls", str(sample.label).encode("ascii")),
        (
            f"{sample.key}.json",
            json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        ),
    ]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return _handle_sha256(handle)


def _handle_sha256(handle: IO[bytes]) -> str:
    """sha256 of everything `handle` holds, read from its start."""
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def record_path(directory: Path, tar_name: str) -> Path:
    """The `.{tar}.json` completion record written after a tar is in place."""
    return Path(directory) / f".{tar_name}.json"


def read_record(directory: Path, tar_name: str) -> dict | None:
    try:
        return json.loads(record_path(directory, tar_name).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def shard_is_complete(
    directory: Path, tar_name: str, count: int, plan_digest: str
) -> ShardEntry | None:
    """The shard's entry when its tar matches its record and the plan (sha256 recomputed), else
    None."""
    record = read_record(directory, tar_name)
    path = Path(directory) / tar_name
    if (
        record is None
        or not path.is_file()
        or not (Path(directory) / dali_index_name(tar_name)).is_file()
    ):
        return None
    if record.get("plan_sha256") != plan_digest or record.get("count") != count:
        return None
    if path.stat().st_size != record.get("bytes") or file_sha256(path) != record.get("sha256"):
        logger.warning("%s does not match its record (size or sha256): rewriting it", path)
        return None
    return ShardEntry(tar_name, count, record["bytes"], record["sha256"])


def write_shard(
    src: Path, dst: Path, split: str, index: int, samples: Sequence[Sample], plan_digest: str
) -> ShardResult:
    """Write shard `index` (tar + DALI index + record) unless it is already complete."""
    src, dst = Path(src), Path(dst)
    tar_name = shard_name(split, index)
    counts = dict(collections.Counter(sample.wnid for sample in samples))
    entry = shard_is_complete(dst, tar_name, len(samples), plan_digest)
    if entry is not None:
        return ShardResult(index, entry, counts, skipped=True)
    index_samples: list[tuple[IndexMember, ...]] = []
    errors: list[tuple[str, str]] = []
    try:
        # `.{tar}.{pid}.shard-tmp`, fsynced on exit: on disk before the name (and the record)
        # say "complete"
        with atomic_output(dst / tar_name, "w+b", temp_suffix=TEMP_SUFFIX) as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for sample in samples:
                    try:
                        members = _sample_members(src, sample)
                    except (ValueError, OSError) as err:
                        errors.append((str(src / sample.path), str(err)))
                        continue
                    parts = []
                    for name, data in members:
                        tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
                        # tar.offset is now past this member's padded data; its data began here:
                        data_offset = (
                            tar.offset
                            - (len(data) + tarfile.BLOCKSIZE - 1)
                            // tarfile.BLOCKSIZE
                            * tarfile.BLOCKSIZE
                        )
                        parts.append(
                            IndexMember(name.rsplit(".", 1)[1], data_offset, len(data), name)
                        )
                    index_samples.append(tuple(parts))
            if errors:
                raise _BadInputs  # no tar: atomic_output removes the temp
            handle.flush()
            size = os.fstat(handle.fileno()).st_size
            sha256 = _handle_sha256(handle)
            atomic_write_text(dst / dali_index_name(tar_name), format_dali_index(index_samples))
            os.fchmod(handle.fileno(), 0o644)  # tars are read by other users' jobs too
    except _BadInputs:
        return ShardResult(index, None, counts, skipped=False, errors=tuple(errors))
    record = {
        "name": tar_name,
        "count": len(samples),
        "bytes": size,
        "sha256": sha256,
        "plan_sha256": plan_digest,
    }
    atomic_write_text(record_path(dst, tar_name), json.dumps(record, sort_keys=True) + "\n")
    return ShardResult(
        index, ShardEntry(tar_name, len(samples), size, sha256), counts, skipped=False
    )


class _BadInputs(Exception):
    """Raised inside a shard's atomic write when some input is not an RGB JPEG: no tar is made."""


def _write_shard_chunk(jobs: Sequence[tuple]) -> list[ShardResult]:
    return [write_shard(*job) for job in jobs]


def task_manifest_name(task_index: int, num_tasks: int) -> str:
    return f"manifest.task-{task_index:04d}-of-{num_tasks:04d}.json"


def read_plan(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / PLAN_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _remove_stale_outputs(dst: Path, split: str, num_shards: int) -> None:
    """A changed plan: the old manifest and any shard past the new count are no longer true."""
    for name in (MANIFEST_NAME, TIMM_INFO_NAME):
        (dst / name).unlink(missing_ok=True)
    for path in dst.glob(f"imagenet-{split}-*.tar"):
        stem_index = path.stem.rsplit("-", 1)[-1]
        if stem_index.isdigit() and int(stem_index) >= num_shards:
            logger.info("removing %s: the new plan has only %d shards", path, num_shards)
            for stale in (path, dst / dali_index_name(path.name), record_path(dst, path.name)):
                stale.unlink(missing_ok=True)


def owned_shards(task_index: int, num_tasks: int) -> Callable[[Path], bool]:
    """Which output paths are the tars of task `task_index` of `num_tasks`: the `owned` test for
    `remove_stale_temps` (other array tasks may be writing theirs right now)."""

    def owned(path: Path) -> bool:
        match = SHARD_PATTERN.match(path.name)
        return match is not None and in_slice(int(match.group(2)), task_index, num_tasks)

    return owned


def build_manifest(
    plan: WritePlan | dict, entries: Sequence[ShardEntry], class_counts: dict[str, int]
) -> Manifest:
    """The split's Manifest from the plan (object or its JSON) and every shard's entry."""
    data = plan.to_json() if isinstance(plan, WritePlan) else plan
    classes = list(data["classes"])
    return Manifest(
        split=data["split"],
        classes=classes,
        shards=sorted(entries, key=lambda entry: entry.name),
        class_counts={wnid: int(class_counts.get(wnid, 0)) for wnid in classes},
        seed=int(data["seed"]),
        class_names=dict(data.get("class_names") or {}),
        short_side=data.get("short_side"),
        only_shrink=data.get("only_shrink"),
        dataset=str(data.get("dataset") or ""),
        subset=data.get("subset"),
    )


def write_split_metadata(dst: Path, manifest: Manifest) -> Path:
    """manifest.json then _info.json (timm's format for this one split)."""
    path = write_manifest(dst, manifest)
    write_timm_info(dst, {manifest.split: manifest})
    return path


def _check_destination_split(dst: Path, split: str) -> None:
    """Refuse to shard `split` into a directory that holds the other split's plan or manifest."""
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST {dst} is a file: pass a directory for the {split} shards")
    recorded = []
    plan = read_plan(dst)
    if plan is not None:
        recorded.append(plan.get("split"))
    try:
        recorded.append(json.loads((dst / MANIFEST_NAME).read_text()).get("split"))
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    other = next((name for name in recorded if name is not None and name != split), None)
    if other is not None:
        raise UserError(
            f"{dst} holds the {other} split's shards, but this run is --split {split}: "
            f"writing here would replace their manifest; "
            f"pass the {split} directory (e.g. {dst.parent / split})"
        )


def _check_other_split(plan: WritePlan, dst: Path) -> None:
    """Train and val must share one class list, or the same label would mean different classes."""
    for other in SPLITS:
        sibling = dst.parent / other
        if other == plan.split or not (sibling / MANIFEST_NAME).is_file():
            continue
        try:
            other_classes = read_class_list(sibling)
        except UserError:
            continue  # a broken sibling manifest is `verify`'s business, not this run's
        if other_classes != plan.classes:
            missing = sorted(set(other_classes) - set(plan.classes))
            raise UserError(
                f"{plan.split} has {len(plan.classes)} class folders but {sibling} was sharded "
                f"with {len(other_classes)} classes (missing here: {missing[:3]}...): "
                f"labels would disagree between the splits; pass --classes-from {sibling}"
            )


def write_shards(
    src: Path,
    dst: Path,
    split: str,
    *,
    shard_size: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    short_side: int | None = None,
    classes: list[str] | None = None,
    dataset: str = "",
    subset: dict | None = None,
) -> ShardSummary:
    """Shard class folders `src` into `dst` (this task's shards only); see the module doc.

    Args:
        classes: the full class list (label = position); default: SRC's folders, checked
            against the other split's manifest next to DST when there is one.
        dataset, subset: what `prepare` read and chose, recorded in the manifest.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    _check_destination_split(dst, split)
    plan = build_plan(src, split, shard_size, seed, short_side, classes, dataset, subset)
    if classes is None:
        _check_other_split(plan, dst)
    dst.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(
        dst, TEMP_SUFFIX, None if num_tasks == 1 else owned_shards(task_index, num_tasks)
    )
    previous = read_plan(dst)
    if previous is None or previous.get("plan_sha256") != plan.digest:
        if previous is not None:
            logger.info(
                "%s: input, seed or shard size changed since the last run: rewriting every shard",
                dst,
            )
        _remove_stale_outputs(dst, split, len(plan.shards))
        atomic_write_text(
            dst / PLAN_NAME, json.dumps(plan.to_json(), indent=1, sort_keys=True) + "\n"
        )
    mine = [index for index in range(len(plan.shards)) if in_slice(index, task_index, num_tasks)]
    jobs = [([(src, dst, split, index, plan.shards[index], plan.digest)]) for index in mine]
    results: list[ShardResult] = []
    samples_mine = sum(len(plan.shards[index]) for index in mine)
    with progress_bar(samples_mine, f"shard {split}") as bar:
        for chunk in run_bounded(
            _write_shard_chunk, jobs, min(resolve_workers(workers), max(1, len(jobs)))
        ):
            for result in chunk:
                results.append(result)
                bar.update(len(plan.shards[result.index]))
    errors = tuple(error for result in results for error in result.errors)
    for source, reason in errors:
        print(f"{source}: {reason}")
    done = [result for result in results if result.entry is not None]
    class_counts: collections.Counter = collections.Counter()
    for result in done:
        class_counts.update(result.class_counts)
    manifest_path = None
    failed = len(results) - len(done)
    if not failed:
        if num_tasks == 1:
            manifest_path = write_split_metadata(
                dst, build_manifest(plan, [r.entry for r in done], class_counts)
            )
        else:
            partial = {
                "task_index": task_index,
                "num_tasks": num_tasks,
                "plan_sha256": plan.digest,
                "shards": [
                    dataclasses.asdict(result.entry)
                    for result in sorted(done, key=lambda r: r.index)
                ],
                "class_counts": dict(sorted(class_counts.items())),
            }
            atomic_write_text(
                dst / task_manifest_name(task_index, num_tasks),
                json.dumps(partial, indent=1, sort_keys=True) + "\n",
            )
    return ShardSummary(
        split=split,
        samples=samples_mine,
        shards=len(mine),
        written=sum(1 for result in done if not result.skipped),
        skipped=sum(1 for result in done if result.skipped),
        failed=failed,
        seconds=time.perf_counter() - started,
        errors=errors,
        manifest=manifest_path,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", type=Path, help="class folders: SRC/n01440764/*.JPEG (resized RGB JPEGs)"
    )
    parser.add_argument(
        "dst", type=Path, help="output directory for this split's tars, e.g. shards/train"
    )
    parser.add_argument(
        "--split", required=True, choices=SPLITS, help="which split this is (names the tars)"
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        help="samples per shard, the last may hold fewer (default 1000)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the global shuffle (default 0)"
    )
    parser.add_argument(
        "--classes-from",
        type=Path,
        default=None,
        help="the full class list when SRC lacks some class folders: a shard directory, a "
        "LOC_synset_mapping.txt or class folders (default: SRC's own folders)",
    )
    add_workers_argument(parser)
    add_slice_arguments(parser)


def run(args: argparse.Namespace) -> int:
    task_index, num_tasks = resolve_slice(args.task_index, args.num_tasks)
    summary = write_shards(
        args.src,
        args.dst,
        args.split,
        shard_size=args.shard_size,
        seed=args.seed,
        workers=args.workers,
        task_index=task_index,
        num_tasks=num_tasks,
        classes=read_class_list(args.classes_from) if args.classes_from is not None else None,
    )
    print(summary.line())
    if summary.failed:
        print(
            f"shard: {summary.failed} shards not written because of the bad inputs above",
            flush=True,
        )
        return 1
    if num_tasks > 1:
        print(
            f"task {task_index} of {num_tasks} done: when every task has finished, "
            f"run `python -m preprocess merge {args.dst}`"
        )
    return 0
