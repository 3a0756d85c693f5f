"""AlexNet variants: `build_model(cfg.model, num_classes)`.

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

import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.config import Config, ModelConfig
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

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


def build_model(model_cfg: ModelConfig, num_classes: int) -> AlexNet:
    """The configured AlexNet variant with `num_classes` outputs (fresh weights)."""
    if num_classes < 1:
        raise ConfigError(
            f"the model needs at least 1 class, got {num_classes}: check the data or "
            "model.num_classes"
        )
    if model_cfg.width_mult <= 0:
        raise ConfigError(f"model.width_mult must be positive, got {model_cfg.width_mult}")
    if model_cfg.classifier_width < 1:
        raise ConfigError(
            f"model.classifier_width must be positive, got {model_cfg.classifier_width}"
        )
    if not 0.0 <= model_cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {model_cfg.dropout}")
    convs, norm = {
        "alexnet": (_TORCHVISION_CONVS, "none"),
        "alexnet_bn": (_TORCHVISION_CONVS, "bn"),
        "alexnet_lrn": (_PAPER_CONVS, "lrn"),
    }[model_cfg.arch]
    features, channels = _build_features(convs, model_cfg.width_mult, norm)
    model = AlexNet(features, channels, num_classes, model_cfg.dropout, model_cfg.classifier_width)
    if model_cfg.kaiming_init:
        init_kaiming(model)
    return model


def resolve_num_classes(model_cfg: ModelConfig, data_classes: int) -> int:
    """model.num_classes, or the data's count when it is 0; fewer outputs than classes is an
    error."""
    num_classes = model_cfg.num_classes or data_classes
    if num_classes < data_classes:
        raise ConfigError(
            f"model.num_classes={num_classes} but the data has {data_classes} classes: use 0 "
            "(from the data)"
        )
    return num_classes


def create_model(
    cfg: Config, num_classes: int, device: torch.device, *, load_initial_weights: bool = True
) -> AlexNet:
    """The run's model on `device` in its memory format, with model.finetune / model.init_from
    applied unless `load_initial_weights` is False (a checkpoint will be loaded instead).

    Every rank seeds the same way first, so every rank builds identical initial weights (DDP
    also broadcasts rank 0's)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, num_classes)
    if load_initial_weights and cfg.model.finetune:
        load_for_finetune(model, cfg.model.finetune, cfg.model.freeze)
    elif load_initial_weights and cfg.model.init_from:
        load_weights(model, cfg.model.init_from)
    # on every build, resumes too: the optimizer must see the trainable set the checkpoint's did
    apply_freeze(model, cfg.model.freeze)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def check_input_sizes(cfg: Config) -> None:
    """The configured train and val crops against the model's smallest input."""
    check_input_size(cfg.data.train_crop, "data.train_crop")
    check_input_size(cfg.data.val_crop, "data.val_crop")


def check_input_size(size: int, what: str) -> None:
    """AlexNet's pools need >= 63 px; say so instead of failing deep inside max_pool2d."""
    if size < MIN_INPUT_SIZE:
        raise ConfigError(
            f"{what}={size} is too small for AlexNet (three 3x3/2 max-pools after a stride-4 "
            f"stem): use at least {MIN_INPUT_SIZE}"
        )


def clean_state_dict(state: dict) -> dict:
    """Strip the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes from keys."""
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key.replace("._orig_mod.", ".").replace(".module.", ".")] = value
    return cleaned


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local file: a plain state_dict or one of our checkpoints ("model")."""
    from pipeline.checkpoint import load_checkpoint

    state = load_checkpoint(Path(path), what="weights file")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"{path} holds no state_dict (a mapping of parameter names to tensors): pass a "
            "checkpoint or a saved state_dict"
        )
    return clean_state_dict(state)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """model.init_from: every parameter and buffer must match by name and shape."""
    state = read_weights(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else (
                f"shape of {mismatched[0]} is {tuple(state[mismatched[0]].shape)}, "
                f"model has {tuple(own[mismatched[0]].shape)}"
            )
        )
        raise ConfigError(
            f"weights in {path} do not fit model (arch, width_mult, classifier_width, "
            f"num_classes): {detail}"
        )
    model.load_state_dict(state)
    logger.info("loaded weights from %s", path)


def load_for_finetune(model: AlexNet, path: str | Path, freeze: str) -> None:
    """model.finetune: load everything but the head (re-initialized for the new classes);
    optionally freeze features."""
    state = read_weights(path)
    head_keys = {f"classifier.{len(model.classifier) - 1}.{name}" for name in ("weight", "bias")}
    body = {k: v for k, v in state.items() if k not in head_keys}
    own = {k: v for k, v in model.state_dict().items() if k not in head_keys}
    missing = sorted(set(own) - set(body))
    mismatched = [k for k in own if k in body and own[k].shape != body[k].shape]
    if missing or mismatched or set(body) - set(own):
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"mismatched {mismatched[:3]}"
            if mismatched
            else f"unexpected {sorted(set(body) - set(own))[:3]}"
        )
        raise ConfigError(
            f"model.finetune={path} does not fit model (same arch, width_mult and classifier_width "
            f"needed): {detail}"
        )
    model.load_state_dict(body, strict=False)
    apply_freeze(model, freeze)
    logger.info(
        "fine-tuning from %s: head re-initialized for %d classes, freeze=%s",
        path,
        model.head.out_features,
        freeze,
    )


def apply_freeze(model: AlexNet, freeze: str) -> None:
    """model.freeze: 'features' stops gradients into the conv base. Called after every model build,
    resumes included, so the optimizer always sees the same trainable parameters."""
    for parameter in model.features.parameters():
        parameter.requires_grad_(freeze != "features")


def set_train_mode(model: AlexNet, freeze: str) -> None:
    """model.train(), but a frozen conv base keeps its BatchNorm statistics (eval mode)."""
    model.train()
    if freeze == "features":
        model.features.eval()
