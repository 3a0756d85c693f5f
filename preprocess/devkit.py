"""The devkit's meta.mat: ILSVRC2012_IDs in meta.mat's own order (NOT sorted by WNID).

`preprocess.labels` translates devkit IDs with it; they are never used as class indices (the
class index is the WNID's sorted position: see `core.classes`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from core.errors import UserError


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
