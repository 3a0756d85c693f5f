"""Resuming: the training state a checkpoint carries, what must match to load it, and how a
mid-epoch resume point is re-planned for another world size, global batch or accumulation.

    data = read_training_checkpoint(path, classes.wnids)     # format and class list checked
    load_model_and_optimizer(model, optimizer, data, cfg, path)
    state = TrainState.from_checkpoint(data)
    state.epoch, state.batch_in_epoch = replan_resume_point(state, data, cfg, world, ...)

The checkpoint records the optimizer step and the micro-batch inside the epoch; the learning
rate and dropout masks are functions of the step, so a resumed run takes exactly the steps an
uninterrupted one would have taken and ends with the same step count.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline.config import Config, config_to_dict
from pipeline.errors import CheckpointError
from pipeline.optim import load_optimizer_state

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    """Where training is; everything here goes into the checkpoint as plain values."""

    epoch: int = 0  # current epoch (epochs completed when batch_in_epoch == 0)
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # loader (micro-)batches consumed in `epoch`
    best_top1: float = -1.0
    evals_without_improvement: int = 0
    stopped_early: bool = False  # early stopping fired: a rerun only evaluates
    finished: bool = False  # all steps done (a rerun with more epochs or max_steps continues)
    wandb_run_id: str = ""
    mlflow_run_id: str = ""
    last_eval: dict[str, float] = dataclasses.field(default_factory=dict)

    RESUMED = (  # the fields a checkpoint restores; `finished` is recomputed on every start
        "epoch",
        "step",
        "batch_in_epoch",
        "best_top1",
        "evals_without_improvement",
        "stopped_early",
        "wandb_run_id",
        "mlflow_run_id",
    )

    def as_checkpoint(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "last_eval": dict(self.last_eval)}

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any]) -> TrainState:
        # .get: a checkpoint from before a field existed resumes with its default
        defaults = cls()
        state = cls(**{name: data.get(name, getattr(defaults, name)) for name in cls.RESUMED})
        state.last_eval = dict(data.get("last_eval") or {})
        return state

    def copy(self) -> TrainState:
        return dataclasses.replace(self, last_eval=dict(self.last_eval))


def read_training_checkpoint(path: Path, classes: Sequence[str]) -> dict[str, Any]:
    """A checkpoint this trainer wrote, trained on exactly `classes`; CheckpointError otherwise."""
    data = ckpt.load_checkpoint(path)
    if (
        not isinstance(data, dict)
        or data.get("format") != ckpt.FORMAT_VERSION
        or "model" not in data
    ):
        raise CheckpointError(
            f"{path} is not a pipeline.train checkpoint (format {ckpt.FORMAT_VERSION}): "
            "to start from plain weights use model.init_from=PATH"
        )
    if data.get("classes") and list(data["classes"]) != list(classes):
        raise CheckpointError(
            f"{path} was trained on {len(data['classes'])} classes that differ from the data's "
            f"{len(classes)}: use model.finetune=PATH for a new class set"
        )
    return data


def load_model_and_optimizer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: dict[str, Any],
    cfg: Config,
    path: Path,
) -> None:
    """Weights and optimizer state from a checkpoint; a model or optimizer this config builds
    differently (arch, widths, optim.name, parameter groups) is one CheckpointError line."""
    old_config = data.get("config") or {}
    changed = changed_keys(old_config, config_to_dict(cfg))
    model_changes = [c for c in changed if c.startswith("model.")] or ["model settings"]
    try:
        model.load_state_dict(data["model"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path} does not fit the model this config builds "
            f"({', '.join(model_changes)} changed): {first_detail(err)}; resume with the "
            "checkpoint's model settings or use a new train.run_dir (model.init_from/finetune=PATH "
            "to start from its weights)"
        ) from None
    old_name = (old_config.get("optim") or {}).get("name", cfg.optim.name)
    optim_changes = [c for c in changed if c.startswith(("optim.", "model.freeze"))]
    if old_name != cfg.optim.name:
        raise CheckpointError(
            f"{path} holds {old_name} state but optim.name={cfg.optim.name}: resume with "
            f"optim.name={old_name} or start a new train.run_dir"
        )
    try:
        reapplied = load_optimizer_state(optimizer, data["optimizer"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path}'s optimizer state does not fit this run's parameter groups "
            f"({', '.join(optim_changes) or 'optimizer settings'} changed): "
            f"{first_detail(err)}; resume with the checkpoint's settings or start a new "
            "train.run_dir"
        ) from None
    if reapplied:
        logger.warning(
            "optimizer settings from this run's config replace the checkpoint's: %s",
            ", ".join(reapplied),
        )


def replan_resume_point(
    state: TrainState,
    data: dict[str, Any],
    cfg: Config,
    world_size: int,
    accum: int,
    batches_per_epoch: int,
) -> tuple[int, int]:
    """(epoch, batch_in_epoch) to resume at: a mid-epoch point written under another world size,
    global batch or accumulation converted into batches of this run's plan (via the samples the
    epoch had consumed).

    The point is rounded down to a whole optimizer step (a few samples may be seen twice);
    when it lands past the end of this run's epoch, training starts the next epoch."""
    old_config = data.get("config") or {}
    old_global = int(
        (old_config.get("data") or {}).get("global_batch_size") or cfg.data.global_batch_size
    )
    old_accum = int(
        (old_config.get("optim") or {}).get("grad_accum_steps") or cfg.optim.grad_accum_steps
    )
    old_world = data.get("world_size") or world_size
    new_micro = cfg.data.global_batch_size // accum  # samples per micro-batch over all ranks
    old_micro = old_global // max(old_accum, 1)
    batch, epochs = resume_batch(
        state.batch_in_epoch, old_micro, new_micro, accum, batches_per_epoch
    )
    if (batch, epochs) != (state.batch_in_epoch, 0):
        where = (
            f"batch {batch} of epoch {state.epoch}"
            if not epochs
            else f"the start of epoch {state.epoch + 1}"
        )
        logger.warning(
            "resume point re-planned: the checkpoint stopped at batch %d of epoch %d with %s "
            "ranks, global batch %d, accumulation %d; this run has %d ranks, global batch %d, "
            "accumulation %d (%d batches per epoch), so it resumes at %s",
            state.batch_in_epoch,
            state.epoch,
            old_world,
            old_global,
            old_accum,
            world_size,
            cfg.data.global_batch_size,
            accum,
            batches_per_epoch,
            where,
        )
    elif old_world != world_size:
        logger.warning(
            "checkpoint was written by %s ranks, now %d: the rest of epoch %d is re-planned for "
            "the new world",
            old_world,
            world_size,
            state.epoch,
        )
    return state.epoch + epochs, batch


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


def wds_workers_for_interrupted_epoch(
    data: dict[str, Any], cfg: Config, world_size: int, epoch: int
) -> int | None:
    """The loader worker count that finishes an interrupted wds epoch exactly as it began, when
    it differs from data.num_workers (None otherwise).

    The wds order inside an epoch depends on data.num_workers (each worker reads its own
    sub-block). A mid-epoch resume with another worker count finishes that epoch with a loader
    of the checkpoint's count, so the rest of the epoch is exactly the uninterrupted one; later
    epochs use the configured count."""
    old_data = (data.get("config") or {}).get("data") or {}
    old_workers = old_data.get("num_workers")
    same_plan = data.get("world_size") == world_size and old_data.get("backend") == "wds"
    if cfg.data.backend != "wds" or old_workers is None or not same_plan:
        return None
    if max(1, int(old_workers)) == max(1, cfg.data.num_workers):
        return None
    logger.warning(
        "data.num_workers changed from %s to %d in the middle of epoch %d: the wds order within "
        "an epoch depends on it, so epoch %d finishes with %s loader workers and later epochs "
        "use %d",
        old_workers,
        cfg.data.num_workers,
        epoch,
        epoch,
        old_workers,
        cfg.data.num_workers,
    )
    return int(old_workers)


def first_detail(err: BaseException) -> str:
    """The informative line of a load_state_dict error (torch puts a generic header first),
    shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines[1:]), lines[0] if lines else type(err).__name__)
    return detail if len(detail) <= 240 else detail[:237] + "..."


def changed_keys(old: dict, new: dict) -> list[str]:
    """`section.key (old → new)` for every config value that differs, except train.run_dir."""
    changed = []
    for section, values in new.items():
        for key, value in values.items():
            before = (old.get(section) or {}).get(key, value)
            if before != value and (section, key) not in {("train", "run_dir")}:
                changed.append(f"{section}.{key} ({before!r} → {value!r})")
    return changed
