"""Atomic checkpoints: written by global rank 0 only, read with torch.load(weights_only=True).

    run_dir/checkpoints/last.pt       after every epoch, at max_steps and on a stop signal
    run_dir/checkpoints/best.pt       the checkpoint with the highest val top-1 so far
    run_dir/checkpoints/epoch_NNN.pt  every train.save_every epochs

A checkpoint holds only tensors and plain containers (dict/list/tuple/str/int/float/bool/None),
so `weights_only=True` loads it and loading never runs pickled code. Writes go to a temporary
file in the same directory, are fsynced, then `os.replace`d over the target: a job killed while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.fileio import atomic_output, fsync_directory, remove_stale_temps
from pipeline.distributed import DistInfo, all_gather_ints, broadcast_object
from pipeline.errors import CheckpointError

FORMAT_VERSION = 1


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
    return remove_stale_temps(directory, ".tmp", owned=lambda output: output.suffix == ".pt")


def atomic_save(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as handle:
        torch.save(state, handle)
    fsync_directory(path.parent)
    return path


def atomic_copy(source: Path, target: Path) -> Path:
    """Copy a finished checkpoint (best/epoch files) with the same temp + rename discipline."""
    with atomic_output(target) as handle, open(source, "rb") as src:
        shutil.copyfileobj(src, handle, length=16 << 20)
    fsync_directory(target.parent)
    return target


def save_checkpoints(
    state: dict[str, Any], run_dir: str | Path, *, is_best: bool, epoch_file: bool
) -> Path:
    """Write last.pt, and copy it to best.pt and/or epoch_NNN.pt (epoch = state["epoch"])."""
    directory = checkpoint_dir(run_dir)
    last = atomic_save(state, directory / "last.pt")
    if is_best:
        atomic_copy(last, directory / "best.pt")
    if epoch_file:
        atomic_copy(last, directory / f"epoch_{state['epoch']:03d}.pt")
    return last


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
