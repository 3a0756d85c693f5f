"""Fixtures for the loader tests; the helpers and data builders live in loaderfixtures.py."""

from loaderfixtures import tiny_folders, tiny_shards  # noqa: F401  (pytest finds fixtures by name)
