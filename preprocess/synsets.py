"""Class lists: LOC_synset_mapping.txt, the devkit's meta.mat, and class folder names.

The class index everywhere in this project is the position of the WNID in sorted order (what
torchvision's ImageFolder, timm and the caffe `val.txt` use). The devkit's ILSVRC2012_IDs follow
meta.mat's own order, which is NOT sorted by WNID: `devkit_meta` returns them so that
`preprocess.labels` can translate them, and they are never used as class indices.

    from preprocess.synsets import read_synset_mapping, folder_classes
    names = read_synset_mapping(Path("LOC_synset_mapping.txt"))
    # {"n01440764": "tench, Tinca tinca", ...}
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import BinaryIO

from preprocess.errors import UserError
from preprocess.fileio import list_dir

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


def devkit_meta(meta_mat: Path | BinaryIO | bytes) -> list[tuple[int, str, str]]:
    """(ILSVRC2012_ID, WNID, words) of the leaf synsets in the devkit's `data/meta.mat`, in
    meta.mat order.

    meta.mat holds a struct array `synsets` with fields ILSVRC2012_ID, WNID, words, gloss,
    num_children, ...; the 1000 classification classes are the leaves (num_children == 0)
    and carry IDs 1..1000. Their order is NOT sorted by WNID.
    """
    import scipy.io  # imported here: scipy is only needed for devkit input

    source = io.BytesIO(meta_mat) if isinstance(meta_mat, bytes) else meta_mat
    name = str(meta_mat) if isinstance(meta_mat, (str, Path)) else "meta.mat"
    try:
        contents = scipy.io.loadmat(source, squeeze_me=True, struct_as_record=True)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"cannot read devkit meta.mat {name}: {err}") from err
    if "synsets" not in contents:
        raise UserError(
            f"{name} has no 'synsets' struct: expected the ILSVRC2012 devkit's data/meta.mat"
        )
    synsets = contents["synsets"].reshape(-1)
    fields = synsets.dtype.names or ()
    missing = {"ILSVRC2012_ID", "WNID", "num_children"} - set(fields)
    if missing:
        raise UserError(
            f"{name}: 'synsets' lacks fields {sorted(missing)}: "
            "expected the ILSVRC2012 devkit's meta.mat"
        )
    leaves: list[tuple[int, str, str]] = []
    for entry in synsets:
        if int(entry["num_children"]) != 0:
            continue
        words = str(entry["words"]) if "words" in fields else ""
        leaves.append((int(entry["ILSVRC2012_ID"]), str(entry["WNID"]), words))
    if not leaves:
        raise UserError(f"{name}: no leaf synsets (num_children == 0) found")
    ids = [leaf[0] for leaf in leaves]
    if len(set(ids)) != len(ids):
        raise UserError(f"{name}: leaf ILSVRC2012_IDs are not unique")
    return leaves


def devkit_id_to_wnid(meta_mat: Path | BinaryIO | bytes) -> dict[int, str]:
    """ILSVRC2012_ID → WNID for the leaf synsets: the translation the devkit's ground truth
    needs."""
    return {synset_id: wnid for synset_id, wnid, _ in devkit_meta(meta_mat)}
