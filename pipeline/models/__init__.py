"""Models by name: `model.arch` is one of our three AlexNet variants or any torchvision
classification model (`python -m pipeline.models` lists them).

    model = create_model(cfg, num_classes, device)   # seeded, weights applied, on the device

Modules: registry (the names, input rules, building), alexnet (our variants), heads (each
family's head, freezing, auxiliary classifiers), weights (init_from, finetune), norm
(model.sync_bn, on GPUs and CPUs).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import Config, ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.alexnet import ALEXNET_VARIANTS, AlexNet
from pipeline.models.heads import (
    apply_freeze,
    aux_loss_weight,
    family_of,
    head_paths,
    main_head,
    set_train_mode,
    split_outputs,
)
from pipeline.models.norm import convert_sync_batchnorm
from pipeline.models.registry import (
    architectures,
    build_model,
    check_arch,
    check_input_size,
    check_options,
    input_rule,
)
from pipeline.models.weights import load_for_finetune, load_weights, read_weights

__all__ = [
    "ALEXNET_VARIANTS",
    "AlexNet",
    "apply_freeze",
    "architectures",
    "aux_loss_weight",
    "build_model",
    "check_arch",
    "check_input_size",
    "check_input_sizes",
    "check_options",
    "count_parameters",
    "create_model",
    "family_of",
    "head_paths",
    "input_rule",
    "load_for_finetune",
    "load_weights",
    "main_head",
    "read_weights",
    "resolve_num_classes",
    "set_train_mode",
    "split_outputs",
]


def resolve_num_classes(model_cfg: ModelConfig, data_classes: int) -> int:
    """model.num_classes, or the data's count when it is 0; fewer outputs than classes: an error."""
    num_classes = model_cfg.num_classes or data_classes
    if num_classes < data_classes:
        raise ConfigError(
            f"model.num_classes={num_classes} but the data has {data_classes} classes: use 0 "
            "(from the data)"
        )
    return num_classes


def check_input_sizes(cfg: Config) -> None:
    """The configured train and val crops against model.arch's input rule, up front."""
    arch = cfg.model.arch
    check_options(cfg.model)
    aux_on = aux_loss_weight(arch, cfg.model.aux_loss_weight) > 0
    check_input_size(cfg.data.train_crop, "data.train_crop", arch, training=aux_on)
    check_input_size(cfg.data.val_crop, "data.val_crop", arch)
    if cfg.data.res_start:
        if input_rule(arch).fixed:
            raise ConfigError(
                f"{arch} is built for one input size (data.train_crop={cfg.data.train_crop}) "
                f"but data.res_start={cfg.data.res_start} ramps the train size: set "
                "data.res_start=0"
            )
        check_input_size(cfg.data.res_start, "data.res_start", arch, training=aux_on)
    if input_rule(arch).fixed and cfg.data.val_crop != cfg.data.train_crop:
        raise ConfigError(
            f"{arch} is built for one input size (data.train_crop={cfg.data.train_crop}) but "
            f"data.val_crop={cfg.data.val_crop}: set them equal"
        )


def create_model(
    cfg: Config, num_classes: int, device: torch.device, *, load_initial_weights: bool = True
) -> nn.Module:
    """The run's model on `device` in its memory format: model.finetune / model.init_from applied
    unless `load_initial_weights` is False (a checkpoint will be loaded instead), frozen as
    model.freeze says, BatchNorm synchronized with model.sync_bn.

    Every rank seeds the same way first, so every rank builds identical initial weights (DDP
    also broadcasts rank 0's)."""
    torch.manual_seed(cfg.train.seed)
    arch = cfg.model.arch
    model = build_model(cfg.model, num_classes, image_size=cfg.data.train_crop)
    if load_initial_weights and cfg.model.finetune:
        load_for_finetune(model, cfg.model.finetune, cfg.model.freeze, arch)
    elif load_initial_weights and cfg.model.init_from:
        load_weights(model, cfg.model.init_from, arch)
    # on every build, resumes too: the optimizer must see the trainable set the checkpoint's did
    apply_freeze(model, arch, cfg.model.freeze)
    if cfg.model.sync_bn:
        model = convert_sync_batchnorm(model, device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
