"""One optimizer step: `accum` micro-batches forward and backward, then one clip, step, update and
zero_grad (nanoGPT's accumulation loop).

    take_step = OptimizerStep(...)
    lr = take_step(batches, step)      # consumes `accum` batches from the iterator `batches`

The torch generator is reseeded from (seed, rank, step) before every optimizer step, so dropout
masks depend on those three only: nothing the loaders draw in between can shift them, and a
resumed run draws exactly what an uninterrupted one would. Under DDP the gradient all-reduce
runs on the last micro-batch only (`no_sync` on the others).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pipeline.data.transforms import normalize
from pipeline.models import split_outputs
from pipeline.optim import LearningRateSchedule
from pipeline.train.meters import TrainMeter


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed for one optimizer step of one rank: dropout depends on (seed, rank, step)
    only."""
    return (seed * 1_000_003 + rank * 7_919 + step * 2_654_435_761) % (2**63 - 1)


class OptimizerStep:
    """Everything one optimizer step touches, called once per step."""

    def __init__(
        self,
        *,
        model: nn.Module,  # the unwrapped model: gradient clipping reads its parameters
        step_model: nn.Module,  # what the forward calls: the DDP and/or compiled wrapper
        ddp: nn.parallel.DistributedDataParallel | None,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        criterion: nn.Module,
        autocast: Callable[[], contextlib.AbstractContextManager],
        schedule: LearningRateSchedule,
        meter: TrainMeter,
        accum: int,
        clip_grad_norm: float,  # 0 disables
        seed: int,
        rank: int,
        aux_weight: float = 0.0,  # each auxiliary classifier's loss weight
    ) -> None:
        self.model = model
        self.step_model = step_model
        self.ddp = ddp
        self.optimizer = optimizer
        self.scaler = scaler
        self.criterion = criterion
        self.autocast = autocast
        self.schedule = schedule
        self.meter = meter
        self.accum = accum
        self.clip_grad_norm = clip_grad_norm
        self.seed = seed
        self.rank = rank
        self.aux_weight = aux_weight

    def __call__(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], step: int) -> float:
        """Optimizer step number `step` (0-based) over the next `accum` batches; returns its lr."""
        lr = self.schedule.apply(self.optimizer, step)
        for micro_step in range(self.accum):
            images, labels = next(batches)  # images: [B, 3, H, W] uint8 on the device
            if micro_step == 0:
                # after the loader's first draw of the step (starting an epoch's iterator draws
                # from torch's generator), so nothing the loader does can shift the masks
                torch.manual_seed(step_seed(self.seed, self.rank, step))
            last = micro_step == self.accum - 1
            sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:
                with self.autocast():
                    # aux: Inception-v3's and GoogLeNet's auxiliary classifiers, in training
                    logits, aux = split_outputs(self.step_model(normalize(images)))  # [B, C]
                    loss = self.criterion(logits.float(), labels)
                    objective = loss
                    for extra in aux:
                        objective = objective + self.aux_weight * self.criterion(
                            extra.float(), labels
                        )
                self.scaler.scale(objective / self.accum).backward()
            self.meter.add(loss, logits, labels)
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return lr
