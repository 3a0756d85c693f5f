"""`verify`: check shards or resized class folders against their manifest; exit 1 on a mismatch.

    python -m preprocess verify shards/train             # sizes, sha256, per-shard counts, labels
    python -m preprocess verify shards/train --decode    # ... and decode every image
    python -m preprocess verify train-256/               # resized folders vs resize_manifest.json
    python -m preprocess verify out/                     # a `prepare` output: every split inside

Shard checks: every tar in the manifest is present with the recorded bytes and sha256; reading
its members gives the recorded number of samples, each with .jpg/.cls/.json; every label is in
range and agrees with the WNID in the .json; per-class totals match; the DALI index lists the
same samples at the right offsets; no unlisted tar sits in the folder. A manifest that records a
subset (`prepare --classes ...`, preprocess/subsets.py) is also checked against it: its rule,
applied to the recorded raw classes, gives the manifest's classes; every class holds what the
rule takes from what that class had; the tars hold exactly the chosen keys (sha256 of the
sorted keys); and train and val drawn from the same raw split share no key.

Folder checks: image count per class against resize_manifest.json, every image's sha256 against
the checksum lists the resize tasks wrote (resize_checksums.task-*.sha256, `sha256sum -c`
format); with --decode, every image decodes as RGB with the promised short side. Prints one
line per problem and a summary line.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from core.errors import UserError
from core.fileio import file_names, list_dir
from core.imagefiles import is_image_file
from core.shard_format import (
    DALI_INDEX_VERSION,
    MANIFEST_NAME,
    SHARD_PATTERN,
    Manifest,
    ManifestError,
    ShardEntry,
    dali_index_name,
    read_dali_index,
    read_manifest,
)
from preprocess.parallel import iter_chunks, run_bounded
from preprocess.progress import add_workers_argument, progress_bar, rate, resolve_workers
from preprocess.resize_records import (
    FOLDER_MANIFEST_KIND,
    FOLDER_MANIFEST_NAME,
    check_resize_complete,
)
from preprocess.shard_tars import file_sha256
from preprocess.subsets import Subset, check_record, expected_count, keys_digest

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    directory: Path
    kind: str  # "shards" | "folders"
    items: int  # samples or images checked
    problems: tuple[str, ...]
    seconds: float
    keys: frozenset[str] = frozenset()  # sample keys, collected only for a subset's shards
    subset: dict | None = None  # the manifest's subset record, if any

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problems"
        return (
            f"verify {self.directory} ({self.kind}): {self.items} images in {self.seconds:.1f} s "
            f"({rate(self.items, self.seconds):.1f} images/s): {state}"
        )


def _check_image(data: bytes, short_side: int | None, only_shrink: bool = False) -> str | None:
    """None when `data` decodes as an RGB JPEG with the right short side, else the reason."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format != "JPEG" or image.mode != "RGB":
                return f"is {image.format} {image.mode}, expected an RGB JPEG"
            short = min(image.size)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the finding
        return f"does not decode: {err}"
    if short_side is not None and short != short_side and not (only_shrink and short < short_side):
        return f"short side {short}, expected {short_side}"
    return None


def _check_index(
    directory: Path, entry: ShardEntry, offsets: dict[str, tuple[int, int]]
) -> list[str]:
    """The shard's DALI index against the tar's own member offsets; [] when they agree."""
    try:
        index = read_dali_index(directory / entry.name, entry.count)
    except ManifestError as err:
        return [str(err)]
    path = directory / dali_index_name(entry.name)
    if index.version != DALI_INDEX_VERSION:
        return [f"{path}: version {index.version}, expected {DALI_INDEX_VERSION}: re-shard"]
    for members in index.samples:
        for member in members:
            if offsets.get(member.name) != (member.offset, member.size):
                where = f"{member.name} at offset {member.offset} size {member.size}"
                return [f"{path}: {where}, but the tar has {offsets.get(member.name)}"]
    return []


def verify_shard(
    directory: Path,
    entry: ShardEntry,
    classes: Sequence[str],
    decode: bool,
    short_side: int | None,
    only_shrink: bool = True,
    collect_keys: bool = False,
) -> tuple[list[str], dict[str, int], list[str]]:
    """Problems found in one shard, its per-class sample counts, and (`collect_keys`) its keys."""
    path = Path(directory) / entry.name
    counts: collections.Counter = collections.Counter()
    problem = _check_tar_file(path, entry)
    if problem is not None:
        return [problem], counts, []
    try:
        samples, offsets = _read_tar(path)
    except (tarfile.TarError, OSError) as err:
        return [f"{path}: unreadable tar ({err})"], counts, []
    problems: list[str] = []
    if len(samples) != entry.count:
        problems.append(f"{path}: {len(samples)} samples, manifest says {entry.count}")
    for key, members in samples.items():
        sample_problems, wnid = _check_sample(path, key, members, classes)
        problems.extend(sample_problems)
        if wnid is None:
            continue
        counts[wnid] += 1
        if decode:
            reason = _check_image(members["jpg"], short_side, only_shrink=only_shrink)
            if reason:
                problems.append(f"{path}: sample {key}: image {reason}")
    problems.extend(_check_index(directory, entry, offsets))
    return problems, dict(counts), list(samples) if collect_keys else []


def _check_tar_file(path: Path, entry: ShardEntry) -> str | None:
    """The tar is there, with the manifest's size and sha256; else the problem."""
    if not path.is_file():
        return f"{path}: missing (listed in the manifest): re-run `preprocess shard` to resume"
    size = path.stat().st_size
    if size != entry.bytes:
        return (
            f"{path}: {size} bytes, manifest says {entry.bytes}: "
            "re-run `preprocess shard` to rewrite it"
        )
    if file_sha256(path) != entry.sha256:
        return (
            f"{path}: sha256 differs from the manifest (corrupted): "
            "re-run `preprocess shard` to rewrite it"
        )
    return None


def _read_tar(path: Path) -> tuple[dict[str, dict[str, bytes]], dict[str, tuple[int, int]]]:
    """({key: {extension: bytes}}, {member name: (data offset, size)}) of one tar."""
    samples: dict[str, dict[str, bytes]] = {}
    offsets: dict[str, tuple[int, int]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
            offsets[member.name] = (member.offset_data, member.size)
    return samples, offsets


def _check_sample(
    path: Path, key: str, members: dict[str, bytes], classes: Sequence[str]
) -> tuple[list[str], str | None]:
    """(problems, the sample's WNID or None when it cannot be counted) of one sample's members."""
    if set(members) != {"jpg", "cls", "json"}:
        found = sorted(members)
        return [f"{path}: sample {key} has members {found}, expected jpg, cls, json"], None
    try:
        label = int(members["cls"])
        wnid = json.loads(members["json"])["wnid"]
    except (ValueError, KeyError) as err:
        return [f"{path}: sample {key}: bad .cls or .json ({err})"], None
    if not 0 <= label < len(classes):
        return [f"{path}: sample {key}: label {label} outside 0..{len(classes) - 1}"], None
    if classes[label] != wnid:
        said = f"label {label} is {classes[label]} but its .json says {wnid}"
        return [f"{path}: sample {key}: {said}"], classes[label]
    return [], classes[label]


def _verify_shard_chunk(
    jobs: Sequence[tuple],
) -> list[tuple[list[str], dict[str, int], list[str], int]]:
    return [(*verify_shard(*job), job[1].count) for job in jobs]


def check_subset(
    directory: Path,
    manifest_split: str,
    classes: Sequence[str],
    record: dict,
    totals: dict[str, int],
    keys: set[str],
) -> list[str]:
    """What disagrees between a split's subset record and what its tars hold."""
    problems = [
        f"{directory}: {problem}" for problem in check_record(record, manifest_split, classes)
    ]
    if problems:
        return problems
    subset = Subset.from_rule(record["rule"], record["classes"])
    for wnid in record["classes"]:
        wanted = expected_count(subset, manifest_split, int(record["available"].get(wnid, 0)))
        if totals.get(wnid, 0) != wanted:
            problems.append(
                f"{directory}: class {wnid}: {totals.get(wnid, 0)} samples, but the subset takes "
                f"{wanted} of the {record['available'].get(wnid, 0)} it had"
            )
    if len(keys) != record.get("num_selected") or keys_digest(keys) != record.get("keys_sha256"):
        problems.append(
            f"{directory}: the tars hold {len(keys)} samples, not the {record.get('num_selected')} "
            "the subset chose (keys sha256 differs): a bad image left out, or shards from "
            "another run; see resize_errors*.txt and re-run prepare"
        )
    return problems


def verify_shards(
    directory: Path, decode: bool = False, workers: int | None = None
) -> VerifyReport:
    started = time.perf_counter()
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except ManifestError as err:
        return VerifyReport(directory, "shards", 0, (str(err),), time.perf_counter() - started)
    problems = _check_listing(directory, manifest)
    shard_problems, totals, keys = _verify_each_shard(directory, manifest, decode, workers)
    problems.extend(shard_problems)
    if not any(
        "sha256" in problem or "missing" in problem or "bytes" in problem for problem in problems
    ):
        for wnid in manifest.classes:
            if totals.get(wnid, 0) != manifest.class_counts.get(wnid, 0):
                problems.append(
                    f"{directory}: class {wnid}: {totals.get(wnid, 0)} samples in the tars, "
                    f"manifest says {manifest.class_counts.get(wnid, 0)}"
                )
        if manifest.subset is not None:
            problems.extend(
                check_subset(
                    directory, manifest.split, manifest.classes, manifest.subset, totals, keys
                )
            )
    return VerifyReport(
        directory,
        "shards",
        manifest.num_samples,
        tuple(problems),
        time.perf_counter() - started,
        frozenset(keys),
        manifest.subset,
    )


def _check_listing(directory: Path, manifest: Manifest) -> list[str]:
    """Tars the manifest does not list, and a missing _info.json."""
    problems: list[str] = []
    listed = {entry.name for entry in manifest.shards}
    for name in sorted(os.listdir(directory)):
        if SHARD_PATTERN.match(name) and name not in listed:
            problems.append(
                f"{directory / name}: a tar the manifest does not list (left from another run?)"
            )
    if not (directory / "_info.json").is_file():
        problems.append(
            f"{directory / '_info.json'}: missing (timm's dataset info): re-run `preprocess shard`"
        )
    return problems


def _verify_each_shard(
    directory: Path, manifest: Manifest, decode: bool, workers: int | None
) -> tuple[list[str], collections.Counter, set[str]]:
    """(problems, samples per class, keys) over every shard, checked on the process pool."""
    problems: list[str] = []
    totals: collections.Counter = collections.Counter()
    keys: set[str] = set()
    jobs = [
        # only_shrink unknown (an older manifest): smaller images are given the benefit of the doubt
        [
            (
                directory,
                entry,
                manifest.classes,
                decode,
                manifest.short_side,
                manifest.only_shrink is not False,
                manifest.subset is not None,
            )
        ]
        for entry in manifest.shards
    ]
    with progress_bar(manifest.num_samples, f"verify {directory.name}") as bar:
        for chunk in run_bounded(
            _verify_shard_chunk, jobs, min(resolve_workers(workers), len(jobs))
        ):
            for shard_problems, counts, shard_keys, count in chunk:
                problems.extend(shard_problems)
                totals.update(counts)
                keys.update(shard_keys)
                bar.update(count)
    return problems, totals, keys


def _decode_chunk(
    jobs: Sequence[tuple[str, str | None, bool, int | None, bool]],
) -> list[tuple[str, str | None]]:
    """(path, problem or None) for each (path, expected sha256 or None, decode, short side, only
    shrink)."""
    results = []
    for path, sha256, decode, short_side, only_shrink in jobs:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            results.append((path, f"unreadable: {err.strerror or err}"))
            continue
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            results.append(
                (path, "sha256 differs from the resize checksum list (changed or corrupted)")
            )
            if not decode:
                continue
        results.append((path, _check_image(data, short_side, only_shrink) if decode else None))
    return results


def read_checksums(directory: Path) -> tuple[dict[str, str] | None, list[str]]:
    """(relative path → sha256 from every resize task's checksum list, problems); None when the
    folders predate checksum lists."""
    try:
        completion = check_resize_complete(directory)
    except UserError as err:
        if any(directory.glob("resize.task-*.json")):
            return None, [str(err)]
        return None, []  # no completion records: an output from before they existed
    if len(completion.checksum_files) != completion.num_tasks:
        return None, []
    expected: dict[str, str] = {}
    problems: list[str] = []
    for path in completion.checksum_files:
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            problems.append(
                f"{path}: unreadable ({err.strerror or err}): re-run `preprocess resize`"
            )
            continue
        for number, line in enumerate(lines, start=1):
            digest, separator, relative = line.partition("  ")
            if not separator or len(digest) != 64:
                problems.append(f"{path}:{number}: corrupted line {line[:80]!r}")
                continue
            expected[relative] = digest
    return expected, problems


def verify_folders(
    directory: Path, decode: bool = False, workers: int | None = None
) -> VerifyReport:
    """Resized class folders against DIR/resize_manifest.json (counts; with decode, every image)."""
    started = time.perf_counter()
    directory = Path(directory)
    folder_manifest = _read_folder_manifest(directory)
    expected: dict[str, int] = folder_manifest["class_counts"]
    problems, paths = _check_class_folders(directory, expected)
    checksums, checksum_problems = read_checksums(directory)
    problems.extend(checksum_problems)
    if checksums is not None:
        problems.extend(_check_checksum_coverage(directory, paths, checksums))
    for errors_file in sorted(directory.glob("resize_errors*.txt")):
        lines = errors_file.read_text().splitlines()
        if lines:
            problems.append(
                f"{errors_file}: {len(lines)} inputs failed to resize (first: {lines[0]})"
            )
    if decode or checksums:
        problems.extend(
            _check_every_image(directory, paths, checksums, decode, folder_manifest, workers)
        )
    return VerifyReport(
        directory, "folders", len(paths), tuple(problems), time.perf_counter() - started
    )


def _read_folder_manifest(directory: Path) -> dict:
    """DIR/resize_manifest.json; UserError when it is unreadable or not resize's."""
    try:
        folder_manifest = json.loads((directory / FOLDER_MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(
            f"{directory / FOLDER_MANIFEST_NAME}: unreadable ({err}): re-run `preprocess resize`"
        ) from None
    if folder_manifest.get("kind") != FOLDER_MANIFEST_KIND:
        raise UserError(f"{directory / FOLDER_MANIFEST_NAME}: not a resize manifest")
    return folder_manifest


def _check_class_folders(directory: Path, expected: dict[str, int]) -> tuple[list[str], list[str]]:
    """(problems, every image path) of the class folders against the planned counts."""
    problems: list[str] = []
    paths: list[str] = []
    for class_dir, count in sorted(expected.items()):
        folder = directory / class_dir
        names = file_names(folder, is_image_file) if folder.is_dir() else []
        paths.extend(str(folder / name) for name in names)
        if len(names) != count:
            problems.append(
                f"{folder}: {len(names)} images, resize planned {count}"
                + (
                    " (failed inputs are listed in resize_errors*.txt)"
                    if len(names) < count
                    else ""
                )
            )
    unexpected = [name for name, is_dir in list_dir(directory) if is_dir and name not in expected]
    for name in unexpected:
        problems.append(f"{directory / name}: a folder resize_manifest.json does not list")
    return problems, paths


def _check_checksum_coverage(
    directory: Path, paths: list[str], checksums: dict[str, str]
) -> list[str]:
    """Files the checksum lists name but the folders lack, and the other way round."""
    problems: list[str] = []
    on_disk = {Path(path).relative_to(directory).as_posix() for path in paths}
    for relative in sorted(set(checksums) - on_disk):
        problems.append(f"{directory / relative}: missing (listed in the resize checksum list)")
    for relative in sorted(on_disk - set(checksums)):
        problems.append(
            f"{directory / relative}: not in any resize checksum list (not made by resize?)"
        )
    return problems


def _check_every_image(
    directory: Path,
    paths: list[str],
    checksums: dict[str, str] | None,
    decode: bool,
    folder_manifest: dict,
    workers: int | None,
) -> list[str]:
    """Every image's sha256 against the lists and (`decode`) its decode and size, on the pool."""
    problems: list[str] = []
    jobs = [
        (
            path,
            (checksums or {}).get(Path(path).relative_to(directory).as_posix()),
            decode,
            folder_manifest.get("short_side"),
            bool(folder_manifest.get("only_shrink")),
        )
        for path in paths
    ]
    chunks = list(iter_chunks(jobs, 64))
    with progress_bar(len(paths), f"verify {directory.name}") as bar:
        for chunk in run_bounded(
            _decode_chunk, chunks, min(resolve_workers(workers), max(1, len(chunks)))
        ):
            for path, reason in chunk:
                if reason:
                    problems.append(f"{path}: {reason}")
            bar.update(len(chunk))
    return problems


def find_targets(directory: Path) -> list[tuple[str, Path]]:
    """What DIR holds: shards, resized folders, or a `prepare` output with several of each."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(
            f"{directory} is not a directory: "
            "pass a shard directory, resized class folders or a prepare output"
        )
    if (directory / MANIFEST_NAME).is_file() or any(
        SHARD_PATTERN.match(name) for name in os.listdir(directory)
    ):
        return [("shards", directory)]
    if (directory / FOLDER_MANIFEST_NAME).is_file():
        return [("folders", directory)]
    targets: list[tuple[str, Path]] = []
    # a `prepare` output: DIR/train, DIR/val (shards) and DIR/folders/{train,val} (resized images)
    for split in ("train", "val"):
        if (directory / split / MANIFEST_NAME).is_file() or (
            directory / split / FOLDER_MANIFEST_NAME
        ).is_file():
            targets.extend(find_targets(directory / split))
    for split in ("train", "val"):
        if (directory / "folders" / split / FOLDER_MANIFEST_NAME).is_file():
            targets.append(("folders", directory / "folders" / split))
    if not targets:
        raise UserError(
            f"{directory}: neither {MANIFEST_NAME} (shards) "
            f"nor {FOLDER_MANIFEST_NAME} (resized folders) found: "
            f"nothing to verify against; "
            f"pass the output of `preprocess shard`, `resize` or `prepare`"
        )
    return targets


def verify(directory: Path, decode: bool = False, workers: int | None = None) -> list[VerifyReport]:
    reports = []
    for kind, target in find_targets(directory):
        check = verify_shards if kind == "shards" else verify_folders
        reports.append(check(target, decode=decode, workers=workers))
    return _check_splits_disjoint(reports)


def _check_splits_disjoint(reports: list[VerifyReport]) -> list[VerifyReport]:
    """Train and val drawn from the same raw split (--val-from-train) must share no image."""
    subsets = [report for report in reports if report.kind == "shards" and report.subset]
    for first, second in itertools.combinations(subsets, 2):
        assert first.subset is not None and second.subset is not None
        if first.subset.get("source_split") != second.subset.get("source_split"):
            continue
        shared = sorted(first.keys & second.keys)
        if shared:
            problem = (
                f"{first.directory} and {second.directory} share {len(shared)} samples "
                f"(first: {shared[0]}), though their subset draws disjoint windows of raw "
                f"{first.subset.get('source_split')}: re-run prepare into a new DST"
            )
            index = reports.index(second)
            reports[index] = dataclasses.replace(second, problems=(*second.problems, problem))
    return reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", type=Path, help="shards, resized class folders, or a `prepare` output"
    )
    parser.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    add_workers_argument(parser)


def run(args: argparse.Namespace) -> int:
    reports = verify(args.directory, decode=args.decode, workers=args.workers)
    for report in reports:
        for problem in report.problems:
            print(problem)
    for report in reports:
        print(report.line())
    return 0 if all(report.ok for report in reports) else 1
