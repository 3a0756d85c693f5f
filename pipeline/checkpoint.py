"""Atomic checkpoints: written by global rank 0 only, read with torch.load(weights_only=True).

    run_dir/checkpoints/last.pt       after every epoch, at max_steps and on a stop signal
    run_dir/checkpoints/best.pt       the checkpoint with the highest val top-1 so far
    run_dir/checkpoints/epoch_NNN.pt  every train.save_every epochs

A checkpoint holds only tensors and plain containers (dict/list/tuple/str/int/float/bool/None),
so `weights_only=True` loads it and loading never runs pickled code. Writes go to a temporary
file in the same directory, are fsynced, then `os.replace`d over the target: a job killed while
saving leaves the previous checkpoint intact.

Integrity and fall-back: each file has a sidecar `NAME.pt.sha256` (JSON: sha256, bytes, step),
written after the file; the old sidecar is removed before a file is replaced, so a kill between
the two leaves a file with no sidecar (then "readable by torch.load" is its check), never one
with a wrong sidecar. Before last.pt is replaced, the previous one is hard-linked into
checkpoints/previous/step_NNNNNNNN.pt (no bytes copied); train.keep_last counts last.pt and
those. `find_good_checkpoint` returns the newest file that passes its check and moves every one
that fails aside as `NAME.bad-YYYYmmddTHHMMSS` (never deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.fileio import atomic_output, fsync_directory, remove_stale_temps
from pipeline.distributed import DistInfo, all_gather_ints, broadcast_object
from pipeline.errors import CheckpointError

FORMAT_VERSION = 1
CHECKSUM_SUFFIX = ".sha256"
PREVIOUS_DIR = "previous"  # under checkpoints/: the older good ones train.keep_last keeps

logger = logging.getLogger(__name__)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def find_latest(run_dir: str | Path) -> Path | None:
    """run_dir/checkpoints/last.pt when it exists (what auto-resume loads), else None."""
    path = checkpoint_dir(run_dir) / "last.pt"
    return path if path.is_file() else None


def agree_on_checkpoint(path: Path | None, dist: DistInfo) -> Path | None:
    """Rank 0's `path` on every rank; one clear error on every rank if any rank cannot read it.

    Rank 0 decides: with node-local or cached run dirs, ranks could otherwise disagree."""
    chosen = broadcast_object(str(path) if path is not None else None, dist)
    if chosen is None:
        return None
    chosen = Path(chosen)
    missing = all_gather_ints(0 if chosen.is_file() else 1, dist)
    if any(missing):
        ranks = [rank for rank, flag in enumerate(missing) if flag]
        raise CheckpointError(
            f"rank 0 loads checkpoint {chosen} but rank(s) {ranks} cannot read it: put "
            "train.run_dir (or the --resume file) on a file system every node shares"
        )
    return chosen


def remove_killed_saves(run_dir: str | Path) -> list[Path]:
    """Delete the `.NAME.pt.*.tmp` files a killed save left in run_dir/checkpoints (rank 0, at
    start-up, before anything writes there); returns what it removed."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return remove_stale_temps(
        directory, ".tmp", owned=lambda output: output.suffix in (".pt", CHECKSUM_SUFFIX)
    )


class _HashingWriter:
    """A file-like that hashes what torch.save writes through it (no second read of the file)."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: Path, sha256: str, size: int, step: int | None) -> None:
    record = {"sha256": sha256, "bytes": size, "step": step}
    with atomic_output(checksum_path(path), "w") as handle:
        handle.write(json.dumps(record) + "\n")


def read_checksum(path: Path) -> dict | None:
    """The sidecar of `path` (None when it has none or it is unreadable)."""
    try:
        return json.loads(checksum_path(path).read_text())
    except (OSError, ValueError):
        return None


def atomic_save(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temp file beside `path`, fsync, rename over `path`, then its sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checksum_path(path).unlink(missing_ok=True)  # never a new file beside an old sidecar
    with atomic_output(path) as handle:
        writer = _HashingWriter(handle)
        torch.save(state, writer)
    write_checksum(path, writer.digest.hexdigest(), writer.size, state.get("step"))
    fsync_directory(path.parent)
    return path


def atomic_copy(source: Path, target: Path) -> Path:
    """Copy a finished checkpoint (best/epoch files) and its sidecar, temp + rename."""
    checksum_path(target).unlink(missing_ok=True)
    with atomic_output(target) as handle, open(source, "rb") as src:
        shutil.copyfileobj(src, handle, length=16 << 20)
    if checksum_path(source).is_file():
        shutil.copyfile(checksum_path(source), checksum_path(target))
    fsync_directory(target.parent)
    return target


def keep_previous(last: Path, keep_last: int) -> None:
    """Hard-link the current last.pt (and sidecar) into previous/ before it is replaced, then
    prune previous/ to the newest keep_last - 1."""
    previous = last.parent / PREVIOUS_DIR
    if keep_last > 1 and last.is_file():
        record = read_checksum(last) or {}
        step = record.get("step")
        name = (
            f"step_{step:08d}.pt"
            if isinstance(step, int)
            else f"mtime_{last.stat().st_mtime_ns}.pt"
        )
        previous.mkdir(exist_ok=True)
        for source, target in ((last, previous / name), (checksum_path(last), None)):
            target = target or checksum_path(previous / name)
            if not source.is_file():
                continue
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError:  # a file system without hard links
                shutil.copyfile(source, target)
    kept = sorted(previous.glob("*.pt"), reverse=True) if previous.is_dir() else []
    for stale in kept[max(0, keep_last - 1) :]:
        stale.unlink(missing_ok=True)
        checksum_path(stale).unlink(missing_ok=True)


def save_checkpoints(
    state: dict[str, Any],
    run_dir: str | Path,
    *,
    is_best: bool,
    epoch_file: bool,
    keep_last: int = 1,
) -> Path:
    """Write last.pt (keeping the previous one), and copy it to best.pt and/or epoch_NNN.pt
    (epoch = state["epoch"])."""
    directory = checkpoint_dir(run_dir)
    keep_previous(directory / "last.pt", keep_last)
    last = atomic_save(state, directory / "last.pt")
    if is_best:
        atomic_copy(last, directory / "best.pt")
    if epoch_file:
        atomic_copy(last, directory / f"epoch_{state['epoch']:03d}.pt")
    return last


def check_integrity(path: Path) -> str | None:
    """Why `path` is not a good checkpoint (None when it is): size and sha256 against its
    sidecar, or, with no sidecar, whether torch.load reads it."""
    record = read_checksum(path)
    if record is None:
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            return str(err)
        return None
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{size} bytes where its checksum file says {record.get('bytes')}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != record.get("sha256"):
        return "its sha256 differs from its checksum file"
    return None


def move_aside(path: Path) -> Path:
    """Rename a bad checkpoint (and its sidecar) to NAME.bad-TIMESTAMP; never deletes it."""
    target = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, target)
    if checksum_path(path).is_file():
        os.replace(checksum_path(path), checksum_path(target))
    return target


def find_good_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest good checkpoint of run_dir (last.pt, then previous/ newest first); every bad
    one on the way is moved aside, with one warning naming both files. None when there is none;
    CheckpointError (one line) when every one was bad."""
    directory = checkpoint_dir(run_dir)
    previous = directory / PREVIOUS_DIR
    candidates = [directory / "last.pt"]
    candidates += sorted(previous.glob("*.pt"), reverse=True) if previous.is_dir() else []
    bad = []
    for candidate in (path for path in candidates if path.is_file()):
        reason = check_integrity(candidate)
        if reason is None:
            if bad:
                first, moved, why = bad[0]
                logger.warning(
                    "checkpoint %s failed its check (%s): moved aside to %s; resuming from %s",
                    first,
                    why,
                    moved,
                    candidate,
                )
            return candidate
        bad.append((candidate, move_aside(candidate), reason))
    if bad:
        raise CheckpointError(
            f"no good checkpoint in {directory}: {len(bad)} failed their check and were moved "
            f"aside ({bad[0][0].name}: {bad[0][2]}); delete train.run_dir's checkpoints/ to "
            "start over, or pass --resume PATH"
        )
    return None


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """torch.load(path, weights_only=True) on CPU; any failure is one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{what} {path} does not exist: check the path (checkpoints live in "
            "RUN_DIR/checkpoints/)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        hint = next(
            (line for line in reason if "Unsupported global" in line or "GLOBAL" in line),
            reason[0] if reason else "",
        )
        raise CheckpointError(
            f"refusing {what} {path}: it needs more than tensors and plain containers to load "
            f"(weights_only=True: {hint.strip()}); re-save its state_dict with "
            "torch.save(model.state_dict(), PATH)"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        struct.error,
    ) as err:  # struct: a few junk bytes
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read {what} {path}: {first}") from None


def to_cpu(value: Any) -> Any:
    """`value` with every tensor in it moved to the CPU (dicts, lists and tuples walked), so a
    checkpoint written on a GPU loads with a plain torch.load on a machine without one."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "algorithm": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of capture_rng_state (CUDA states only when the device count matches)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def load_training_checkpoint(path: str | Path, fix: str) -> dict[str, Any]:
    """A checkpoint pipeline.train wrote (this format, with a model); one CheckpointError line
    ending in `fix` when it is anything else."""
    data = load_checkpoint(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or "model" not in data:
        raise CheckpointError(
            f"{path} is not a pipeline.train checkpoint (format {FORMAT_VERSION}): {fix}"
        )
    return data
