"""Resuming: the training state a checkpoint carries, which checkpoint every rank loads, and how a
resume point is re-planned for another world size, global batch or accumulation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.distributed import DistInfo, all_gather_ints, broadcast_object
from pipeline.errors import CheckpointError


@dataclasses.dataclass
class TrainState:
    """Where training is; everything here goes into the checkpoint as plain values."""

    epoch: int = 0  # current epoch (epochs completed when batch_in_epoch == 0)
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # loader (micro-)batches consumed in `epoch`
    best_top1: float = -1.0
    evals_without_improvement: int = 0
    stopped_early: bool = False  # early stopping fired: a rerun only evaluates
    finished: bool = (
        False  # informational: all steps done (a rerun with more epochs/max_steps continues)
    )
    wandb_run_id: str = ""
    last_eval: dict[str, float] = dataclasses.field(default_factory=dict)


def agree_on_checkpoint(path: Path | None, dist: DistInfo) -> Path | None:
    """Rank 0's `path` on every rank; one clear error on every rank if any rank cannot read it."""
    chosen = broadcast_object(str(path) if path is not None else None, dist)
    if chosen is None:
        return None
    chosen = Path(chosen)
    missing = all_gather_ints(0 if chosen.is_file() else 1, dist)
    if any(missing):
        ranks = [rank for rank, flag in enumerate(missing) if flag]
        raise CheckpointError(
            f"rank 0 loads checkpoint {chosen} but rank(s) {ranks} cannot read it: put train.run_dir "
            "(or the --resume file) on a file system every node shares"
        )
    return chosen


def resume_batch(
    batch_in_epoch: int,
    old_micro_batch: int,
    new_micro_batch: int,
    accum: int,
    batches_per_epoch: int,
) -> tuple[int, int]:
    """(batch to resume at, epochs to advance: 0 or 1) for a resume point of `batch_in_epoch`
    micro-batches of `old_micro_batch` samples (all ranks), replayed in micro-batches of
    `new_micro_batch` with `accum` per optimizer step and `batches_per_epoch` in the epoch."""
    samples = batch_in_epoch * old_micro_batch
    batch = samples // new_micro_batch
    batch -= batch % accum
    # == batches_per_epoch: the epoch's batches are done but its epoch-end eval and saves may not be
    if batch > batches_per_epoch:
        return 0, 1
    return batch, 0


def first_detail(err: BaseException) -> str:
    """The informative line of a load_state_dict error (torch puts a generic header first), shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines[1:]), lines[0] if lines else type(err).__name__)
    return detail if len(detail) <= 240 else detail[:237] + "..."


def changed_keys(old: dict, new: dict) -> list[str]:
    changed = []
    for section, values in new.items():
        for key, value in values.items():
            before = (old.get(section) or {}).get(key, value)
            if before != value and (section, key) not in {("train", "run_dir")}:
                changed.append(f"{section}.{key} ({before!r} → {value!r})")
    return changed
