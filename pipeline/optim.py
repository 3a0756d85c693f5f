"""Optimizers, learning-rate schedules and the loss.

The schedule is a function of the optimizer step (warmup per step; epoch-based decays derive
the epoch as step // steps_per_epoch), so resuming at any step, even mid-epoch, gives exactly
the learning rate an uninterrupted run would have used. Its only state is the plateau
bookkeeping, kept as plain numbers in the checkpoint.

Learning rate: optim.lr is per 256 images and scales linearly with the global batch
(Goyal et al. 2017): lr = optim.lr * data.global_batch_size / 256.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pipeline.config import Config
from pipeline.errors import ConfigError


def scaled_lr(cfg: Config) -> float:
    """optim.lr (per 256 images) scaled to the global batch."""
    return cfg.optim.lr * cfg.data.global_batch_size / 256


def parameter_groups(
    model: nn.Module, weight_decay: float, no_decay_bias_norm: bool
) -> list[dict[str, Any]]:
    """Trainable parameters; with no_decay_bias_norm, biases and norm weights (ndim <= 1) get no
    decay."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if no_decay_bias_norm and parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [group for group in groups if group["params"]]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov), Adam or AdamW over the trainable parameters at the scaled lr."""
    optim = cfg.optim
    groups = parameter_groups(model, optim.weight_decay, optim.no_decay_bias_norm)
    if not groups:
        raise ConfigError("no trainable parameters: model.freeze froze everything")
    lr = scaled_lr(cfg)
    if optim.name == "sgd":
        if optim.nesterov and optim.momentum <= 0:
            raise ConfigError(f"optim.nesterov needs optim.momentum > 0, got {optim.momentum}")
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if optim.name == "rmsprop":
        # torchvision's references use TF's RMSprop constants (their MobileNetV3 recipe)
        return torch.optim.RMSprop(
            groups, lr=lr, momentum=optim.momentum, alpha=optim.rmsprop_alpha, eps=optim.rmsprop_eps
        )
    if len(optim.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers, got {optim.betas}")
    betas = (float(optim.betas[0]), float(optim.betas[1]))
    if optim.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> list[str]:
    """Load a checkpoint's optimizer state (momentum buffers, Adam moments) but keep this
    optimizer's hyperparameters (weight decay, momentum, betas, ...; lr is the schedule's), so a
    resumed run does what its saved config says. Returns the settings that differed, as
    "weight_decay 0.01 → 0.5". Raises ValueError when the parameter groups do not match."""
    wanted = [
        {key: value for key, value in group.items() if key != "params"}
        for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state)
    changed = []
    for index, (group, settings) in enumerate(zip(optimizer.param_groups, wanted)):
        for key, value in settings.items():
            before = group.get(key)
            if key != "lr" and _differs(before, value):
                changed.append(f"group {index} {key} {before!r} → {value!r}")
            group[key] = value
    return changed


def _differs(before: Any, after: Any) -> bool:
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        return list(before) != list(after)
    return before != after


def build_loss(cfg: Config) -> nn.CrossEntropyLoss:
    if not 0.0 <= cfg.optim.label_smoothing < 1.0:
        raise ConfigError(
            f"optim.label_smoothing must be in [0, 1), got {cfg.optim.label_smoothing}"
        )
    return nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)


class LearningRateSchedule:
    """lr(step) = base * warmup(step) * decay(step); `apply(optimizer, step)` before each step.

    step: optimizer steps taken so far (0 for the first). Schedules:
      step      base * gamma ** (epoch // step_epochs)
      cosine    min_lr + (base - min_lr) * (1 + cos(pi * step / total_steps)) / 2
      plateau   base * gamma ** (number of plateaus seen by `observe(val_top1)`)
      constant  base
      linear    FFCV's: linear from start_factor * base at step 0 to base at peak_epoch, then
                linear to 0 at the last planned step (their "cyclic" schedule)
      onecycle  torch's OneCycleLR (cosine): base / div at step 0, base after onecycle_pct of
                the steps, base / (div * final_div) at the last
    Warmup multiplies by (step + 1) / warmup_steps for the first warmup_steps steps.
    """

    def __init__(self, cfg: Config, steps_per_epoch: int, total_steps: int):
        if steps_per_epoch < 1:
            raise ConfigError(
                "the train loader yields no optimizer step per epoch: use a smaller "
                "data.global_batch_size or more data"
            )
        schedule = cfg.schedule
        if schedule.name == "step" and schedule.step_epochs < 1:
            raise ConfigError(f"schedule.step_epochs must be >= 1, got {schedule.step_epochs}")
        if schedule.warmup_epochs < 0:
            raise ConfigError(f"schedule.warmup_epochs must be >= 0, got {schedule.warmup_epochs}")
        self.name = schedule.name
        self.base_lr = scaled_lr(cfg)
        self.gamma = schedule.gamma
        self.step_epochs = schedule.step_epochs
        self.min_lr = schedule.min_lr
        self.patience = schedule.plateau_patience
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, total_steps)
        self.warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
        self.peak_step = schedule.peak_epoch * steps_per_epoch
        self.start_factor = schedule.start_factor
        self.onecycle_pct = schedule.onecycle_pct
        self.onecycle_div = schedule.onecycle_div
        self.onecycle_final_div = schedule.onecycle_final_div
        # plateau state (plain numbers: they go into checkpoints)
        self.plateau_decays = 0
        self.plateau_best = -math.inf
        self.plateau_bad_epochs = 0

    def lr_at(self, step: int) -> float:
        if self.name == "step":
            lr = self.base_lr * self.gamma ** ((step // self.steps_per_epoch) // self.step_epochs)
        elif self.name == "cosine":
            progress = min(1.0, step / self.total_steps)
            lr = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        elif self.name == "plateau":
            lr = self.base_lr * self.gamma**self.plateau_decays
        elif self.name == "linear":
            if step < self.peak_step:
                start = self.start_factor * self.base_lr
                lr = start + (self.base_lr - start) * step / self.peak_step
            else:
                left = max(0.0, self.total_steps - step) / max(
                    1e-9, self.total_steps - self.peak_step
                )
                lr = self.base_lr * min(1.0, left)
        elif self.name == "onecycle":
            lr = self.onecycle_lr(step)
        else:
            lr = self.base_lr
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def onecycle_lr(self, step: int) -> float:
        """torch.optim.lr_scheduler.OneCycleLR's two cosine phases, step for step."""
        first = self.base_lr / self.onecycle_div
        last = first / self.onecycle_final_div
        rise_end = self.onecycle_pct * self.total_steps - 1
        if step <= rise_end:
            start, end, progress = first, self.base_lr, step / max(rise_end, 1e-9)
        else:
            start, end = self.base_lr, last
            progress = (step - rise_end) / max(self.total_steps - 1 - rise_end, 1e-9)
        progress = min(1.0, progress)
        return end + (start - end) / 2.0 * (math.cos(math.pi * progress) + 1.0)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's lr for optimizer step `step`; returns it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe(self, val_top1: float) -> None:
        """Plateau: after `patience` evaluations without improvement, decay by gamma (like
        ReduceLROnPlateau, mode max).

        schedule.plateau_patience counts evaluations (one per train.eval_every epochs), not
        epochs; `plateau_bad_epochs` keeps torch's name (and the checkpoint key) but counts
        evaluations too."""
        if self.name != "plateau":
            return
        if val_top1 > self.plateau_best:
            self.plateau_best = val_top1
            self.plateau_bad_epochs = 0
            return
        self.plateau_bad_epochs += 1
        if self.plateau_bad_epochs > self.patience:
            self.plateau_decays += 1
            self.plateau_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau_decays": self.plateau_decays,
            "plateau_best": self.plateau_best,
            "plateau_bad_epochs": self.plateau_bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_decays = int(state["plateau_decays"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])
