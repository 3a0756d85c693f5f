"""A weight EMA: an exponential moving average of the model, updated every optimizer step and
evaluated beside the raw weights (val/ema_top1, ...).

    ema = WeightEMA(model, decay=0.9999, warmup_steps=1000)
    ...after each optimizer step:  ema.update(model, step)   # step: steps taken, 1-based
    evaluate(ema.model, ...)

Every floating-point entry of the state_dict is averaged, buffers included (BatchNorm running
statistics: the averaged weights are evaluated with averaged statistics, as torchvision's
ExponentialMovingAverage does with use_buffers=True); integer buffers (num_batches_tracked)
are copied. During the first `warmup_steps` the EMA copies the weights, so it does not drag the
random initialization along. The update is a pure function of the weights and the step, so
every DDP rank's EMA is identical, and it resumes bit-exact from its state_dict.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used by the update after optimizer step `step` (1-based)."""
        return 0.0 if step <= self.warmup_steps else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        source = model.state_dict()
        for name, average in self.model.state_dict().items():
            value = source[name]
            if average.is_floating_point() and decay > 0:
                average.lerp_(value.to(average.dtype), 1.0 - decay)
            else:  # integers, and the warm-up's exact copy (lerp by 1 can round)
                average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu() for name, value in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
