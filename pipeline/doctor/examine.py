"""Every section of the doctor, in order, on every rank: `examine` and the named steps it calls.

    checks, verdict, world = examine(cfg, dist, budget, facts, started)   # pipeline/doctor/cli.py

`survey_run` sizes the run once (every rank's facts, the world, classes, the per-rank batch) and
`build_step_model` builds the model every later section is sized by. Then one step per section:
`check_environment`, `check_collectives`, `check_data`, `check_model`, each returning a `Section`
(its checks, its note in the table, the numbers the verdict weighs), and `check_verdict`. Every
rank runs every step, since the measurements are collectives or gathered; the checks and the
verdict are rank 0's to print (cli.publish writes the report).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from core.remote import scrub
from pipeline.config import Config
from pipeline.data import resolve_classes
from pipeline.data.base import per_rank_batch_size
from pipeline.distributed import DistInfo
from pipeline.doctor import collectives, data, environment, model, probes
from pipeline.doctor.budget import Budget
from pipeline.doctor.report import Check
from pipeline.doctor.verdict import Inputs, decide
from pipeline.errors import UserError, first_line

logger = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 1000  # when the train data cannot be read: ImageNet's


@dataclasses.dataclass(frozen=True)
class Run:
    """What every section needs to know of the run, the same on every rank."""

    facts: list[dict[str, Any]]  # every rank's environment facts, in rank order
    world: dict[str, Any]  # doctor.json's "world", before the notes and section times
    num_classes: int  # the train data's classes, at least model.num_classes
    per_rank_batch: int | None  # None: the global batch does not split (the data/batch check)
    checks: list[Check]  # what sizing the run found wrong: data/batch

    @property
    def ranks_per_node(self) -> int:
        return self.world["ranks_per_node"]

    @property
    def precision(self) -> str | None:
        return self.facts[0].get("precision")


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """The model as every rank built it: what the collectives and the disk check are sized by."""

    gradient_numel: int | None  # trainable elements; None when a rank could not build the model
    parameters: int | None  # every element
    gradient_shapes: tuple[tuple[int, ...], ...]  # the trainable parameters', for the hooks
    failure: Check | None  # model/build, naming the first rank that failed


@dataclasses.dataclass(frozen=True)
class Section:
    """One section's result: its checks, its note beside its name in the table, and its numbers."""

    checks: list[Check]
    note: str = ""  # "" for none
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the verdict weighs


def examine(
    cfg: Config, dist: DistInfo, budget: Budget, facts: dict[str, Any], started: float
) -> tuple[list[Check], dict[str, Any], dict[str, Any]]:
    """Every section, in order, on every rank; the checks and the verdict are rank 0's.
    `started` is when the doctor started (the environment section counts from there)."""
    clock = SectionClock(started)
    run = survey_run(cfg, dist, facts)
    step_model, size = build_step_model(cfg, dist, run.num_classes)
    sections = {"environment": check_environment(cfg, run, size)}
    clock.lap("environment")
    sections["collectives"] = check_collectives(dist, budget, run, size)
    clock.lap("collectives")
    sections["data"] = check_data(cfg, dist, budget, run)
    clock.lap("data")
    sections["model"] = check_model(cfg, dist, budget, run, step_model, size)
    del step_model  # the device memory goes back before the verdict
    sections["data"].checks.append(
        data.check_feeding_cores(
            sections["data"].numbers["decode"], sections["model"].numbers.get("images_per_s")
        )
    )
    clock.lap("model")
    verdict, verdict_checks = check_verdict(cfg, run, size, sections)
    checks = [check for section in sections.values() for check in section.checks]
    notes = {name: section.note for name, section in sections.items() if section.note}
    world = run.world | {"notes": notes, "section_seconds": clock.seconds}
    return checks + verdict_checks, verdict, world


def survey_run(cfg: Config, dist: DistInfo, facts: dict[str, Any]) -> Run:
    """Every rank's facts, the world they form, and the sizes every section needs: the classes
    and the per-rank batch."""
    all_facts = gather(facts | probes.probe_device(cfg, dist), dist)
    ranks_per_node = max(1, dist.local_world_size)
    world = {
        "world_size": dist.world_size,
        "ranks_per_node": ranks_per_node,
        "nodes": len(collectives.node_groups(dist.world_size, ranks_per_node)),
        "backend": dist.backend,
        "device": dist.device.split(":")[0],
        "hosts": [f["host"] for f in all_facts],
        "devices": [f["device"] for f in all_facts],
    }
    try:
        num_classes = len(resolve_classes(cfg))
    except UserError:
        num_classes = cfg.model.num_classes or DEFAULT_NUM_CLASSES  # the data check says why
    checks = []
    try:
        per_rank_batch: int | None = per_rank_batch_size(cfg, dist)
    except UserError as err:
        per_rank_batch = None
        checks.append(Check("data", "batch", "fail", first_line(err)))
    return Run(all_facts, world, max(num_classes, cfg.model.num_classes), per_rank_batch, checks)


def build_step_model(
    cfg: Config, dist: DistInfo, num_classes: int
) -> tuple[nn.Module | None, ModelSize]:
    """The model on the training device (model.sync_bn picks its BatchNorm by device), and its
    size as rank 0 built it. Every rank builds it before any collective is sized by it."""
    built: dict[str, Any] = {}
    try:
        step_model = model.build_doctor_model(cfg, num_classes, dist.torch_device)
        built["gradient_numel"] = model.count_gradient_elements(step_model)
        built["parameters"] = sum(p.numel() for p in step_model.parameters())
        built["gradient_shapes"] = [
            list(p.shape) for p in step_model.parameters() if p.requires_grad
        ]
    except (UserError, torch.cuda.OutOfMemoryError) as err:
        step_model = None
        built["error"] = first_line(err)
    everyone = gather(built, dist)
    failed = [(rank, b["error"]) for rank, b in enumerate(everyone) if "error" in b]
    if failed:
        rank, error = failed[0]
        failure = Check("model", "build", "fail", f"rank {rank}: {error}")
        return None, ModelSize(None, None, (), failure)
    main = everyone[0]
    shapes = tuple(tuple(shape) for shape in main["gradient_shapes"])
    return step_model, ModelSize(main["gradient_numel"], main["parameters"], shapes, None)


def check_environment(cfg: Config, run: Run, size: ModelSize) -> Section:
    """The environment's checks, then what sizing the run found wrong (data/batch, model/build):
    the failures that stop the later sections come first in the report."""
    checks = environment.summarize_environment(
        cfg,
        run.facts,
        num_parameters=size.parameters,
        per_rank_batch=run.per_rank_batch,
        local_world_size=run.ranks_per_node,
    )
    return Section(checks + run.checks + ([size.failure] if size.failure else []))


def check_collectives(dist: DistInfo, budget: Budget, run: Run, size: ModelSize) -> Section:
    """The all-reduce at the model's gradient size on every group; numbers: the world
    all-reduce's seconds (slowest rank) and whether it crossed nodes."""
    if size.gradient_numel is None:
        skipped = Check("collectives", "-", "skip", "not measured: the model did not build")
        return Section([skipped], numbers={"all_reduce_s": None, "inter_node": False})
    timings = gather(collectives.measure_collectives(dist, size.gradient_numel, budget), dist)
    checks = collectives.summarize_collectives(timings, dist, run.world["hosts"])
    note = (
        f"{size.gradient_numel * 4 / 1e6:.1f} MB of fp32 gradients, "
        f"{size.gradient_numel / 1e6:.2f} M trainable parameters"
    )
    numbers: dict[str, Any] = {"all_reduce_s": None, "inter_node": False}
    if "world" in timings[0] and not any(t.get("error") for t in timings):
        numbers["all_reduce_s"] = max(t["world"]["median_s"] for t in timings)
        numbers["inter_node"] = "inter_node" in timings[0]
    return Section(checks, note, numbers)


def check_data(cfg: Config, dist: DistInfo, budget: Budget, run: Run) -> Section:
    """Cold reads and every loader's decode rate; numbers: data.summarize_data's summary."""
    measured = gather(data.measure_data(cfg, dist, budget), dist)
    checks, summary = data.summarize_data(cfg, measured, run.ranks_per_node)
    train_dir = str(Path(cfg.data.train_dir).expanduser())
    others = [f"{name} at {path}" for name, path in summary["layouts"].items() if path != train_dir]
    also = f", also {', '.join(others)}" if len(summary["layouts"]) > 1 else ""
    shown = scrub(cfg.data.train_dir) or "(not set)"  # a URL without credentials or tokens
    return Section(checks, f"train_dir {shown}{also}", summary)


def check_model(
    cfg: Config,
    dist: DistInfo,
    budget: Budget,
    run: Run,
    step_model: nn.Module | None,
    size: ModelSize,
) -> Section:
    """The optimizer step alone and inside DDP; numbers: model.summarize_model's summary. Not
    measured (no checks) when the model did not build or the batch does not split."""
    if step_model is None or run.per_rank_batch is None:
        return Section([])
    batch = run.per_rank_batch
    steps = gather(model.measure_step(cfg, dist, step_model, run.num_classes, batch, budget), dist)
    if dist.is_distributed and not any("error" in s for s in steps):
        repeats = model.ddp_steps_for(steps, budget)
        ddp = model.measure_ddp_step(cfg, dist, step_model, run.num_classes, batch, repeats, budget)
        for entry, extra in zip(steps, gather(ddp, dist)):
            entry |= extra
    checks, summary = model.summarize_model(cfg, steps, batch, run.precision)
    note = (
        f"{cfg.model.arch} ({size.parameters / 1e6:.2f} M parameters), {batch} images per rank, "
        f"{run.precision}, channels_last {'on' if cfg.train.channels_last else 'off'}, compile "
        f"{'on' if cfg.train.compile else 'off'}"
    )
    return Section(checks, note, summary)


def check_verdict(
    cfg: Config, run: Run, size: ModelSize, sections: dict[str, Section]
) -> tuple[dict[str, Any], list[Check]]:
    """The bound and the change that moves it, from the sections' numbers."""
    return decide(cfg, verdict_inputs(cfg, run, size, sections))


def verdict_inputs(cfg: Config, run: Run, size: ModelSize, sections: dict[str, Section]) -> Inputs:
    """The numbers the verdict weighs, taken from each section's."""
    reads = sections["data"].numbers.get("read", {})
    decodes = sections["data"].numbers["decode"]
    configured = next((label for label, e in decodes.items() if e["configured"]), None)
    compute = sections["model"].numbers
    world_size = run.world["world_size"]
    return Inputs(
        world_size=world_size,
        ranks_per_node=run.ranks_per_node,
        images_per_step=cfg.data.global_batch_size // world_size,
        on_gpu=run.world["device"].startswith("cuda"),
        dali_importable=run.facts[0]["dali"]["importable"],
        cores_per_rank=run.facts[0]["cpu_count"] / run.ranks_per_node,
        compute=compute.get("images_per_s"),
        ddp=compute.get("ddp_images_per_s"),
        decode=decodes[configured]["images_per_s"] if configured else None,
        decode_alternatives=decodes,
        configured_decode_label=configured,
        node_read_bytes_per_s=reads.get("node_bytes_per_s"),
        bytes_per_image=reads.get("bytes_per_image"),
        layouts=sections["data"].numbers["layouts"],
        all_reduce_s=sections["collectives"].numbers["all_reduce_s"],
        inter_node=sections["collectives"].numbers["inter_node"],
        precision=run.precision,
        peak_memory_gb=compute.get("peak_memory_gb"),
        device_memory_gb=compute.get("device_memory_gb"),
        gradient_shapes=size.gradient_shapes,
    )


class SectionClock:
    """Seconds each section took on this rank, logged as it goes (rank 0 logs at INFO)."""

    def __init__(self, started: float) -> None:
        self.seconds: dict[str, float] = {}
        self.last = started

    def lap(self, section: str) -> None:
        now = time.perf_counter()
        self.seconds[section] = round(now - self.last, 2)
        self.last = now
        logger.info("%s: %.1f s", section, self.seconds[section])


def gather(value: Any, dist: DistInfo) -> list[Any]:
    """Every rank's `value` in rank order (pickled; small dicts only)."""
    if not dist.is_distributed:
        return [value]
    gathered: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered
