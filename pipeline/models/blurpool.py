"""model.blurpool: a 3x3 binomial blur before every strided convolution (Zhang 2019, "Making
Convolutional Networks Shift-Invariant Again"), as FFCV's ResNet recipes use it.

FFCV's rule, kept here: convolutions with a stride above 1 and at least 16 input channels are
wrapped (the stem, which sees 3 channels, is not). The wrapped layer's weights live at
`<name>.conv.weight`, so a state_dict from a model without blurpool does not load into one
with it: train and evaluate with the same setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BlurPoolConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        self.register_buffer("blur", kernel.expand(conv.in_channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(module: nn.Module) -> int:
    """Wrap every strided conv with >= 16 input channels in place; returns how many."""
    wrapped = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, BlurPoolConv2d(child))
            wrapped += 1
        else:
            wrapped += apply_blurpool(child)
    return wrapped
