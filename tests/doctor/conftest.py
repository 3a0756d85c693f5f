"""Fixtures for the doctor's tests: tiny data in `preprocess prepare`'s layout (DST/folders/<split>
class folders and DST/<split> shards of the same images), so the doctor measures every backend."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "data"), str(TESTS / "train")]  # loaderfixtures, train_helpers

from loaderfixtures import SYNSET_MAPPING, make_shards, write_class_folders


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """DST/folders/{train,val} (8 classes x 8 and x 3 flat-colour JPEGs) and DST/{train,val}
    shards of the same images, with a LOC_synset_mapping.txt."""
    root = tmp_path_factory.mktemp("prepared")
    write_class_folders(root / "folders" / "train", [8] * 8)
    write_class_folders(root / "folders" / "val", [3] * 8, first_id=100)
    shutil.copy(SYNSET_MAPPING, root / "LOC_synset_mapping.txt")
    make_shards(root / "folders" / "train", root / "train", "train", 16)
    make_shards(root / "folders" / "val", root / "val", "val", 8)
    return root
