"""Fixtures for the loader tests; the helpers and data builders live in loaderfixtures.py."""

from loaderfixtures import (  # noqa: F401  (pytest finds fixtures by name)
    textured_data,
    tiny_folders,
    tiny_shards,
)
