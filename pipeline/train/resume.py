"""Resuming: the training state a checkpoint carries, what must match to load it, and how the
rest of an interrupted epoch is planned for another world size, global batch or accumulation.

    data = read_training_checkpoint(path, classes.wnids)     # format and class list checked
    load_model_and_optimizer(model, optimizer, data, cfg, path)
    state = TrainState.from_checkpoint(data)
    remainder = plan_interrupted_epoch(state, data, cfg, dist, batches_per_epoch, loader.plan)
    if remainder is not None:                                 # the plan changed mid-epoch
        loader.set_remainder(remainder)

The checkpoint records the optimizer step, the micro-batch inside the epoch and `data_plan`:
every reading plan the epoch was read under (backend, world size, per-rank batch,
accumulation, loader workers, shuffle buffer) with the micro-batches each rank consumed in it.

Under the same plan the loader resumes at the exact batch, and the run is bit-identical to an
uninterrupted one: the learning rate and dropout masks are functions of the step, every sample's
pixels of (seed, epoch, sample). Under another plan the samples the epoch consumed are replayed
from those records alone (pipeline/data/remainder.py: a pure function of the plans and the
batches consumed, webdataset's shuffle buffer included), and the rest of the epoch is every
sample of the epoch's reference set (the set its first plan reads; the few that plan drops stay
dropped) not yet consumed, each exactly once, spread evenly over the new ranks in the new batch
size: whole steps, then one last step whose micro-batches share the rest (a rank's last
micro-batches may be one sample shorter than another's). It ends where this run's epoch ends, so
the next epoch is the one a run started at this size reads. What is not bit-exact after such a
change: the order and batch composition of the rest of the epoch (each sample's pixels still
are), and the steps' count and learning rates in it. Only when fewer samples remain on a rank
than micro-batches in a step are they left out, with a warning.
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
from pipeline.config import Config, config_to_dict, replace
from pipeline.data import ClassList, Loader, build_loader
from pipeline.data.plans import IndexPlan
from pipeline.data.remainder import EpochRemainder, PlanLink, ReadPlan, plan_remainder
from pipeline.distributed import DistInfo
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
    fix = "to start from plain weights use model.init_from=PATH"
    data = ckpt.load_training_checkpoint(path, fix)
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


def link_of_config(config: dict[str, Any], world_size: int, batches: int = 0) -> PlanLink:
    """The reading plan a recorded config (config_to_dict) gives on `world_size` ranks."""
    data, accum = config["data"], max(1, int(config["optim"]["grad_accum_steps"]))
    return PlanLink(
        backend=data["backend"],
        world_size=world_size,
        batch_size=int(data["global_batch_size"]) // (world_size * accum),
        accum=accum,
        num_workers=max(1, int(data["num_workers"])),
        shuffle_buffer=int(data["shuffle_buffer"]),
        batches=batches,
    )


def recorded_links(data: dict[str, Any], cfg: Config, world_size: int) -> list[PlanLink]:
    """The plans the checkpoint's epoch was read under: its `data_plan`, or (a checkpoint from
    before it existed) the one plan of its config (keys it lacks: this run's) and world size."""
    record = data.get("data_plan") or {}
    if record.get("epoch") == data.get("epoch") and record.get("links"):
        return [PlanLink.from_dict(values) for values in record["links"]]
    current, old = config_to_dict(cfg), data.get("config") or {}
    merged = {section: {**current[section], **(old.get(section) or {})} for section in current}
    old_world = int(data.get("world_size") or world_size)
    return [link_of_config(merged, old_world, int(data.get("batch_in_epoch") or 0))]


def check_same_keys(link: PlanLink, plan: ReadPlan) -> None:
    """Class folders number samples by file, shards by position in the split: a remainder needs
    the epoch's first plan and this run to read the same kind."""
    folders = isinstance(plan, IndexPlan)
    if (link.backend == "folder" and not folders) or (link.backend == "wds" and folders):
        read = "class folders" if link.backend == "folder" else "shards"
        raise CheckpointError(
            f"the checkpoint's epoch was read from {read} and this run reads "
            f"{'class folders' if folders else 'shards'} under another plan, so the samples it "
            "has not read cannot be named: finish the epoch with the checkpoint's "
            "data.backend and data directories, or start a new train.run_dir"
        )


def plan_interrupted_epoch(
    state: TrainState,
    data: dict[str, Any],
    cfg: Config,
    dist: DistInfo,
    batches_per_epoch: int,
    plan: ReadPlan,
) -> EpochRemainder | None:
    """The rest of the checkpoint's interrupted epoch for this run's plan, exactly once
    (pipeline/data/remainder.py), when the plan differs from the one it was read under (world
    size, per-rank batch, accumulation); None when it is the same plan (the loader resumes at
    the exact batch, bit-exact). Sets state.batch_in_epoch to the remainder's position: its
    batches end where this run's epoch ends."""
    links = recorded_links(data, cfg, dist.world_size)
    new = link_of_config(config_to_dict(cfg), dist.world_size)
    last = links[-1]
    if len(links) == 1 and last.same_layout(new):
        return None
    check_same_keys(links[0], plan)
    continued = len(links) > 1 and last.same_layout(new)  # the same remainder, interrupted again
    history = links[:-1] if continued else links
    link = dataclasses.replace(new, planned=last.planned) if continued else new
    remainder = plan_remainder(plan, history, state.epoch, link, dist.rank, batches_per_epoch)
    state.batch_in_epoch = remainder.first_batch + (last.batches if continued else 0)
    logger.warning(
        "the checkpoint stopped epoch %d under %s; this run has %d ranks, %d per rank, "
        "accumulation %d: the epoch's %d samples not yet read are spread over them "
        "(%d micro-batches per rank), and later epochs follow this run's plan",
        state.epoch,
        ", then ".join(
            f"{old.world_size} ranks x {old.batch_size} ({old.batches} batches)" for old in links
        ),
        new.world_size,
        new.batch_size,
        new.accum,
        remainder.remaining,
        remainder.num_batches,
    )
    if remainder.left_out:
        logger.warning(
            "%d samples of epoch %d are too few to give every rank a sample in every "
            "micro-batch of a step: they are not read",
            remainder.left_out,
            state.epoch,
        )
    return remainder


def build_resume_loader(
    state: TrainState,
    data: dict[str, Any],
    cfg: Config,
    dist: DistInfo,
    train_loader: Loader,
    classes: ClassList,
    batches_per_epoch: int,
) -> Loader | None:
    """A loader for the rest of the interrupted epoch: under another plan, the samples not yet
    read, exactly once (`plan_interrupted_epoch`); under the same plan with another wds worker
    count, one with the checkpoint's count (bit-exact); None when the train loader resumes."""
    args = (state, data, cfg, dist, batches_per_epoch, train_loader.plan)
    remainder = plan_interrupted_epoch(*args)
    if remainder is None:
        workers = wds_workers_for_interrupted_epoch(data, cfg, dist.world_size, state.epoch)
        if workers is None:
            return None
        cfg = replace(cfg, "data", num_workers=workers)
    loader = build_loader(cfg, "train", dist, classes)
    loader.set_remainder(remainder)
    return loader


def data_plan_record(state: TrainState, loader: Loader, cfg: Config) -> dict:
    """The checkpoint's `data_plan`: every plan the current epoch was read under, with the
    batches each rank consumed in it (what `plan_interrupted_epoch` replays)."""
    remainder = loader.remainder
    if remainder is not None and remainder.epoch == state.epoch:
        done = state.batch_in_epoch - remainder.first_batch
        links = [*remainder.history, dataclasses.replace(remainder.link, batches=done)]
    else:
        world_size = loader.dist.world_size
        link = link_of_config(config_to_dict(cfg), world_size, state.batch_in_epoch)
        workers = getattr(loader.plan, "num_workers", link.num_workers)  # a finishing wds loader
        links = [dataclasses.replace(link, num_workers=workers)]
    return {"epoch": state.epoch, "links": [link.as_dict() for link in links]}


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
