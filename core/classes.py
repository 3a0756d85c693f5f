"""Class lists: LOC_synset_mapping.txt, one-WNID-per-line lists, and class folder names.

The class index everywhere in this project is the position of the WNID in sorted order (what
torchvision's ImageFolder, timm and the caffe `val.txt` use). The devkit's ILSVRC2012_IDs, in
meta.mat's own order, are `preprocess.devkit`'s business and never a class index.

    from core.classes import read_synset_mapping, folder_classes
    names = read_synset_mapping(Path("LOC_synset_mapping.txt"))
    # {"n01440764": "tench, Tinca tinca", ...}
"""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import UserError
from core.fileio import list_dir

SYNSET_MAPPING_NAME = "LOC_synset_mapping.txt"
WNID_PATTERN = re.compile(r"^n\d{8}$")


def is_wnid(name: str) -> bool:
    """True for a WordNet ID such as `n01440764`."""
    return WNID_PATTERN.match(name) is not None


def class_wnid(index: int) -> str:
    """The stable WNID-shaped id of class `index` in a dataset without WNIDs: "n00000007".

    Zero-padded to 8 digits, so sorted order is numeric order and class index = the official
    label, and every tool that expects WNIDs (class folders, LOC_synset_mapping.txt, manifests)
    takes it as is. No real WNID is this small (they start at n00001740, "entity").
    """
    if not 0 <= index < 10**8:
        raise ValueError(f"class index {index} does not fit in a WNID-shaped id")
    return f"n{index:08d}"


def read_synset_mapping(path: Path) -> dict[str, str]:
    """WNID → words from a `LOC_synset_mapping.txt` ("n01440764 tench, Tinca tinca"), in file
    order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read synset mapping {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): expected "
            f"LOC_synset_mapping.txt lines 'nXXXXXXXX words'"
        ) from None
    mapping: dict[str, str] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not is_wnid(wnid):
            raise UserError(
                f"{path}:{line_number}: "
                "expected 'nXXXXXXXX words' (LOC_synset_mapping.txt format), "
                f"got {line[:80]!r}"
            )
        if wnid in mapping:
            raise UserError(f"{path}:{line_number}: WNID {wnid} is listed twice")
        mapping[wnid] = words.strip()
    if not mapping:
        raise UserError(
            f"synset mapping {path} is empty: expected one 'nXXXXXXXX words' line per class"
        )
    return mapping


def read_class_list(path: Path) -> list[str]:
    """Sorted WNIDs from a LOC_synset_mapping.txt or a one-WNID-per-line list (caffe synsets.txt).

    The one class-list file reader: sort-val --classes, shard --classes-from and caffe val.txt
    labels all go through it.
    """
    path = Path(path)
    try:
        lines = [
            line.split()[0]
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except OSError as err:
        raise UserError(f"cannot read class list {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): expected a "
            f"LOC_synset_mapping.txt or one WNID per line"
        ) from None
    if lines and all(is_wnid(line) for line in lines):
        if len(set(lines)) != len(lines):
            raise UserError(f"{path}: a WNID is listed twice: expected each class once")
        return sorted(lines)
    return sorted(read_synset_mapping(path))


def find_synset_mapping(directory: Path, parents: int = 2) -> Path | None:
    """The LOC_synset_mapping.txt in `directory` or up to `parents` levels above it, if any."""
    directory = Path(directory).resolve()
    for candidate_dir in [directory, *list(directory.parents)[:parents]]:
        candidate = candidate_dir / SYNSET_MAPPING_NAME
        if candidate.is_file():
            return candidate
    return None


def find_class_names(directory: Path) -> dict[str, str]:
    """WNID → words from a LOC_synset_mapping.txt in `directory` or up to 2 parents; {} when
    none."""
    path = find_synset_mapping(directory)
    return read_synset_mapping(path) if path is not None else {}


def folder_classes(directory: Path) -> list[str]:
    """The sorted class subfolder names of `directory` (WNIDs for ImageNet; any names work).

    Hidden folders (".tmp", ".cache") are not classes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(
            f"{directory} is not a directory: expected class folders such as {directory}/n01440764/"
        )
    return [name for name, is_dir in list_dir(directory) if is_dir]
