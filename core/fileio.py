"""File helpers every command shares: one lister, one atomic writer, one stale-temp remover.

    from core.fileio import atomic_output, list_dir, remove_stale_temps, walk_files
    for name, is_dir in list_dir(Path("train")): ...              # sorted, hidden entries skipped
    relatives = walk_files(Path("train"), is_image_file)         # every image below, sorted
    with atomic_output(Path("out/manifest.json"), "w") as handle: ...   # all or nothing
    removed = remove_stale_temps(Path("out"), ".resize-tmp")     # what a kill -9 left behind

Listing: a class folder that is a symlink (a common way to assemble a subset) is listed like a
real one by resize, shard, prepare, verify and sort-val alike. A symlink loop (a folder linking
to one of its ancestors) is visited once, never forever.

Writing: every output goes to a temp file in its own folder and is renamed over the target with
os.replace, so a reader sees the old file or the whole new one, never a partial one. Temp names
start with a dot, which keeps them out of every listing: `.{name}.XXXX.tmp` (mkstemp) by
default, or `.{name}.{pid}{suffix}` for the bulk outputs (resized JPEGs, shard tars), which a
rerun finds and deletes after a kill -9 with `remove_stale_temps`. This module imports nothing
but the standard library, so the loaders and the trainer's checkpoints can use it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

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
    """Sorted names of the non-hidden files (or links to files) in `directory` that `keep`
    accepts."""
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


def temp_path(path: Path, suffix: str) -> Path:
    """`.{name}.{pid}{suffix}` beside `path`: the temp file of a pid-named atomic write, the
    name `remove_stale_temps` takes apart again."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}{suffix}"


@contextlib.contextmanager
def atomic_output(
    path: Path, mode: str = "wb", *, temp_suffix: str | None = None, fsync: bool = True
) -> Iterator[IO]:
    """Open a temp file beside `path`; on a clean exit fsync it and rename it over `path`.

    The one atomic-write discipline of the project (manifests, records, shards, resized images,
    checkpoints): a reader sees the old file or the whole new one, never a partial one, and a
    failure (any exception in the block) leaves no temp.

    Args:
        temp_suffix: None: a mkstemp name `.{name}.XXXX.tmp`, made readable by everyone (0644;
            mkstemp makes 0600, and outputs are read by other users' jobs too). A suffix: the
            pid-named `temp_path(path, temp_suffix)`, created with the process's umask, which a
            rerun recognises with `remove_stale_temps` after a kill -9.
        fsync: False skips the fsync before the rename, for bulk outputs whose durability is
            paid once later (resize runs os.sync() before any record vouches for them).
    """
    path = Path(path)
    if temp_suffix is None:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        temp = Path(name)
    else:
        fd, temp = None, temp_path(path, temp_suffix)
    try:
        if fd is not None:
            os.fchmod(fd, 0o644)
        with open(temp, mode) if fd is None else os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory and a rename."""
    with atomic_output(path, "w") as handle:
        handle.write(text)


def write_atomic(path: Path, data: bytes, temp_suffix: str) -> None:
    """Write `data` via `.{name}.{pid}{temp_suffix}` in the same folder + os.replace, no fsync.

    For bulk outputs that are synced once later: a crash can at worst leave a complete-looking
    name over bytes that never reached the disk, which the caller must detect on resume (resize
    checks the JPEG end marker).
    """
    with atomic_output(path, "wb", temp_suffix=temp_suffix, fsync=False) as handle:
        handle.write(data)


def fsync_directory(path: Path) -> None:
    """fsync the directory `path`, so the renames into it survive a crash; errors are ignored
    (some filesystems cannot open or fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(
    root: Path, suffix: str, owned: Callable[[Path], bool] | None = None
) -> list[Path]:
    """Delete the `.{output name}.{tag}{suffix}` temp files a killed run left under `root`;
    returns the removed paths, sorted.

    Every atomic writer here names its temp file that way, in the output's own folder: the tag
    is the pid (`temp_path`) or mkstemp's random part, neither of which holds a dot. Args:
        owned: for Slurm slices, which outputs (full paths) are this task's; other tasks' temp
            files may be writes in progress and are left alone. None: every temp is stale.
    """
    removed: list[Path] = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(suffix):
                output_name = name[1 : -len(suffix)].rsplit(".", 1)[0]  # drop ".{tag}"
                if owned is None or owned(Path(folder, output_name)):
                    Path(folder, name).unlink(missing_ok=True)
                    removed.append(Path(folder, name))
    if removed:
        logger.info("removed %d unfinished temp files left by an interrupted run", len(removed))
    return sorted(removed)
