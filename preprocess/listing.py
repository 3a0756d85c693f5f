"""The one directory lister every command uses: symlinked folders are followed, cycles are not.

    from preprocess.listing import list_dir, walk_files
    for name, is_dir in list_dir(Path("train")): ...              # sorted, hidden entries skipped
    relatives = walk_files(Path("train"), is_image_file)         # every image below, sorted

A class folder that is a symlink (a common way to assemble a subset) is listed like a real one
by resize, shard, prepare, verify and sort-val alike. A symlink loop (a folder linking to one
of its ancestors) is visited once, never forever.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path


def list_dir(directory: Path) -> list[tuple[str, bool]]:
    """Sorted (name, is_dir) of the non-hidden folders and files in `directory` (symlinks followed;
    dangling links and other file types are left out)."""
    with os.scandir(directory) as entries:
        return sorted(
            (entry.name, entry.is_dir())
            for entry in entries
            if not entry.name.startswith(".") and (entry.is_dir() or entry.is_file())
        )


def file_names(directory: Path, keep: Callable[[str], bool] | None = None) -> list[str]:
    """Sorted names of the non-hidden files (or links to files) in `directory` that `keep` accepts."""
    return [
        name
        for name, is_dir in list_dir(directory)
        if not is_dir and (keep is None or keep(name))
    ]


def walk_files(
    root: Path, keep: Callable[[str], bool], skip: Iterable[Path] = ()
) -> list[Path]:
    """Sorted paths relative to `root` of every file below it whose name `keep` accepts.

    Hidden folders, the folders in `skip` (e.g. an output folder inside the input) and folders
    already visited through another link are not descended into.
    """
    root = Path(root)
    skipped = {Path(path).resolve() for path in skip}
    visited: set[tuple[int, int]] = set()
    found: list[Path] = []
    pending = [Path()]
    while pending:
        relative = pending.pop()
        folder = root / relative
        stat = folder.stat()
        if (stat.st_dev, stat.st_ino) in visited:
            continue
        visited.add((stat.st_dev, stat.st_ino))
        for name, is_dir in list_dir(folder):
            if is_dir:
                if (folder / name).resolve() not in skipped:
                    pending.append(relative / name)
            elif keep(name):
                found.append(relative / name)
    found.sort()
    return found
