"""Fixtures for the resize/shard/verify/prepare tests.

Helpers live in imagefixtures.py (generated JPEGs, class folders, real photos); raw ImageNet
layouts (ILSVRC tars, Kaggle, folders, oddball files) in rawfixtures.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from imagefixtures import make_class_folders


@pytest.fixture
def class_folders(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Three classes of five tiny JPEGs each, as resized class folders."""
    root = tmp_path / "folders"
    return root, make_class_folders(root)
