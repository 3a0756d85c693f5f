"""model.sync_bn: BatchNorm statistics over the global batch, on GPUs and on CPUs.

With small per-GPU batches, BatchNorm's per-rank statistics are noisy; synchronized BatchNorm
computes mean and variance over every rank's batch. torch.nn.SyncBatchNorm refuses CPU tensors
("SyncBatchNorm expected input tensor to be on GPU"), so on CPU (gloo) the layers become
`GlobalBatchNorm2d`: one all-reduce of [sum, sum of squares, count] per layer and forward,
differentiable (the gradients are summed back over ranks). In eval mode, or
with no process group, both are plain BatchNorm. Either way the state_dict keys are
BatchNorm's, so checkpoints and torchvision weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: every rank's input feeds every rank's output, so the
    gradient of an input is the sum over ranks of the output's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        torch_dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch_dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch summed over every rank."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        if not (self.training and torch_dist.is_initialized() and torch_dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
        local = torch.cat([x.double().sum(dims), x.double().square().sum(dims), count])
        total = _SumOverRanks.apply(local)  # [2C + 1] summed over ranks
        channels = x.shape[1]
        samples = total[-1]
        mean = total[:channels] / samples
        variance = (total[channels : 2 * channels] / samples - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.0
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                    if self.momentum is None:  # cumulative moving average
                        momentum = 1.0 / float(self.num_batches_tracked)
                unbiased = variance * samples / (samples - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels, 1, 1)
        normalized = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(
            variance.to(x.dtype).view(shape) + self.eps
        )
        if self.affine:
            normalized = normalized * self.weight.view(shape) + self.bias.view(shape)
        return normalized


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer as its synchronized form for `device`: torch's SyncBatchNorm on
    CUDA, GlobalBatchNorm2d elsewhere. Parameters and buffers are the same tensors as before."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_on_cpu(model)


def _convert_on_cpu(module: nn.Module) -> nn.Module:
    converted = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, _convert_on_cpu(child))
    return converted
