"""One optimizer step: `accum` micro-batches forward and backward, then one clip, step, update and
zero_grad (nanoGPT's accumulation loop), built by one factory for every user of the step (the
trainer, the doctor, `--check` and tools/bench_train.py).

    precision = build_precision(cfg.train.precision, dist.torch_device)  # autocast + GradScaler
    model = build_model_views(cfg, dist, module, ddp=dist.is_distributed)  # + DDP, torch.compile
    take_step = build_optimizer_step(cfg, dist, model, precision, schedule=..., meter=...)
    lr = take_step(batches, step)      # consumes `accum` batches from the iterator `batches`

The torch generator is reseeded before every optimizer step from the one seed rule
(`core.seeds.stream_seed`, Purpose.STEP at (seed, step, rank)), and each micro-batch's mixup,
cutmix and erasing draw from Purpose.BATCH_AUGMENT at (seed, step, rank, micro-batch): dropout
masks and mixing depend on those coordinates only, so nothing the loaders draw in between can
shift them, and a resumed run draws exactly what an uninterrupted one would. Under DDP the
gradient all-reduce runs on the last micro-batch only (`no_sync` on the others).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch import nn

from core.seeds import Purpose, stream_seed
from pipeline.augment import BatchAugment, soft_cross_entropy
from pipeline.config import Config
from pipeline.data.transforms import normalize
from pipeline.distributed import DistInfo
from pipeline.models import aux_loss_weight, split_outputs
from pipeline.optim import LearningRateSchedule, build_loss, build_optimizer
from pipeline.precision import Precision
from pipeline.tracking import NullTracker
from pipeline.train.meters import TrainMeter
from pipeline.train.watchdog import Phase


@dataclasses.dataclass(frozen=True)
class ModelViews:
    """The three views of one model that a step needs."""

    module: nn.Module  # the unwrapped model: clipping, eval, the EMA and checkpoints read it
    forward_module: nn.Module  # what the forward calls: the DDP and/or compiled wrapper
    ddp: nn.parallel.DistributedDataParallel | None = None  # its no_sync(); None outside DDP


def build_model_views(cfg: Config, dist: DistInfo, module: nn.Module, *, ddp: bool) -> ModelViews:
    """`module` wrapped for training: in DDP when `ddp` (train.bucket_cap_mb,
    train.static_graph), then torch.compile'd when train.compile. Eval always uses `module`."""
    device = dist.torch_device
    wrapper = None
    forward_module = module
    if ddp:
        wrapper = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            bucket_cap_mb=cfg.train.bucket_cap_mb,
            static_graph=cfg.train.static_graph,
        )
        forward_module = wrapper
    if cfg.train.compile:
        forward_module = torch.compile(forward_module)
    return ModelViews(module, forward_module, wrapper)


@dataclasses.dataclass(frozen=True)
class StepRecipe:
    """What one step does besides the model, precision, optimizer and schedule."""

    criterion: nn.Module  # cross-entropy (with the label smoothing) against hard labels
    aux_weight: float = 0.0  # each auxiliary classifier's loss weight (Inception-v3, GoogLeNet)
    augment: BatchAugment | None = None  # mixup / cutmix / random erasing, on the device
    accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float = 0.0  # 0 disables
    seed: int = 0  # train.seed: the step's and the batch augmentation's random streams
    rank: int = 0  # global rank: every rank draws its own streams

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy against the labels, or against the soft targets of a mixed batch (label
        smoothing is then already in the targets)."""
        if targets is None:
            return self.criterion(logits.float(), labels)
        return soft_cross_entropy(logits, targets)


def forward_with_aux_losses(
    forward: nn.Module,
    inputs: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    aux_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [B, C], the main loss, the objective): objective = main loss + aux_weight x each
    auxiliary classifier's loss (Inception-v3's and GoogLeNet's, in training mode)."""
    logits, aux = split_outputs(forward(inputs))
    loss = loss_of(logits)
    objective = loss
    for extra in aux:
        objective = objective + aux_weight * loss_of(extra)
    return logits, loss, objective


class OptimizerStep:
    """Everything one optimizer step touches, called once per step; built by
    `build_optimizer_step`."""

    def __init__(
        self,
        model: ModelViews,
        precision: Precision,
        optimizer: torch.optim.Optimizer,
        recipe: StepRecipe,
        schedule: LearningRateSchedule | None,  # None: the optimizer's own lr throughout
        meter: TrainMeter,  # its `progress` takes the phase marks the stall watchdog reads
    ) -> None:
        self.model = model
        self.precision = precision
        self.optimizer = optimizer
        self.recipe = recipe
        self.schedule = schedule
        self.meter = meter
        self.progress = meter.progress

    def __call__(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], step: int) -> float:
        """Optimizer step number `step` (0-based) over the next `accum` batches; returns its lr."""
        recipe, scaler = self.recipe, self.precision.scaler
        if self.schedule is not None:
            lr = self.schedule.apply(self.optimizer, step)
        else:
            lr = float(self.optimizer.param_groups[0]["lr"])
        for micro_step in range(recipe.accum):
            if self.progress.phase is not Phase.START:  # START: the epoch's loader starting
                self.progress.mark(Phase.DATA_WAIT, step)
            images, labels = next(batches)  # images: [B, 3, H, W] uint8 on the device
            self.progress.mark(Phase.FORWARD_BACKWARD)
            if micro_step == 0:
                # after the loader's first draw of the step (starting an epoch's iterator draws
                # from torch's generator), so nothing the loader does can shift the masks
                torch.manual_seed(
                    stream_seed(recipe.seed, Purpose.STEP, index=step, rank=recipe.rank)
                )
            self.micro_step(images, labels, step, micro_step)
        if recipe.clip_grad_norm > 0:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.module.parameters(), recipe.clip_grad_norm)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def micro_step(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, micro_step: int
    ) -> None:
        """Forward and backward of one micro-batch; DDP all-reduces on the step's last one."""
        recipe, ddp = self.recipe, self.model.ddp
        inputs = normalize(images)  # float [B, 3, H, W]
        targets = None  # soft targets [B, C] when the batch is mixed
        if recipe.augment is not None:
            seed = stream_seed(
                recipe.seed, Purpose.BATCH_AUGMENT, index=step, rank=recipe.rank, sub=micro_step
            )
            inputs, targets = recipe.augment(inputs, labels, torch.Generator().manual_seed(seed))
        last = micro_step == recipe.accum - 1
        sync = contextlib.nullcontext() if ddp is None or last else ddp.no_sync()
        with sync:
            with self.precision.autocast():
                logits, loss, objective = forward_with_aux_losses(
                    self.model.forward_module,
                    inputs,
                    lambda output: recipe.loss(output, labels, targets),
                    recipe.aux_weight,
                )
            if ddp is not None and last:  # this backward waits for every rank's gradients
                self.progress.mark(Phase.ALL_REDUCE)
            self.precision.scaler.scale(objective / recipe.accum).backward()
        # mixed labels: accuracy against each sample's larger-weight label
        self.meter.add(loss, logits, labels if targets is None else targets.argmax(dim=1))


def build_optimizer_step(
    cfg: Config,
    dist: DistInfo,
    model: ModelViews,
    precision: Precision,
    *,
    optimizer: torch.optim.Optimizer | None = None,  # default: build_optimizer(cfg, model.module)
    schedule: LearningRateSchedule | None = None,  # None: the optimizer's lr throughout
    meter: TrainMeter | None = None,  # default: this rank's sums, logged nowhere
    augment: BatchAugment | None = None,  # the trainer's batch augmentation
) -> OptimizerStep:
    """The one builder of the optimizer step: loss, auxiliary weight, accumulation, clipping and
    seeds from `cfg` (optim.*, model.aux_loss_weight, train.seed) and `dist` (the rank)."""
    recipe = StepRecipe(
        criterion=build_loss(cfg),
        aux_weight=aux_loss_weight(cfg.model.arch, cfg.model.aux_loss_weight),
        augment=augment if augment is not None and augment.enabled else None,
        accum=cfg.optim.grad_accum_steps,
        clip_grad_norm=cfg.optim.clip_grad_norm,
        seed=cfg.train.seed,
        rank=dist.rank,
    )
    if optimizer is None:
        optimizer = build_optimizer(cfg, model.module)
    if meter is None:
        local = dataclasses.replace(dist, backend=None)  # the meter's sums stay on this rank
        meter = TrainMeter(local, NullTracker(), cfg.train.log_every)
    return OptimizerStep(model, precision, optimizer, recipe, schedule, meter)
