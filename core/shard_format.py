"""The shard format: shard names, the manifest schema and the DALI index, with one writer, one
reader, one entry type and one version rule for each, shared by the writer and every reader.

This module is the one contract between `preprocess` (which writes shards) and `pipeline`
(which reads them): the shard writer, `verify`, `grid`, and the wds and dali backends all go
through it. It imports nothing but the standard library and core's errors and fileio, so
loaders use it without pulling in the preprocessing code, and preprocessing never imports torch.

A shard directory holds:

    imagenet-{split}-{index:06d}.tar   members {key}.jpg (RGB JPEG), {key}.cls (ASCII decimal
                                       class index, sorted-WNID order), {key}.json (wnid,
                                       source name, original size)
    imagenet-{split}-{index:06d}.idx   DALI index for that tar (DALI's wds2idx format: `DaliIndex`)
    manifest.json                      the Manifest below
    _info.json                         timm's wds dataset-info format (`timm_info`)

`_info.json` is what timm's wds reader (timm/data/readers/reader_wds.py, `_load_info` and
`_parse_split_info`) reads from the `root` it is given: `splits[split]` with `filenames` a LIST
of shard names relative to root (it joins each to root; a brace pattern there is taken as one
file per character), `shard_lengths` and `num_samples`. Each split directory holds one for its
own split, and `prepare` writes one more at DST with both splits ("train/imagenet-train-…"), so

    timm.data.create_dataset("wds/imagenet", root="DST/train", split="train")
    timm.data.create_dataset("wds/imagenet", root="DST", split="val")

both work (tests/preprocess/test_readers.py reads every label back through timm and through
Hugging Face datasets' webdataset loader).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Literal, NamedTuple

from core.errors import UserError
from core.fileio import atomic_write_text

Split = Literal["train", "val"]
SPLITS: tuple[str, ...] = ("train", "val")

MANIFEST_NAME = "manifest.json"
TIMM_INFO_NAME = "_info.json"
MANIFEST_VERSION = 1
SHARD_PATTERN = re.compile(r"^imagenet-(train|val)-(\d{6})\.tar$")
# The DALI index versions we read: DALI's wds2idx writes v1.2, whose members are
# (ext, offset, size, name); v1.1 lists (ext, offset, size). We write v1.2 only.
DALI_INDEX_VERSION = "v1.2"
DALI_INDEX_FIELDS = {"v1.1": 3, "v1.2": 4}
TAR_BLOCK = 512  # bytes of a tar member header; a member's data follows its header


class ManifestError(UserError):
    """A manifest is missing, malformed, or disagrees with the files next to it.

    A UserError (the fix is to point at the right directory or re-run `preprocess shard`), so
    every CLI prints it as one line; the loaders catch it to add their own context.
    """


def shard_name(split: str, index: int) -> str:
    """`imagenet-{split}-{index:06d}.tar`."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return f"imagenet-{split}-{index:06d}.tar"


def dali_index_name(tar_name: str) -> str:
    """The DALI index file that sits next to a tar: same stem, `.idx`."""
    return tar_name[: -len(".tar")] + ".idx" if tar_name.endswith(".tar") else tar_name + ".idx"


def brace_pattern(split: str, num_shards: int) -> str:
    """The WebDataset brace pattern for all shards of a split:
    `imagenet-val-{000000..000009}.tar`."""
    if num_shards < 1:
        raise ValueError("a split has at least one shard")
    return f"imagenet-{split}-{{{0:06d}..{num_shards - 1:06d}}}.tar"


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    name: str  # file name, relative to the manifest's directory
    count: int  # samples in this shard
    bytes: int  # size of the tar file in bytes
    sha256: str  # hex digest of the whole tar file


@dataclasses.dataclass(frozen=True)
class Manifest:
    split: str  # "train" or "val"
    classes: list[str]  # WNIDs in class-index order (sorted); index = position
    shards: list[ShardEntry]  # in index order
    class_counts: dict[str, int]  # WNID -> number of samples of that class in this split
    seed: int  # the global-shuffle seed the writer used
    class_names: dict[str, str] = dataclasses.field(default_factory=dict)  # WNID -> words
    short_side: int | None = None  # resize target the images were made with, if known
    only_shrink: bool | None = (
        None  # whether smaller images were left unenlarged ("256^>"), if known
    )
    version: int = MANIFEST_VERSION
    dataset: str = ""  # what prepare read: "imagenet", "cifar10", "mnist", ... ("" if unknown)
    subset: dict | None = None  # the subset's rule and choice (preprocess/subsets.py), if any

    @property
    def num_samples(self) -> int:
        return sum(shard.count for shard in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["num_samples"] = self.num_samples
        return data

    @classmethod
    def from_json(cls, data: dict, source: str = "manifest") -> Manifest:
        try:
            if data.get("version") != MANIFEST_VERSION:
                raise ManifestError(
                    f"{source}: manifest version {data.get('version')!r}, expected "
                    f"{MANIFEST_VERSION}: re-run `preprocess shard` with this version"
                )
            shards = [ShardEntry(**entry) for entry in data["shards"]]
            manifest = cls(
                split=data["split"],
                classes=list(data["classes"]),
                shards=shards,
                class_counts={k: int(v) for k, v in data["class_counts"].items()},
                seed=int(data["seed"]),
                class_names=dict(data.get("class_names", {})),
                short_side=data.get("short_side"),
                only_shrink=data.get("only_shrink"),
                version=int(data["version"]),
                dataset=str(data.get("dataset") or ""),
                subset=data.get("subset"),
            )
        except (KeyError, TypeError) as err:
            raise ManifestError(
                f"{source}: malformed manifest ({err!r}): re-run `preprocess shard`"
            )
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        """Check internal consistency (not the files; see `check_files`)."""
        if self.split not in SPLITS:
            raise ManifestError(f"{source}: split {self.split!r} is not one of {SPLITS}")
        if self.classes != sorted(self.classes) or len(set(self.classes)) != len(self.classes):
            raise ManifestError(
                f"{source}: classes must be unique and sorted (class index = sorted WNID position)"
            )
        for index, shard in enumerate(self.shards):
            if shard.name != shard_name(self.split, index):
                raise ManifestError(
                    f"{source}: shard {index} is named {shard.name!r}, "
                    f"expected {shard_name(self.split, index)!r}"
                )
        if sum(self.class_counts.values()) != self.num_samples:
            raise ManifestError(
                f"{source}: class counts sum to {sum(self.class_counts.values())} but shards hold "
                f"{self.num_samples} samples"
            )


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Atomically write `manifest.json` into `directory`; returns its path."""
    manifest.validate(str(directory))
    path = Path(directory) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(directory: Path) -> Manifest:
    """Read and validate `directory/manifest.json`; raise ManifestError with a fix on failure."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(f"{directory}: not a directory: pass the folder that holds the shards")
    if not path.is_file():
        raise ManifestError(
            f"{directory}: no {MANIFEST_NAME}: "
            f"run `python -m preprocess shard SRC {directory} --split ...` first"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err}): re-run `preprocess shard`")
    return Manifest.from_json(data, str(path))


def check_split(location: Path | str, manifest: Manifest, split: str | None) -> None:
    """The manifest is of `split` and lists shards (a local directory or a URL)."""
    if split is not None and manifest.split != split:
        raise ManifestError(
            f"{location}: holds {manifest.split!r} shards but {split!r} was asked for: "
            f"point the {split} path at the {split} shard directory"
        )
    if not manifest.shards:
        raise ManifestError(f"{location}: manifest lists no shards: re-run `preprocess shard`")


def check_files(directory: Path, manifest: Manifest, split: str | None = None) -> list[Path]:
    """Cheap file checks a loader runs at start: split, presence and byte sizes. Returns tar paths.

    Hashing every tar is `preprocess verify`'s job; a loader only catches the usual mistakes
    (the other split's directory, a missing or truncated tar) with one clear line.
    """
    directory = Path(directory)
    check_split(directory, manifest, split)
    paths = []
    for shard in manifest.shards:
        path = directory / shard.name
        if not path.is_file():
            raise ManifestError(
                f"{path}: listed in the manifest but missing: re-run `preprocess shard` to resume"
            )
        size = path.stat().st_size
        if size != shard.bytes:
            raise ManifestError(
                f"{path}: {size} bytes but the manifest says {shard.bytes}: the tar does not match "
                f"the manifest; run `preprocess verify {directory}` and re-shard"
            )
        paths.append(path)
    return paths


def timm_info(manifests: dict[str, Manifest], prefixes: dict[str, str] | None = None) -> dict:
    """timm's `_info.json`: per split, the shard names (a list), their lengths and the total.

    Args:
        prefixes: split -> folder of its shards relative to the info file ("train/"), for an
            info file above the split directories; default: the shards sit beside it.
    """
    splits = {}
    for split, manifest in manifests.items():
        prefix = (prefixes or {}).get(split, "")
        splits[split] = {
            "name": split,
            "filenames": [prefix + shard.name for shard in manifest.shards],
            "num_samples": manifest.num_samples,
            "shard_lengths": [shard.count for shard in manifest.shards],
        }
    first = next(iter(manifests.values()))
    return {
        "name": first.dataset or "imagenet",
        "num_classes": first.num_classes,
        "splits": splits,
    }


def write_timm_info(
    directory: Path, manifests: dict[str, Manifest], prefixes: dict[str, str] | None = None
) -> Path:
    """Atomically write `directory/_info.json` (see `timm_info`)."""
    path = Path(directory) / TIMM_INFO_NAME
    atomic_write_text(
        path, json.dumps(timm_info(manifests, prefixes), indent=1, sort_keys=True) + "\n"
    )
    return path


def write_both_splits_info(dst: Path) -> Path | None:
    """DST/_info.json for timm with both splits of a `prepare` output (`root=DST`), once both
    DST/train and DST/val have their manifest; None before that."""
    dst = Path(dst)
    if not all((dst / split / MANIFEST_NAME).is_file() for split in SPLITS):
        return None
    manifests = {split: read_manifest(dst / split) for split in SPLITS}
    return write_timm_info(dst, manifests, {split: f"{split}/" for split in SPLITS})


class IndexMember(NamedTuple):
    """One member of one sample in a DALI index: where its data lies in the tar. (A named tuple,
    not a dataclass: a loader parses a shard's index every epoch, ~2,500 members a shard, and a
    frozen dataclass costs ~1 µs more a member to build.)"""

    extension: str  # "jpg", "cls", "json"
    offset: int  # byte offset of the member's data (its 512-byte header precedes it)
    size: int  # bytes of data
    name: str | None  # the member's name in the tar (v1.2); None in v1.1 indexes

    @property
    def header_offset(self) -> int:
        return self.offset - TAR_BLOCK


@dataclasses.dataclass(frozen=True)
class DaliIndex:
    """A DALI index: per sample (in tar order), its members. `fn.readers.webdataset(index_paths=)`
    reads the text form (`format_dali_index`); `read_dali_index` reads ours and wds2idx's."""

    samples: tuple[tuple[IndexMember, ...], ...]
    version: str = DALI_INDEX_VERSION

    def sample_start(self, sample: int) -> int:
        """Byte offset of the first tar header of sample number `sample`."""
        return min(member.offset for member in self.samples[sample]) - TAR_BLOCK

    def lines(self) -> list[str]:
        """The per-sample lines, without the header (a per-rank index cuts and re-joins them)."""
        return [_format_sample(members, self.version) for members in self.samples]


def _format_sample(members: tuple[IndexMember, ...], version: str) -> str:
    width = DALI_INDEX_FIELDS[version]
    fields = []
    for member in members:
        fields += [member.extension, str(member.offset), str(member.size)]
        if width == 4:
            fields.append(str(member.name))
    return " ".join(fields)


def format_dali_index(samples: list[tuple[IndexMember, ...]], version: str = DALI_INDEX_VERSION):
    """The text of a DALI index (header `v1.2 N`, one line per sample) over `samples`."""
    if version not in DALI_INDEX_FIELDS:
        raise ValueError(f"DALI index version {version!r} is not one of {list(DALI_INDEX_FIELDS)}")
    lines = [f"{version} {len(samples)}"]
    lines += [_format_sample(tuple(members), version) for members in samples]
    return "\n".join(lines) + "\n"


def parse_dali_index(text: str, source: str = "DALI index") -> DaliIndex:
    """A DALI index from its text; ManifestError (one line, with the fix) when it is not one."""
    lines = text.splitlines()
    header = lines[0].split() if lines else []
    fix = "re-run `python -m preprocess shard` to rewrite it"
    if len(header) != 2 or header[0] not in DALI_INDEX_FIELDS or not header[1].isdigit():
        raise ManifestError(
            f"{source}: header {lines[0][:40] if lines else ''!r} is not a DALI index header "
            f"('{DALI_INDEX_VERSION} COUNT', or v1.1): {fix}"
        )
    version, width = header[0], DALI_INDEX_FIELDS[header[0]]
    if int(header[1]) != len(lines) - 1:
        raise ManifestError(
            f"{source}: header says {header[1]} samples but {len(lines) - 1} lines follow: {fix}"
        )
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        try:
            if not fields or len(fields) % width:
                raise ValueError
            samples.append(
                tuple(
                    IndexMember(
                        fields[start],
                        int(fields[start + 1]),
                        int(fields[start + 2]),
                        fields[start + 3] if width == 4 else None,
                    )
                    for start in range(0, len(fields), width)
                )
            )
        except ValueError:
            expected = "ext offset size name" if width == 4 else "ext offset size"
            raise ManifestError(
                f"{source}:{number}: corrupted line {line[:80]!r}, expected '{expected}' per "
                f"member: {fix}"
            ) from None
    return DaliIndex(tuple(samples), version)


def read_dali_index(tar_path: Path, expected_count: int | None = None) -> DaliIndex:
    """The DALI index next to `tar_path`, checked against the manifest's sample count when given;
    ManifestError (one line naming the file and the fix) when it is missing or wrong."""
    tar_path = Path(tar_path)
    path = tar_path.with_name(dali_index_name(tar_path.name))
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(
            f"{path}: DALI index missing next to {tar_path.name}: re-run "
            "`python -m preprocess shard` (it rewrites incomplete shards)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: cannot read the DALI index ({err}): re-shard") from None
    index = parse_dali_index(text, str(path))
    if expected_count is not None and len(index.samples) != expected_count:
        raise ManifestError(
            f"{path}: indexes {len(index.samples)} samples but the manifest says "
            f"{expected_count}: the index does not match the tar; re-run `python -m preprocess "
            "shard`"
        )
    return index
