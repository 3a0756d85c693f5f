"""Model: the configured training step on synthetic data on the device, alone and under DDP.

    model = build_doctor_model(cfg, num_classes, device)
    measured = measure_step(cfg, dist, model, num_classes, budget)      # every rank, alone
    measured |= measure_ddp_step(cfg, dist, model, num_classes, steps)  # a collective
    checks, summary = summarize_model(cfg, per_rank, per_rank_batch)    # rank 0

The step is the trainer's own (`pipeline.train.step.OptimizerStep`: autocast, GradScaler for
fp16, gradient accumulation, clipping, the optimizer and schedule the config names) on a
uint8 batch already on the device, in the configured precision, memory format and
torch.compile setting. Timed alone it is the compute ceiling the loader and the network must
feed; timed again inside DDP (every rank at once, the gradient all-reduce overlapped with the
backward pass as in training) it shows what the all-reduce costs on top. Peak memory is the
device allocator's high-water mark on CUDA and the process's peak RSS on CPU.
"""

from __future__ import annotations

import gc
import itertools
import resource
import time
from typing import Any

import torch
from torch import nn

from pipeline.config import Config
from pipeline.data.base import synthetic_batch
from pipeline.data.transforms import resolution_schedule
from pipeline.distributed import DistInfo, synchronize
from pipeline.doctor.report import Check
from pipeline.models import check_input_sizes, create_model, set_train_mode
from pipeline.optim import LearningRateSchedule
from pipeline.precision import build_precision, configure_device
from pipeline.train.step import OptimizerStep, build_model_views, build_optimizer_step

GB = 1e9


def build_doctor_model(cfg: Config, num_classes: int, device: torch.device) -> nn.Module:
    """The configured model on the device, fresh weights (init_from / finetune are not read),
    after the trainer's own check of the crops against the architecture."""
    check_input_sizes(cfg)
    return create_model(cfg, num_classes, device, load_initial_weights=False)


def count_gradient_elements(model: nn.Module) -> int:
    """Elements DDP all-reduces per step: every trainable parameter (fp32 under autocast too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_step(cfg: Config, dist: DistInfo, model: nn.Module, *, ddp: bool) -> OptimizerStep:
    """The trainer's optimizer step around `model` (inside DDP when `ddp`), from the one
    factory; only the schedule's length is the doctor's own."""
    views = build_model_views(cfg, dist, model, ddp=ddp)
    precision = build_precision(cfg.train.precision, dist.torch_device)
    schedule = LearningRateSchedule(cfg, 1000, 1000 * cfg.train.epochs)
    return build_optimizer_step(cfg, dist, views, precision, schedule=schedule)


def doctor_batch(
    cfg: Config, batch_size: int, num_classes: int, device: torch.device, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic batch at `size` (data.train_crop unless given), channels_last when the
    config says so."""
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return synthetic_batch(
        batch_size, size or cfg.data.train_crop, num_classes, device, memory_format
    )


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """The device allocator's peak (CUDA), else this process's peak resident set (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: kB


def run_steps(
    take_step: OptimizerStep, batch, device: torch.device, *, steps: int, seconds: float | None
) -> tuple[int, float]:
    """Optimizer steps from `batch`, `steps` of them, or until `seconds` pass (checked every few
    steps: a check syncs the GPU); (steps taken, seconds)."""
    batches = itertools.repeat(batch)
    chunk = 1 if device.type == "cpu" or seconds is None else 5
    synchronize(device)
    started = time.perf_counter()
    taken = 0
    while taken < steps:
        for _ in range(min(chunk, steps - taken)):
            take_step(batches, taken)
            taken += 1
        if seconds is not None:
            synchronize(device)
            if time.perf_counter() - started >= seconds:
                break
    synchronize(device)
    return taken, time.perf_counter() - started


def describe_failure(err: BaseException, cfg: Config, per_rank_batch: int) -> str:
    """One line for a step that failed: out of memory, torch.compile, or anything else."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return (
            f"out of memory at {per_rank_batch} images per rank: lower data.global_batch_size or "
            "raise optim.grad_accum_steps"
        )
    if cfg.train.compile and "dynamo" in type(err).__module__ + text.lower():
        return f"torch.compile failed ({type(err).__name__}: {text}): try train.compile=false"
    return f"{type(err).__name__}: {text}"


def measure_step(
    cfg: Config, dist: DistInfo, model: nn.Module, num_classes: int, per_rank_batch: int, budget
) -> dict[str, Any]:
    """Images/s of this rank's step alone (no DDP), and the peak memory it took."""
    device = dist.torch_device
    configure_device(device)  # cuDNN autotuning on CUDA, as the trainer does (in the warm-up)
    result: dict[str, Any] = {"rank": dist.rank}
    # synchronized BatchNorm all-reduces in every forward: then every rank takes the same number
    # of steps, not as many as fit in the time
    seconds = None if cfg.model.sync_bn and dist.is_distributed else budget.model_seconds
    try:
        set_train_mode(model)
        reset_peak_memory(device)
        take_step = build_step(cfg, dist, model, ddp=False)
        batch = doctor_batch(cfg, per_rank_batch, num_classes, device)
        run_steps(take_step, batch, device, steps=budget.model_warmup, seconds=None)
        steps = (
            budget.model_max_steps if seconds is not None else max(3, budget.model_max_steps // 10)
        )
        taken, seconds = run_steps(take_step, batch, device, steps=steps, seconds=seconds)
        images = taken * per_rank_batch * cfg.optim.grad_accum_steps
        result |= {
            "images_per_s": images / seconds,
            "steps": taken,
            "step_s": seconds / taken,
            "peak_memory_gb": round(peak_memory_gb(device), 3),
        }
        if device.type == "cuda":
            result["device_memory_gb"] = round(
                torch.cuda.get_device_properties(device).total_memory / GB, 1
            )
        result["by_size"] = measure_ramp_sizes(
            cfg, take_step, per_rank_batch, num_classes, device, steps, seconds, budget
        )
    except Exception as err:  # noqa: BLE001 - reported as the check's one line
        result["error"] = describe_failure(err, cfg, per_rank_batch)
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def measure_ramp_sizes(
    cfg: Config, take_step, per_rank_batch: int, num_classes: int, device, steps, seconds, budget
) -> dict[int, float]:
    """{size: images/s} for the resolution schedule's sizes below data.train_crop (empty without
    one); each size gets a share of the step budget after one warm-up step of its own."""
    sizes = [s for s in resolution_schedule(cfg.data, cfg.train.epochs) if s != cfg.data.train_crop]
    share = None if seconds is None else budget.model_seconds / max(1, len(sizes))
    rates = {}
    for size in sizes:
        batch = doctor_batch(cfg, per_rank_batch, num_classes, device, size)
        run_steps(take_step, batch, device, steps=1, seconds=None)
        taken, elapsed = run_steps(take_step, batch, device, steps=steps, seconds=share)
        rates[size] = taken * per_rank_batch * cfg.optim.grad_accum_steps / elapsed
    return rates


def ramp_check(cfg: Config, main: dict[str, Any]) -> Check | None:
    """The step's images/s at each size of the resolution schedule, and the run's mean."""
    schedule = resolution_schedule(cfg.data, cfg.train.epochs)
    if len(schedule) < 2:
        return None
    rates = {**main["by_size"], cfg.data.train_crop: main["images_per_s"]}
    # an epoch holds the same images at any size: the run's mean rate weights by epoch time
    seconds = sum(epochs / rates[size] for size, epochs in schedule.items())
    mean = sum(schedule.values()) / seconds
    parts = ", ".join(
        f"{size} px {rates[size]:.0f} images/s ({epochs} epochs)"
        for size, epochs in schedule.items()
    )
    return Check(
        "model",
        "step by size",
        "ok",
        f"{parts}; {mean:.0f} images/s over the run",
        {"images_per_s_by_size": {str(k): round(v, 1) for k, v in rates.items()}, "mean": mean},
    )


def ddp_steps_for(per_rank: list[dict[str, Any]], budget) -> int:
    """Timed DDP steps: about the budget's seconds at the slowest rank's pace (the same number on
    every rank, computed from the same gathered results)."""
    slowest = max(r["step_s"] for r in per_rank)
    return int(min(budget.model_max_steps, max(2, budget.model_seconds / slowest)))


def measure_ddp_step(
    cfg: Config,
    dist: DistInfo,
    model: nn.Module,
    num_classes: int,
    per_rank_batch: int,
    steps: int,
    budget,
) -> dict[str, Any]:
    """Images/s of the step inside DDP, every rank at once: a fixed step count (a collective)."""
    device = dist.torch_device
    try:
        take_step = build_step(cfg, dist, model, ddp=True)
        batch = doctor_batch(cfg, per_rank_batch, num_classes, device)
        run_steps(take_step, batch, device, steps=budget.model_warmup, seconds=None)
        taken, seconds = run_steps(take_step, batch, device, steps=steps, seconds=None)
    except Exception as err:  # noqa: BLE001 - the check's one line (the others time out)
        return {"ddp_error": describe_failure(err, cfg, per_rank_batch)}
    finally:
        gc.collect()
    images = taken * per_rank_batch * cfg.optim.grad_accum_steps
    return {"ddp_images_per_s": images / seconds, "ddp_steps": taken}


def summarize_model(
    cfg: Config, per_rank: list[dict[str, Any]], per_rank_batch: int, precision: str | None
) -> tuple[list[Check], dict[str, Any]]:
    """Rank 0's checks and the verdict's numbers (the slowest rank bounds a DDP run)."""
    failed = [(rank, r["error"]) for rank, r in enumerate(per_rank) if "error" in r]
    if failed:
        rank, error = failed[0]
        return [Check("model", "step", "fail", f"rank {rank}: {error}", {"rank": rank})], {}
    rates = [r["images_per_s"] for r in per_rank]
    slowest = min(range(len(rates)), key=rates.__getitem__)
    main = per_rank[slowest]
    checks = [step_check(per_rank, per_rank_batch, slowest)]
    summary: dict[str, Any] = {
        "images_per_s": rates[slowest],
        "peak_memory_gb": main["peak_memory_gb"],
        "device_memory_gb": main.get("device_memory_gb"),
        "precision": precision,
    }
    ramp = ramp_check(cfg, main)
    if ramp is not None:
        checks.append(ramp)
        summary["images_per_s_over_the_ramp"] = ramp.values["mean"]
    ddp = ddp_check(per_rank, rates[slowest])
    if ddp is not None:
        checks.append(ddp)
        if ddp.status != "fail":
            summary["ddp_images_per_s"] = min(r["ddp_images_per_s"] for r in per_rank)
    return checks, summary


def step_check(per_rank: list[dict[str, Any]], per_rank_batch: int, slowest: int) -> Check:
    """The step alone: the slowest rank's images/s and step time, and its peak memory."""
    rates = [r["images_per_s"] for r in per_rank]
    main = per_rank[slowest]
    kind = "GPU memory" if "device_memory_gb" in main else "RSS"
    memory = f"peak {kind} {main['peak_memory_gb']:.2f} GB"
    if "device_memory_gb" in main:
        memory += f" of {main['device_memory_gb']:.0f} GB"
    values = {
        "images_per_s_per_rank": [round(rate, 1) for rate in rates],
        "slowest_rank": slowest,
        "per_rank_batch": per_rank_batch,
        "steps": main["steps"],
        "peak_memory_gb": main["peak_memory_gb"],
        "device_memory_gb": main.get("device_memory_gb"),
    }
    return Check(
        "model",
        "step",
        "ok",
        f"{rates[slowest]:.0f} images/s per rank (slowest rank {slowest}, "
        f"{main['step_s'] * 1000:.0f} ms per step), {memory}",
        values,
    )


def ddp_check(per_rank: list[dict[str, Any]], alone_rate: float) -> Check | None:
    """The step inside DDP against the step alone (None when DDP was not measured)."""
    ddp_errors = [(rank, r["ddp_error"]) for rank, r in enumerate(per_rank) if "ddp_error" in r]
    if ddp_errors:
        rank, error = ddp_errors[0]
        return Check("model", "ddp step", "fail", f"rank {rank}: {error}", {"rank": rank})
    if not all("ddp_images_per_s" in r for r in per_rank):
        return None
    ddp_rates = [r["ddp_images_per_s"] for r in per_rank]
    ddp_rate = min(ddp_rates)
    fraction = ddp_rate / alone_rate
    return Check(
        "model",
        "ddp step",
        "ok" if fraction > 0.8 else "warn",
        f"{ddp_rate:.0f} images/s per rank with the gradient all-reduce "
        f"({100 * fraction:.0f}% of the step alone)",
        {"images_per_s_per_rank": [round(r, 1) for r in ddp_rates]},
    )
