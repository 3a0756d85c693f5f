"""AlexNet variants, built here (the other architectures come from torchvision by name).

    alexnet      torchvision's layout (64-192-384-256-256, no normalization); the module tree and
                 parameter names are torchvision.models.alexnet's, so its state_dicts load with
                 model.init_from=PATH (weights are never downloaded).
    alexnet_bn   the seed post's variant: BatchNorm after conv1 and conv2 (those convs lose their
                 bias, which BatchNorm's shift replaces).
    alexnet_lrn  Krizhevsky et al. 2012: 96-256-384-384-256 channels and LocalResponseNorm
                 (the paper's n=5, alpha=1e-4, beta=0.75, k=2) after the conv1 and conv2 ReLUs.

`model.width_mult` scales conv channels and `model.classifier_width` the two hidden linear
layers, so tests and the demo can train a real AlexNet-shaped network on a CPU. AlexNet's
three max-pools and stride-4 stem need inputs of at least 63 pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ModelConfig

# Smallest input side for which every max-pool still has a 3x3 window (11/4 stem, three pools).
MIN_INPUT_SIZE = 63

# The paper divides by (k + alpha * sum of a^2 over n=5 neighbouring channels)^beta with alpha=1e-4;
# torch's LocalResponseNorm divides alpha by `size` (it averages the squares), so it needs 5 * 1e-4.
PAPER_LRN_ALPHA = 1e-4

# (out_channels, kernel, stride, padding, pool_after) for the five convs.
_TORCHVISION_CONVS = [
    (64, 11, 4, 2, True),
    (192, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, False),
    (256, 3, 1, 1, True),
]
_PAPER_CONVS = [
    (96, 11, 4, 2, True),
    (256, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, True),
]


class AlexNet(nn.Module):
    """features → avgpool (6x6) → classifier, as in torchvision.models.AlexNet."""

    def __init__(
        self,
        features: nn.Sequential,
        feature_channels: int,
        num_classes: int,
        dropout: float,
        classifier_width: int,
    ):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(feature_channels * 6 * 6, classifier_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(classifier_width, classifier_width),
            nn.ReLU(inplace=True),
            nn.Linear(classifier_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W] float, normalized
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)  # [B, num_classes] logits

    @property
    def head(self) -> nn.Linear:
        """The last Linear layer: the one fine-tuning replaces."""
        return self.classifier[-1]


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


def _build_features(convs, width_mult: float, norm: str) -> tuple[nn.Sequential, int]:
    """The conv base. norm: "none", "bn" (conv1/conv2) or "lrn" (conv1/conv2)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for index, (out_channels, kernel, stride, padding, pool_after) in enumerate(convs):
        out_channels = _scaled(out_channels, width_mult)
        early = index < 2
        use_bn = norm == "bn" and early
        layers.append(
            nn.Conv2d(
                in_channels, out_channels, kernel, stride=stride, padding=padding, bias=not use_bn
            )
        )
        if use_bn:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        if norm == "lrn" and early:
            layers.append(nn.LocalResponseNorm(size=5, alpha=PAPER_LRN_ALPHA * 5, beta=0.75, k=2.0))
        if pool_after:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        in_channels = out_channels
    return nn.Sequential(*layers), in_channels


def init_kaiming(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), N(0, 0.01) linears, zero biases, unit norms."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


ALEXNET_VARIANTS = ("alexnet", "alexnet_bn", "alexnet_lrn")
DEFAULT_DROPOUT = 0.5  # torchvision's and the paper's


def build_alexnet(model_cfg: ModelConfig, num_classes: int) -> AlexNet:
    """The configured AlexNet variant with `num_classes` outputs (fresh weights)."""
    convs, norm = {
        "alexnet": (_TORCHVISION_CONVS, "none"),
        "alexnet_bn": (_TORCHVISION_CONVS, "bn"),
        "alexnet_lrn": (_PAPER_CONVS, "lrn"),
    }[model_cfg.arch]
    dropout = DEFAULT_DROPOUT if model_cfg.dropout < 0 else model_cfg.dropout
    features, channels = _build_features(convs, model_cfg.width_mult, norm)
    model = AlexNet(features, channels, num_classes, dropout, model_cfg.classifier_width)
    if model_cfg.kaiming_init:
        init_kaiming(model)
    return model
