"""Val ground truth in any of its three published forms, detected on its own.

    from preprocess.labels import load_val_labels
    labels = load_val_labels(Path("LOC_val_solution.csv"))
    # {"ILSVRC2012_val_00000001.JPEG": "n01751748", ...}

Forms:
- the devkit: `ILSVRC2012_devkit_t12.tar.gz` (read in place), its extracted folder, or the two files
  `data/meta.mat` + `data/ILSVRC2012_validation_ground_truth.txt`. Line i of the ground truth is
  the ILSVRC2012_ID of `ILSVRC2012_val_{i:08d}.JPEG`. IDs follow meta.mat's order, which is NOT
  sorted by WNID, so they are translated to WNIDs through meta.mat. Using them as class indices
  directly is the classic 0.1 %-accuracy bug.
- Kaggle `LOC_val_solution.csv`: `ImageId,PredictionString` where PredictionString is
  "WNID x0 y0 x1 y1 WNID ..." (one group per box); the first WNID is the label.
- caffe `val.txt`: "ILSVRC2012_val_00000001.JPEG 65", a 0-based index into the sorted WNIDs;
  the class list comes from a `classes` argument or a LOC_synset_mapping.txt / synsets.txt
  beside it.

Internally labels are keyed by file stem ("ILSVRC2012_val_00000001"), so any extension matches.
"""

from __future__ import annotations

import csv
import io
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

from core.classes import find_synset_mapping, is_wnid, read_class_list
from core.errors import UserError
from preprocess.devkit import devkit_id_to_wnid

LabelFormat = Literal["devkit-tar", "devkit-dir", "devkit-files", "kaggle", "caffe"]

DEVKIT_TAR_NAME = "ILSVRC2012_devkit_t12.tar.gz"
META_MAT_NAME = "meta.mat"
GROUND_TRUTH_NAME = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_CSV_NAME = "LOC_val_solution.csv"
CAFFE_CLASSES_NAME = "synsets.txt"  # caffe's ilsvrc12 aux data: one WNID per line, sorted
CAFFE_LINE = re.compile(r"^(\S+)\s+(\d+)\s*$")
GROUND_TRUTH_LINE = re.compile(r"^\d+\s*$")
ERROR_EXAMPLES = 5  # how many names an error message lists

LabelSource = Path | str | Sequence[Path | str]


def val_stem(file_name: str) -> str:
    """ "ILSVRC2012_val_00000001.JPEG" → "ILSVRC2012_val_00000001", the key labels are stored
    under."""
    name = file_name.rsplit("/", 1)[-1]  # string ops, not PurePosixPath: this runs for every file
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def devkit_val_stem(index: int) -> str:
    """The val file stem for 1-based line `index` of the devkit ground truth."""
    return f"ILSVRC2012_val_{index:08d}"


def load_val_labels(
    path: LabelSource,
    val_files: Iterable[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
) -> dict[str, str]:
    """Val file name → WNID from a devkit (tar.gz, folder or its two files), a Kaggle CSV or a
    caffe val.txt.

    Args:
        path: the label file, the devkit folder/tarball, or [meta.mat, ground truth].
        val_files: the val file names present; when given, the result has exactly those of them
            that have a label (keyed by the given name). Otherwise keys are "<stem>.JPEG".
        classes: the WNIDs, for a caffe val.txt (sorted here); else found beside the file.
    """
    by_stem = read_val_labels(path, classes=classes)
    if val_files is None:
        return {f"{stem}.JPEG": wnid for stem, wnid in by_stem.items()}
    return {name: by_stem[val_stem(name)] for name in val_files if val_stem(name) in by_stem}


def read_val_labels(path: LabelSource, *, classes: Sequence[str] | None = None) -> dict[str, str]:
    """Val file stem → WNID, in label-file order. See `load_val_labels`."""
    label_format, files = detect_label_format(path)
    try:
        if label_format == "kaggle":
            return read_kaggle_csv(files[0])
        if label_format == "caffe":
            return read_caffe_val_txt(files[0], classes=classes)
        if label_format == "devkit-tar":
            return read_devkit_tar(files[0])
        meta_mat, ground_truth = files
        return read_devkit_files(meta_mat, ground_truth)
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not {err.encoding} text ({err.reason} at byte {err.start}): expected a "
            f"{label_format} label file as downloaded; re-download it or pass the right --labels"
        ) from None


def find_label_source(directory: Path) -> Path | None:
    """A val label source inside `directory` (a raw ImageNet root), or None.

    Looked for, in this order: ILSVRC2012_devkit_t12.tar.gz, an extracted devkit
    (ILSVRC2012_devkit_t12/data/ or data/), LOC_val_solution.csv, val.txt.
    """
    directory = Path(directory)
    candidates = [
        directory / DEVKIT_TAR_NAME,
        directory / "ILSVRC2012_devkit_t12",
        directory / KAGGLE_CSV_NAME,
        directory / "val.txt",
    ]
    for candidate in candidates:
        if candidate.is_file() or (candidate.is_dir() and _devkit_dir_files(candidate) is not None):
            return candidate
    if _devkit_dir_files(directory) is not None:
        return directory
    return None


def detect_label_format(path: LabelSource) -> tuple[LabelFormat, tuple[Path, ...]]:
    """Which form `path` holds, and the file(s) to read it from."""
    if not isinstance(path, (str, Path)):
        return _detect_file_pair([Path(p) for p in path])
    path = Path(path)
    if path.is_dir():
        files = _devkit_dir_files(path)
        if files is not None:
            return "devkit-dir", files
        found = find_label_source(path)
        if found is not None and found != path:
            return detect_label_format(found)
        raise UserError(
            f"{path} is a folder without val labels: expected {DEVKIT_TAR_NAME}, "
            "an extracted devkit "
            f"(data/{META_MAT_NAME} + data/{GROUND_TRUTH_NAME}), {KAGGLE_CSV_NAME} or val.txt in it"
        )
    _require_file(path)
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "devkit-tar", (path,)
    if path.suffix == ".mat":
        ground_truth = path.parent / GROUND_TRUTH_NAME
        if not ground_truth.is_file():
            raise UserError(
                f"got {path} but no {GROUND_TRUTH_NAME} beside it: "
                "pass the devkit folder or both files"
            )
        return "devkit-files", (path, ground_truth)

    first_line = _first_line(path)
    if first_line.startswith("ImageId"):
        return "kaggle", (path,)
    if CAFFE_LINE.match(first_line):
        return "caffe", (path,)
    if GROUND_TRUTH_LINE.match(first_line):
        meta_mat = path.parent / META_MAT_NAME
        if not meta_mat.is_file():
            raise UserError(
                f"{path} looks like the devkit ground truth (one ILSVRC2012_ID per line) "
                f"but there is no {META_MAT_NAME} beside it: its IDs mean nothing without "
                "meta.mat; pass the devkit folder or tarball"
            )
        return "devkit-files", (meta_mat, path)
    raise UserError(
        f"cannot tell the label format of {path} (first line {first_line[:80]!r}): "
        "expected the devkit "
        f"({DEVKIT_TAR_NAME}, its folder, or {META_MAT_NAME} + {GROUND_TRUTH_NAME}), Kaggle "
        f"{KAGGLE_CSV_NAME} ('ImageId,PredictionString'), or caffe val.txt ('NAME.JPEG INDEX')"
    )


def _detect_file_pair(paths: list[Path]) -> tuple[LabelFormat, tuple[Path, ...]]:
    """A list of label files: one file is detected alone; two must be meta.mat + ground truth."""
    if len(paths) == 1:
        return detect_label_format(paths[0])
    mats = [p for p in paths if p.suffix == ".mat"]
    others = [p for p in paths if p.suffix != ".mat"]
    if len(paths) != 2 or len(mats) != 1:
        raise UserError(
            f"got label files {[str(p) for p in paths]}: two files must be the devkit's "
            f"{META_MAT_NAME} and {GROUND_TRUTH_NAME}"
        )
    for file in paths:
        _require_file(file)
    return "devkit-files", (mats[0], others[0])


def read_kaggle_csv(path: Path) -> dict[str, str]:
    """Stem → WNID from Kaggle's LOC_val_solution.csv; the first WNID of PredictionString is the
    label."""
    labels: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [column.strip() for column in header[:2]] != [
            "ImageId",
            "PredictionString",
        ]:
            raise UserError(
                f"{path}: expected the header 'ImageId,PredictionString', got {header!r}"
            )
        for row in reader:
            if not row:
                continue
            if len(row) < 2 or not row[1].split():
                raise UserError(
                    f"{path}:{reader.line_num}: expected 'ImageId,WNID ...', "
                    f"got {','.join(row)[:80]!r}"
                )
            wnid = row[1].split()[0]
            if not is_wnid(wnid):
                raise UserError(
                    f"{path}:{reader.line_num}: {wnid!r} is not a WNID (expected nXXXXXXXX)"
                )
            _add_label(labels, val_stem(row[0].strip()), wnid, path)
    return _non_empty(labels, path)


def read_caffe_val_txt(path: Path, *, classes: Sequence[str] | None = None) -> dict[str, str]:
    """Stem → WNID from a caffe val.txt ("NAME.JPEG INDEX", 0-based into the sorted WNIDs)."""
    wnids = sorted(classes) if classes is not None else _caffe_classes_beside(path)
    labels: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            match = CAFFE_LINE.match(line.strip())
            if match is None:
                raise UserError(
                    f"{path}:{line_number}: expected 'NAME.JPEG INDEX', got {line.strip()[:80]!r}"
                )
            index = int(match.group(2))
            if index >= len(wnids):
                raise UserError(
                    f"{path}:{line_number}: class index {index} but the class list has "
                    f"{len(wnids)} WNIDs: "
                    "pass the full class list (LOC_synset_mapping.txt)"
                )
            _add_label(labels, val_stem(match.group(1)), wnids[index], path)
    return _non_empty(labels, path)


def read_devkit_files(meta_mat: Path, ground_truth: Path) -> dict[str, str]:
    """Stem → WNID from the devkit's meta.mat and ILSVRC2012_validation_ground_truth.txt."""
    return _translate_ground_truth(
        devkit_id_to_wnid(meta_mat), ground_truth.read_text(encoding="ascii"), ground_truth
    )


def read_devkit_tar(path: Path) -> dict[str, str]:
    """Stem → WNID from ILSVRC2012_devkit_t12.tar.gz, read in place (nothing is extracted)."""
    meta_bytes, ground_truth_text = read_devkit_tar_members(path)
    return _translate_ground_truth(devkit_id_to_wnid(meta_bytes), ground_truth_text, path)


def read_devkit_tar_members(path: Path) -> tuple[bytes, str]:
    """(meta.mat bytes, ground-truth text) from the devkit tarball."""
    meta_bytes: bytes | None = None
    ground_truth: str | None = None
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                if parts[-2:] == ("data", META_MAT_NAME):
                    meta_bytes = _read_member(archive, member)
                elif parts[-2:] == ("data", GROUND_TRUTH_NAME):
                    ground_truth = _read_member(archive, member).decode("ascii")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"cannot read devkit tarball {path}: {err}") from err
    if meta_bytes is None or ground_truth is None:
        raise UserError(
            f"{path} lacks data/{META_MAT_NAME} or data/{GROUND_TRUTH_NAME}: "
            f"expected {DEVKIT_TAR_NAME}"
        )
    return meta_bytes, ground_truth


def devkit_class_names(path: Path) -> dict[str, str]:
    """WNID → words of the 1000 leaf classes from a devkit tarball, folder or meta.mat, sorted by
    WNID."""
    from preprocess.devkit import devkit_meta

    path = Path(path)
    if path.is_dir():
        files = _devkit_dir_files(path)
        if files is None:
            raise UserError(f"{path} holds no data/{META_MAT_NAME}: expected the extracted devkit")
        source: Path | bytes = files[0]
    elif path.suffix == ".mat":
        source = path
    else:
        source = read_devkit_tar_members(path)[0]
    return dict(sorted((wnid, words) for _, wnid, words in devkit_meta(source)))


def _translate_ground_truth(id_to_wnid: dict[int, str], text: str, source: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not GROUND_TRUTH_LINE.match(line.strip()):
            raise UserError(
                f"{source}: ground truth line {line_number} is {line[:40]!r}: "
                "expected one ILSVRC2012_ID"
            )
        synset_id = int(line)
        if synset_id not in id_to_wnid:
            raise UserError(
                f"{source}: ground truth line {line_number} has ILSVRC2012_ID {synset_id}, "
                "which meta.mat's "
                f"leaf synsets do not define (they define {min(id_to_wnid)}..{max(id_to_wnid)})"
            )
        labels[devkit_val_stem(line_number)] = id_to_wnid[synset_id]
    return _non_empty(labels, source)


def _caffe_classes_beside(path: Path) -> list[str]:
    mapping = find_synset_mapping(path.parent)
    if mapping is not None:
        return read_class_list(mapping)
    synsets_txt = path.parent / CAFFE_CLASSES_NAME
    if synsets_txt.is_file():
        return read_class_list(synsets_txt)
    raise UserError(
        f"{path} is a caffe val.txt of class indices, which need the class list: "
        "put LOC_synset_mapping.txt "
        "beside it or pass --classes LOC_synset_mapping.txt"
    )


def _devkit_dir_files(directory: Path) -> tuple[Path, Path] | None:
    for data_dir in (directory / "data", directory):
        meta_mat, ground_truth = data_dir / META_MAT_NAME, data_dir / GROUND_TRUTH_NAME
        if meta_mat.is_file() and ground_truth.is_file():
            return meta_mat, ground_truth
    return None


def _add_label(labels: dict[str, str], stem: str, wnid: str, source: Path) -> None:
    previous = labels.setdefault(stem, wnid)
    if previous != wnid:
        raise UserError(f"{source}: {stem} is labelled both {previous} and {wnid}")


def _non_empty(labels: dict[str, str], source: Path) -> dict[str, str]:
    if not labels:
        raise UserError(f"{source} holds no labels")
    return labels


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None, f"regular member {member.name} has no data"
    return handle.read()


def _require_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"label file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{path} is not a file or devkit folder")


def _first_line(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    text = io.TextIOWrapper(io.BytesIO(head), encoding="utf-8", errors="replace")
    for line in text:
        if line.strip():
            return line.strip().lstrip("\ufeff")
    raise UserError(f"label file {path} is empty")
