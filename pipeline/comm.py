"""How DDP all-reduces the gradients (train.comm_hook), and that hook's state in checkpoints.

    comm = GradientComm(cfg.train, dist, ddp, model, precision)  # registers the hook on `ddp`
    data["comm"] = comm.state_dict()        # a collective: every rank calls it, rank 0 saves it
    comm.load_state_dict(data.get("comm"))  # on resume, after registration; logs one line

The hooks are torch.distributed.algorithms.ddp_comm_hooks':
  none      DDP's own fp32 all-reduce of each gradient bucket (no hook is registered);
  fp16/bf16 each bucket cast to 16 bits, all-reduced and cast back: half the bytes;
  powersgd  torch's powerSGD_hook (Vogels et al. 2019, rank-r approximation P Q^T with error
            feedback and warm-started Q) on the gradients of at least
            train.powersgd_min_elements elements; smaller ones are all-reduced uncompressed, and a
            bucket without a large gradient goes through one plain all-reduce. On AlexNet that
            compresses the three FC weights (58 of its 61 M parameters) and nothing else.

PowerSGD's own state, per parameter so that no bucket plan changes the result, is
pipeline/powersgd.py's.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from pipeline.config import TrainConfig
from pipeline.distributed import DistInfo
from pipeline.errors import ConfigError
from pipeline.powersgd import PowerSGDHook

logger = logging.getLogger(__name__)

HOOKS = ("none", "fp16", "bf16", "powersgd")
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


# -- the hook on a DDP module ---------------------------------------------------------------------
class GradientComm:
    """The run's gradient all-reduce: registers train.comm_hook on the DDP module (nothing in a
    world of one) and carries its state to and from checkpoints."""

    def __init__(
        self,
        train: TrainConfig,
        dist: DistInfo,
        ddp: nn.parallel.DistributedDataParallel | None,
        model: nn.Module,
        precision: str,
    ) -> None:
        self.name = train.comm_hook
        self.dist = dist
        self.train = train
        self.active = ddp is not None  # a world of one all-reduces nothing
        self.powersgd: PowerSGDHook | None = None
        if not self.active:
            if self.name != "none":
                logger.info("train.comm_hook=%s does nothing in a world of one", self.name)
            return
        if self.name == "powersgd" and precision == "fp16":
            raise ConfigError(
                "train.comm_hook=powersgd with train.precision=fp16: a step GradScaler skips for "
                "inf gradients would leave inf in PowerSGD's error memory for good; use "
                "train.precision=bf16 (or fp32), or train.comm_hook=fp16"
            )
        if self.name in HALF_DTYPES:
            check_dtype_all_reduces(HALF_DTYPES[self.name], dist, f"train.comm_hook={self.name}")
        if self.name != "none":  # none: DDP's built-in all-reduce, the fastest plain one
            state, hook = build_hook(
                self.name,
                model,
                powersgd_rank=train.powersgd_rank,
                powersgd_warmup_steps=train.powersgd_warmup_steps,
                powersgd_min_elements=train.powersgd_min_elements,
                seed=train.seed,
            )
            self.powersgd = state if isinstance(state, PowerSGDHook) else None
            ddp.register_comm_hook(state, hook)
        if dist.is_main:
            logger.info("gradient all-reduce: %s", self.describe(model))

    def describe(self, model: nn.Module) -> str:
        """One line: the hook and what each rank hands to the all-reduce per step."""
        shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
        plain = sum(int(np.prod(s)) for s in shapes) * 4
        if self.powersgd is None:
            sent = plain // 2 if self.name in HALF_DTYPES else plain
            return f"{self.name}, {sent / 1e6:.1f} MB per step per rank"
        compressed = self.powersgd.compressed_names()
        sent = self.powersgd.payload_bytes_per_step()
        return (
            f"powersgd rank {self.powersgd.rank} after {self.powersgd.state.start_powerSGD_iter} "
            f"plain steps, on {len(compressed)} of {len(shapes)} gradients "
            f"({', '.join(compressed[:4])}{', ...' if len(compressed) > 4 else ''}): "
            f"{sent / 1e6:.2f} MB per step per rank instead of {plain / 1e6:.1f} MB "
            f"({plain / max(sent, 1):.1f}x less)"
        )

    def state_dict(self) -> dict[str, Any]:
        """The hook's state in checkpoint form (tensors and plain values). A collective when the
        hook is PowerSGD: every rank's error memory is gathered to rank 0 (others get a stub)."""
        base = {"hook": self.name, "world_size": self.dist.world_size}
        if self.powersgd is None:
            return base
        return {**base, **self.powersgd.state_dict(self.dist)}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Resume the hook's state from a checkpoint's `comm` entry (None: the checkpoint has
        none); one log line says what carries over when the hook, rank or world changed."""
        current = {
            "hook": self.name if self.active else "none",
            "world_size": self.dist.world_size,
            "powersgd_rank": self.train.powersgd_rank,
        }
        line, carried = describe_resume(saved, current)
        if not self.active and (saved or {}).get("hook", "none") != "none":
            line = (
                f"a world of one all-reduces nothing: the checkpoint's {saved['hook']} hook "
                "state, if any, is dropped"
            )
        if self.powersgd is not None and saved is not None:
            self.powersgd.load_state_dict(saved, self.dist, carried)
        if line and self.dist.is_main:
            logger.warning("%s", line)


def check_dtype_all_reduces(dtype: torch.dtype, dist: DistInfo, what: str) -> None:
    """One tiny all-reduce in `dtype`; a backend without it is one ConfigError line on every rank
    (gloo and nccl raise on every rank alike, so nobody is left waiting)."""
    probe = torch.zeros(2, dtype=dtype, device=dist.torch_device)
    try:
        torch_dist.all_reduce(probe)
    except (RuntimeError, TypeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"{what}: the {dist.backend} process group cannot all-reduce {dtype} ({first}); use "
            "train.comm_hook=fp16 or none"
        ) from None


def build_hook(
    name: str,
    model: nn.Module,
    *,
    powersgd_rank: int = 4,
    powersgd_warmup_steps: int = 1000,
    powersgd_min_elements: int = 1_000_000,
    seed: int = 0,
    process_group: torch_dist.ProcessGroup | None = None,
) -> tuple[Any, Any]:
    """(state, hook) for `ddp.register_comm_hook(state, hook)`, or to call as `hook(state,
    bucket)` outside DDP (tools/bench_comm.py does, on its FlatBuckets). `none` is torch's
    allreduce_hook, the same arithmetic as DDP without a hook."""
    if name == "none":
        return process_group, default_hooks.allreduce_hook
    if name == "fp16":
        return process_group, default_hooks.fp16_compress_hook
    if name == "bf16":
        return process_group, default_hooks.bf16_compress_hook
    if name == "powersgd":
        hook = PowerSGDHook(
            model,
            rank=powersgd_rank,
            warmup_steps=powersgd_warmup_steps,
            min_elements=powersgd_min_elements,
            seed=seed,
            process_group=process_group,
        )
        return hook, PowerSGDHook.communicate
    raise ConfigError(f"train.comm_hook={name!r} is not one of {', '.join(HOOKS)}")


def describe_resume(saved: dict[str, Any] | None, current: dict[str, Any]) -> tuple[str, set]:
    """(the one line to log, or "" when nothing changed; what carries over: a subset of
    {"iteration", "q", "errors"}) for resuming hook state `saved` under `current`."""
    old = (saved or {}).get("hook", "none")
    new = current["hook"]
    iteration = int((saved or {}).get("iteration", 0))
    old_world, new_world = (saved or {}).get("world_size"), current["world_size"]
    if new != "powersgd":
        if old == "powersgd" and "iteration" in (saved or {}):
            line = (
                f"train.comm_hook changed powersgd → {new}: PowerSGD's state (iteration "
                f"{iteration}, Q matrices, error memories) is dropped, {new} keeps none"
            )
            return line, set()
        if old != new:
            return f"train.comm_hook changed {old} → {new}: neither keeps state", set()
        return "", set()
    if old != "powersgd" or "iteration" not in (saved or {}):
        what = (
            f"train.comm_hook changed {old} → powersgd"
            if old != new
            else ("the checkpoint holds no PowerSGD state (a world of one wrote it)")
        )
        return f"{what}: PowerSGD starts afresh with its plain all-reduce warm-up", set()
    carried = {"iteration", "q", "errors"}
    changes, dropped = [], []
    old_rank, new_rank = int(saved.get("powersgd_rank", 0)), current["powersgd_rank"]
    if old_rank != new_rank:
        changes.append(f"train.powersgd_rank {old_rank} → {new_rank}")
        carried.discard("q")
        dropped.append("its Q matrices start afresh")
    if old_world != new_world:
        changes.append(f"world size {old_world} → {new_world}")
        carried.discard("errors")
        dropped.append("the per-rank error memories start at zero")
    if not changes:
        return "", carried
    kept = " and ".join(
        {"iteration": f"iteration ({iteration})", "q": "Q matrices", "errors": "error memories"}[k]
        for k in ("iteration", "q", "errors")
        if k in carried
    )
    return f"{', '.join(changes)}: PowerSGD's {kept} carry over; {'; '.join(dropped)}", carried
