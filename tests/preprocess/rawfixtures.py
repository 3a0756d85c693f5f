"""Tiny raw ImageNet layouts for tests and the demo: ILSVRC tars, the Kaggle layout, plain folders.

    from rawfixtures import build_ilsvrc_tars  # tests/preprocess is on sys.path under pytest
    layout = build_ilsvrc_tars(tmp_path / "raw")      # 4 real WNIDs, 3 train + 2 val images each
    layout.train   # {"n01440764_10": "n01440764", ...}: key → WNID, what a reader must yield
    layout.images  # {("train", "n01440764_10"): b"\\xff\\xd8...", ...}: the exact file bytes

Every builder writes the same bytes for the same (split, key), so the three layouts can be
compared with each other. Images are 40–80 px, so a layout takes milliseconds to build. The
devkit's meta.mat is written with scipy and its ILSVRC2012_ID order is deliberately NOT the
sorted WNID order, as in the real devkit: code that uses raw IDs as class indices fails.
WNIDs and words come from the real LOC_synset_mapping.txt in tests/fixtures-data/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

FIXTURES_DATA = Path(__file__).resolve().parents[1] / "fixtures-data"
REAL_SYNSET_MAPPING = FIXTURES_DATA / "LOC_synset_mapping.txt"  # the real 1000 classes
REAL_KAGGLE_VAL = FIXTURES_DATA / "LOC_val_solution.csv"  # the real 50,000 val labels, Kaggle form
REAL_CAFFE_VAL = FIXTURES_DATA / "val_sorted_index.txt"  # the same labels, caffe val.txt form

OddballKind = Literal["cmyk", "png-as-jpeg", "grayscale", "rgba", "truncated", "empty"]
ODDBALL_KINDS: tuple[OddballKind, ...] = (
    "cmyk",
    "png-as-jpeg",
    "grayscale",
    "rgba",
    "truncated",
    "empty",
)
REPAIRABLE_KINDS: frozenset[str] = frozenset(
    {"cmyk", "png-as-jpeg", "grayscale", "rgba"}
)  # decodable, odd
BROKEN_KINDS: frozenset[str] = frozenset({"truncated", "empty"})  # not decodable at all

LabelsForm = Literal["kaggle", "caffe", "devkit"]


@dataclasses.dataclass(frozen=True)
class RawLayout:
    root: Path  # the RAW directory to pass to `prepare` / `iter_raw_images`
    classes: list[str]  # sorted WNIDs
    class_names: dict[str, str]  # WNID → words (real words)
    train: dict[str, str]  # train key (file stem) → WNID
    val: dict[str, str]  # val key (file stem) → WNID
    images: dict[tuple[str, str], bytes]  # (split, key) → exact file bytes
    oddballs: dict[str, str]  # train key → oddball kind (see ODDBALL_KINDS)
    labels: Path | None  # the val label source inside root, if the layout has one


def real_class_names() -> dict[str, str]:
    """WNID → words for the real 1000 classes, in file (= sorted) order."""
    names: dict[str, str] = {}
    for line in REAL_SYNSET_MAPPING.read_text(encoding="utf-8").splitlines():
        wnid, _, words = line.partition(" ")
        names[wnid] = words
    return names


def pick_wnids(count: int = 4) -> list[str]:
    """`count` real WNIDs spread across the 1000 classes, sorted."""
    all_wnids = list(real_class_names())
    step = len(all_wnids) // count
    return sorted(all_wnids[index * step + 7] for index in range(count))


DEFAULT_WNIDS: list[str] = pick_wnids(4)


def make_jpeg(
    path: Path | None = None,
    size: tuple[int, int] = (64, 48),
    color: tuple[int, int, int] = (200, 30, 30),
    *,
    quality: int = 85,
) -> bytes:
    """A small RGB JPEG (a colour gradient, so it is not trivially compressible); written to
    `path` if given."""
    width, height = size
    ramp_x = np.linspace(0.4, 1.0, width, dtype=np.float32)[None, :, None]
    ramp_y = np.linspace(1.0, 0.6, height, dtype=np.float32)[:, None, None]
    pixels = (np.asarray(color, dtype=np.float32)[None, None, :] * ramp_x * ramp_y).astype(
        np.uint8
    )  # [H, W, 3]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality)
    return _maybe_write(path, buffer.getvalue())


def image_bytes_for(split: str, key: str) -> bytes:
    """The deterministic JPEG every builder writes for (split, key): size and colour derive from
    the key."""
    digest = hashlib.sha256(f"{split}/{key}".encode()).digest()
    width, height = 40 + digest[0] % 41, 40 + digest[1] % 41  # 40–80 px
    return make_jpeg(None, (width, height), (digest[2], digest[3], digest[4]))


def make_oddball(
    kind: OddballKind, path: Path | None = None, size: tuple[int, int] = (56, 44)
) -> bytes:
    """One of the odd files real ImageNet contains, as bytes (written to `path` if given).

    cmyk: a CMYK JPEG (22 train files); png-as-jpeg: PNG bytes under a .JPEG name
    (n02105855_2933.JPEG); grayscale: an L-mode JPEG; rgba: an RGBA PNG; truncated: the first
    third of a JPEG; empty: zero bytes.
    """
    width, height = size
    buffer = io.BytesIO()
    if kind == "cmyk":
        Image.new("CMYK", (width, height), (10, 200, 30, 40)).save(
            buffer, format="JPEG", quality=90
        )
    elif kind == "png-as-jpeg":
        Image.new("RGB", (width, height), (30, 120, 220)).save(buffer, format="PNG")
    elif kind == "grayscale":
        Image.new("L", (width, height), 140).save(buffer, format="JPEG", quality=90)
    elif kind == "rgba":
        Image.new("RGBA", (width, height), (220, 40, 90, 128)).save(buffer, format="PNG")
    elif kind == "truncated":
        whole = make_jpeg(None, size, (90, 90, 200))
        buffer.write(whole[: len(whole) // 3])
    elif kind == "empty":
        pass
    else:
        raise ValueError(f"unknown oddball kind {kind!r}: expected one of {ODDBALL_KINDS}")
    return _maybe_write(path, buffer.getvalue())


def plan_train(wnids: Sequence[str], per_class: int) -> dict[str, str]:
    """Train key → WNID: "nXXXXXXXX_<n>" as in the real train tars."""
    return {
        f"{wnid}_{10 + 7 * index}": wnid for wnid in sorted(wnids) for index in range(per_class)
    }


def plan_val(wnids: Sequence[str], per_class: int, seed: int = 0) -> dict[str, str]:
    """Val key → WNID: "ILSVRC2012_val_%08d" numbered 1.., classes interleaved by a seeded
    shuffle."""
    assignment = [wnid for wnid in sorted(wnids) for _ in range(per_class)]
    random.Random(seed).shuffle(assignment)
    return {f"ILSVRC2012_val_{index:08d}": wnid for index, wnid in enumerate(assignment, start=1)}


def plan_oddballs(wnid: str, kinds: Sequence[OddballKind] = ODDBALL_KINDS) -> dict[str, str]:
    """Train key → oddball kind, all in class `wnid`."""
    return {f"{wnid}_{9000 + index}": kind for index, kind in enumerate(kinds)}


def shuffled_ids(wnids: Sequence[str], seed: int = 0) -> dict[str, int]:
    """WNID → ILSVRC2012_ID (1-based) in an order that is NOT the sorted one (for 2+ classes)."""
    order = sorted(wnids)
    if len(order) > 1:
        rng = random.Random(seed)
        while order == sorted(wnids):
            rng.shuffle(order)
    return {wnid: index for index, wnid in enumerate(order, start=1)}


def write_meta_mat(
    path: Path | None, wnids: Sequence[str], *, shuffled: bool = True, seed: int = 0
) -> tuple[bytes, dict[str, int]]:
    """A devkit-style meta.mat (struct array `synsets`) with scipy; returns (bytes, WNID →
    ILSVRC2012_ID).

    Leaves get IDs 1..N in a non-sorted order when `shuffled`; two non-leaf synsets
    (num_children > 0) follow, as in the real file's 1860 entries.
    """
    import scipy.io

    ids = (
        shuffled_ids(wnids, seed)
        if shuffled
        else {wnid: index for index, wnid in enumerate(sorted(wnids), start=1)}
    )
    names = real_class_names()
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    leaves = sorted(ids, key=ids.__getitem__)
    synsets = np.zeros((len(leaves) + 2, 1), dtype=[(field, object) for field in fields])
    for row, wnid in enumerate(leaves):
        synsets[row, 0] = (
            float(ids[wnid]),
            wnid,
            names.get(wnid, wnid),
            "a leaf class",
            0.0,
            np.zeros((1, 0)),
            0.0,
            1300.0,
        )
    parent_ids = [len(leaves) + 1, len(leaves) + 2]
    synsets[len(leaves), 0] = (
        float(parent_ids[0]),
        "n00001740",
        "entity",
        "the root",
        1.0,
        np.array([[float(parent_ids[1])]]),
        19.0,
        0.0,
    )
    synsets[len(leaves) + 1, 0] = (
        float(parent_ids[1]),
        "n00002684",
        "object, physical object",
        "an inner node",
        float(len(leaves)),
        np.array([[float(ids[wnid]) for wnid in leaves]]),
        18.0,
        0.0,
    )
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": synsets})
    return _maybe_write(path, buffer.getvalue()), ids


def ground_truth_text(val: Mapping[str, str], ids: Mapping[str, int]) -> str:
    """ILSVRC2012_validation_ground_truth.txt: line i = ILSVRC2012_ID of ILSVRC2012_val_%08d (i)."""
    stems = sorted(val)
    expected = [f"ILSVRC2012_val_{index:08d}" for index in range(1, len(stems) + 1)]
    assert stems == expected, "devkit ground truth needs val keys numbered 1..N"
    return "".join(f"{ids[val[stem]]}\n" for stem in stems)


def write_devkit_tar(
    path: Path,
    val: Mapping[str, str],
    wnids: Sequence[str],
    *,
    shuffled: bool = True,
    seed: int = 0,
) -> dict[str, int]:
    """ILSVRC2012_devkit_t12.tar.gz with data/meta.mat and
    data/ILSVRC2012_validation_ground_truth.txt."""
    meta, ids = write_meta_mat(None, wnids, shuffled=shuffled, seed=seed)
    members = {
        "ILSVRC2012_devkit_t12/data/meta.mat": meta,
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": ground_truth_text(
            val, ids
        ).encode(),
        "ILSVRC2012_devkit_t12/COPYING": b"fixture\n",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for directory in ("ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12/data"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
        for name, data in members.items():
            add_tar_member(archive, name, data)
    return ids


def write_devkit_dir(
    directory: Path,
    val: Mapping[str, str],
    wnids: Sequence[str],
    *,
    shuffled: bool = True,
    seed: int = 0,
) -> dict[str, int]:
    """An extracted devkit: directory/data/meta.mat +
    directory/data/ILSVRC2012_validation_ground_truth.txt."""
    data_dir = directory / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _, ids = write_meta_mat(data_dir / "meta.mat", wnids, shuffled=shuffled, seed=seed)
    (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text(ground_truth_text(val, ids))
    return ids


def write_kaggle_csv(path: Path, val: Mapping[str, str], *, box_coordinates: bool = True) -> Path:
    """LOC_val_solution.csv; with boxes each row is "WNID x0 y0 x1 y1" repeated, as in the real
    download."""
    rows = ["ImageId,PredictionString"]
    for index, (stem, wnid) in enumerate(sorted(val.items(), key=lambda item: item[0][::-1])):
        if box_coordinates:
            boxes = [f"{wnid} {10 + index} {12 + index} {40 + index} {44 + index}"] * (
                1 + index % 2
            )
            rows.append(f"{stem},{' '.join(boxes)} ")
        else:
            rows.append(f"{stem},{wnid}")
    return _write_text(path, "\n".join(rows) + "\n")


def write_caffe_val_txt(path: Path, val: Mapping[str, str], classes: Sequence[str]) -> Path:
    """caffe val.txt: "ILSVRC2012_val_00000001.JPEG <0-based sorted-WNID index>"."""
    index_of = {wnid: index for index, wnid in enumerate(sorted(classes))}
    return _write_text(
        path, "".join(f"{stem}.JPEG {index_of[wnid]}\n" for stem, wnid in sorted(val.items()))
    )


def write_synset_mapping(path: Path, wnids: Sequence[str]) -> Path:
    """LOC_synset_mapping.txt for `wnids`, with the real words."""
    names = real_class_names()
    return _write_text(path, "".join(f"{wnid} {names.get(wnid, wnid)}\n" for wnid in sorted(wnids)))


def write_labels(
    directory: Path, form: LabelsForm, val: Mapping[str, str], wnids: Sequence[str]
) -> Path:
    """Write val labels in `form` into `directory`; returns what to pass as --labels."""
    directory.mkdir(parents=True, exist_ok=True)
    if form == "kaggle":
        return write_kaggle_csv(directory / "LOC_val_solution.csv", val)
    if form == "caffe":
        write_synset_mapping(directory / "LOC_synset_mapping.txt", wnids)
        return write_caffe_val_txt(directory / "val.txt", val, wnids)
    path = directory / "ILSVRC2012_devkit_t12.tar.gz"
    write_devkit_tar(path, val, wnids)
    return path


def build_flat_val(
    directory: Path, wnids: Sequence[str] | None = None, per_class: int = 2
) -> dict[str, str]:
    """Flat val images ILSVRC2012_val_%08d.JPEG in `directory`; returns file name → WNID."""
    val = plan_val(wnids or DEFAULT_WNIDS, per_class)
    directory.mkdir(parents=True, exist_ok=True)
    for stem in val:
        (directory / f"{stem}.JPEG").write_bytes(image_bytes_for("val", stem))
    return {f"{stem}.JPEG": wnid for stem, wnid in val.items()}


def build_ilsvrc_tars(
    root: Path,
    wnids: Sequence[str] | None = None,
    per_class: int = 3,
    val_per_class: int = 2,
    *,
    meta_order_shuffled: bool = True,
    oddballs: bool = False,
    devkit: bool = True,
) -> RawLayout:
    """RAW/ILSVRC2012_img_train.tar (a tar of per-class tars), RAW/ILSVRC2012_img_val.tar (flat),
    devkit tar.gz."""
    wnids = sorted(wnids or DEFAULT_WNIDS)
    layout = _plan_layout(root, wnids, per_class, val_per_class, oddballs)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in wnids:
            inner_buffer = io.BytesIO()
            with tarfile.open(fileobj=inner_buffer, mode="w") as inner:
                for key in sorted(key for key, label in layout.train.items() if label == wnid):
                    add_tar_member(inner, f"{key}.JPEG", layout.images[("train", key)])
            add_tar_member(outer, f"{wnid}.tar", inner_buffer.getvalue())
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as val_tar:
        for key in sorted(layout.val):
            add_tar_member(val_tar, f"{key}.JPEG", layout.images[("val", key)])
    labels = None
    if devkit:
        labels = root / "ILSVRC2012_devkit_t12.tar.gz"
        write_devkit_tar(labels, layout.val, wnids, shuffled=meta_order_shuffled)
    return dataclasses.replace(layout, labels=labels)


def build_kaggle_layout(
    root: Path,
    wnids: Sequence[str] | None = None,
    per_class: int = 3,
    val_per_class: int = 2,
    *,
    oddballs: bool = False,
) -> RawLayout:
    """RAW/ILSVRC/Data/CLS-LOC/{train/nXXX/*.JPEG, val/*.JPEG}, RAW/LOC_val_solution.csv,
    RAW/LOC_synset_mapping.txt."""
    wnids = sorted(wnids or DEFAULT_WNIDS)
    layout = _plan_layout(root, wnids, per_class, val_per_class, oddballs)
    data_dir = root / "ILSVRC" / "Data" / "CLS-LOC"
    for key, wnid in layout.train.items():
        _maybe_write(data_dir / "train" / wnid / f"{key}.JPEG", layout.images[("train", key)])
    for key in layout.val:
        _maybe_write(data_dir / "val" / f"{key}.JPEG", layout.images[("val", key)])
    labels = write_kaggle_csv(root / "LOC_val_solution.csv", layout.val)
    write_synset_mapping(root / "LOC_synset_mapping.txt", wnids)
    return dataclasses.replace(layout, labels=labels)


def build_folder_layout(
    root: Path,
    wnids: Sequence[str] | None = None,
    per_class: int = 3,
    val_per_class: int = 2,
    *,
    val_sorted: bool = True,
    oddballs: bool = False,
    synset_mapping: bool = True,
) -> RawLayout:
    """RAW/train/nXXX/*.JPEG and RAW/val/nXXX/*.JPEG, or RAW/val flat + RAW/LOC_val_solution.csv."""
    wnids = sorted(wnids or DEFAULT_WNIDS)
    layout = _plan_layout(root, wnids, per_class, val_per_class, oddballs)
    for key, wnid in layout.train.items():
        _maybe_write(root / "train" / wnid / f"{key}.JPEG", layout.images[("train", key)])
    for key, wnid in layout.val.items():
        folder = root / "val" / wnid if val_sorted else root / "val"
        _maybe_write(folder / f"{key}.JPEG", layout.images[("val", key)])
    labels = None if val_sorted else write_kaggle_csv(root / "LOC_val_solution.csv", layout.val)
    if synset_mapping:
        write_synset_mapping(root / "LOC_synset_mapping.txt", wnids)
    return dataclasses.replace(layout, labels=labels)


def add_tar_member(
    archive: tarfile.TarFile, name: str, data: bytes, *, mtime: int = 1_300_000_000
) -> None:
    """Add a regular file member `name` holding `data`."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = mtime
    archive.addfile(info, io.BytesIO(data))


def _plan_layout(
    root: Path, wnids: list[str], per_class: int, val_per_class: int, oddballs: bool
) -> RawLayout:
    train = plan_train(wnids, per_class)
    odd = plan_oddballs(wnids[0]) if oddballs else {}
    train.update({key: wnids[0] for key in odd})
    val = plan_val(wnids, val_per_class)
    images = {("train", key): image_bytes_for("train", key) for key in train}
    images.update({("train", key): make_oddball(kind) for key, kind in odd.items()})  # type: ignore[arg-type]
    images.update({("val", key): image_bytes_for("val", key) for key in val})
    names = real_class_names()
    return RawLayout(
        root=root,
        classes=list(wnids),
        class_names={wnid: names.get(wnid, wnid) for wnid in wnids},
        train=train,
        val=val,
        images=images,
        oddballs=odd,
        labels=None,
    )


def _maybe_write(path: Path | None, data: bytes) -> bytes:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
