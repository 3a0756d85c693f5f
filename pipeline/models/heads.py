"""Where each family's classifier head is, what `--freeze features` freezes, and the auxiliary
classifiers' outputs and loss.

    heads = head_paths(model, "resnet50")          # ["fc"]
    apply_freeze(model, "resnet50", "features")    # everything but fc
    logits, aux = split_outputs(model(images))     # Inception-v3 / GoogLeNet in training mode

A family is placed by its name's prefix; a name no row here places is a one-line error when a
head is needed (fine-tuning, freezing) rather than a guess.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Family:
    prefixes: tuple[str, ...]
    heads: tuple[str, ...]  # module paths of the layers whose outputs are the classes ("-1": last)
    features: str | None  # the module --freeze features freezes; None: everything but the heads
    aux_loss_weight: float = 0.0  # each auxiliary head's loss weight in training (the paper's)


FAMILIES = (
    Family(("alexnet", "vgg"), ("classifier.-1",), "features"),
    Family(("resnet", "resnext", "wide_resnet", "regnet", "shufflenet"), ("fc",), None),
    # GoogLeNet: Szegedy et al. 2014 weight each auxiliary loss by 0.3
    Family(("googlenet",), ("fc", "aux1.fc2", "aux2.fc2"), None, aux_loss_weight=0.3),
    # Inception-v3: its auxiliary classifier's loss weighs 0.4 (TF-slim's inception_v3 recipe)
    Family(("inception_v3",), ("fc", "AuxLogits.fc"), None, aux_loss_weight=0.4),
    Family(("densenet",), ("classifier",), "features"),
    Family(("mobilenet", "efficientnet", "convnext"), ("classifier.-1",), "features"),
    Family(("mnasnet",), ("classifier.-1",), "layers"),
    Family(("squeezenet",), ("classifier.1",), "features"),  # a 1x1 conv to the classes
    Family(("vit_",), ("heads.head",), None),
    Family(("swin",), ("head",), "features"),
    Family(("maxvit",), ("classifier.-1",), None),
)


def family_of(arch: str) -> Family:
    for family in FAMILIES:
        if arch.startswith(family.prefixes):
            return family
    raise ConfigError(
        f"no head is known for model.arch={arch}: fine-tuning and freezing need one; "
        "add its family to pipeline/models/heads.py"
    )


def resolve(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """(the module at `path`, its concrete dotted path) with "-1" resolved to a last index."""
    module, parts = model, []
    for part in path.split("."):
        if part == "-1":
            part = str(len(module) - 1)
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
        parts.append(part)
    return module, ".".join(parts)


def head_paths(model: nn.Module, arch: str) -> list[str]:
    """The concrete module paths of `arch`'s classifier head(s), main head first."""
    return [resolve(model, path)[1] for path in family_of(arch).heads]


def main_head(model: nn.Module, arch: str) -> nn.Module:
    return resolve(model, family_of(arch).heads[0])[0]


def is_under(name: str, paths: list[str]) -> bool:
    return any(name == path or name.startswith(path + ".") for path in paths)


def apply_freeze(model: nn.Module, arch: str, freeze: str) -> None:
    """model.freeze: 'features' stops gradients into the feature part (the family's `features`
    module, else everything but its heads). Called after every model build, resumes included,
    so the optimizer always sees the same trainable parameters."""
    if freeze == "none":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return
    family = family_of(arch)
    if family.features is not None:
        frozen = dict(resolve(model, family.features)[0].named_parameters())
        frozen_ids = {id(p) for p in frozen.values()}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) not in frozen_ids)
        return
    heads = head_paths(model, arch)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_under(name, heads))


def set_train_mode(model: nn.Module) -> None:
    """model.train(), but a frozen part keeps its BatchNorm statistics (eval mode): every module
    all of whose parameters are frozen."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            module.eval()


def split_outputs(output) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [B, C], auxiliary logits) of a forward: a tensor, or the named tuples torchvision's
    Inception-v3 (logits, aux) and GoogLeNet (logits, aux2, aux1) return in training mode."""
    if isinstance(output, torch.Tensor):
        return output, []
    logits, *aux = output
    return logits, [item for item in aux if item is not None]


def aux_loss_weight(arch: str, configured: float) -> float:
    """model.aux_loss_weight, or the family's published weight when it is negative (-1)."""
    if configured >= 0:
        return configured
    return next((f.aux_loss_weight for f in FAMILIES if arch.startswith(f.prefixes)), 0.0)
