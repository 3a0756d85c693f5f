"""The one directory lister every command uses: symlinked folders are followed, cycles are not.

    from preprocess.listing import list_dir, walk_files
    for name, is_dir in list_dir(Path("train")): ...              # sorted, hidden entries skipped
    relatives = walk_files(Path("train"), is_image_file)         # every image below, sorted

A class folder that is a symlink (a common way to assemble a subset) is listed like a real one
by resize, shard, prepare, verify and sort-val alike. A symlink loop (a folder linking to one
of its ancestors) is visited once, never forever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


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
        name for name, is_dir in list_dir(directory) if not is_dir and (keep is None or keep(name))
    ]


def walk_files(root: Path, keep: Callable[[str], bool], skip: Iterable[Path] = ()) -> list[Path]:
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


def remove_stale_temps(root: Path, suffix: str, owned: Callable[[Path], bool] | None = None) -> int:
    """Delete the `.{output name}.{pid}{suffix}` temp files a killed run left under `root`.

    Every atomic writer here (resize's JPEGs, shard's tars) names its temp file that way, in the
    output's own folder. Args:
        owned: for Slurm slices, which outputs (full paths) are this task's; other tasks' temp
            files may be writes in progress and are left alone. None: every temp is stale.
    """
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(suffix):
                output_name = name[1 : -len(suffix)].rsplit(".", 1)[0]  # drop ".{pid}"
                if owned is None or owned(Path(folder, output_name)):
                    Path(folder, name).unlink(missing_ok=True)
                    removed += 1
    if removed:
        logger.info("removed %d unfinished temp files left by an interrupted run", removed)
    return removed
