"""Every architecture `model.arch` can name, what each one's input must be, and how it is built.

The names are our three AlexNet variants plus every classification model torchvision lists:
`torchvision.models.list_models(module=torchvision.models)` (resnet18–152, wide_resnet, resnext,
vgg11–19 with and without _bn, googlenet, inception_v3, densenet, mobilenet_v2/v3, efficientnet
v1 and v2, regnet, convnext, vit, swin, maxvit, ...). Each is built for `num_classes` with fresh
weights; nothing is ever downloaded (`model.init_from` loads a local state_dict).

Inputs: most of these nets take any square crop of at least 32 px (below that none of them is
meaningful, and some fail); some have a larger minimum (AlexNet 63, Inception-v3 75); ViT's
position embedding and MaxViT's window partition fix the size (built here for the train crop,
which val must then equal; ViT needs a multiple of its patch, MaxViT of 224).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import torchvision
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.alexnet import ALEXNET_VARIANTS, build_alexnet
from pipeline.models.blurpool import apply_blurpool


@functools.cache
def architectures() -> tuple[str, ...]:
    """Every name model.arch accepts, sorted: the AlexNet variants and torchvision's list."""
    listed = torchvision.models.list_models(module=torchvision.models)
    return tuple(sorted(set(listed) | set(ALEXNET_VARIANTS)))


@dataclasses.dataclass(frozen=True)
class InputRule:
    """What a family's input must be."""

    minimum: int = 32  # pixels, square
    multiple: int = 1  # the side must be a multiple of this
    fixed: bool = False  # built for one size (position embedding, window grid): val == train
    train_minimum: int = 0  # pixels in training mode, when larger (auxiliary heads); 0: minimum

    def smallest(self, training: bool) -> int:
        return max(self.minimum, self.train_minimum) if training else self.minimum


def input_rule(arch: str) -> InputRule:
    """The input rule of `arch` (measured on CPU with torchvision 0.28: the smallest side for which
    a forward in eval and train mode succeeds, rounded up to 32 where it is smaller: googlenet
    15, squeezenet 17-21, densenet 29, convnext 32, most others 8)."""
    if arch.startswith("alexnet"):
        return InputRule(minimum=63)  # 11/4 stem and three 3x3/2 max-pools
    if arch == "inception_v3":
        # 75 px in eval (torchvision's documented minimum); in training its auxiliary head's
        # 5x5 conv needs the 17x17 grid that a 299 px input gives
        return InputRule(minimum=75, train_minimum=299)
    if arch.startswith("vit_"):
        patch = int(arch.rsplit("_", 1)[1])  # vit_b_16 -> 16
        return InputRule(minimum=patch, multiple=patch, fixed=True)
    if arch.startswith("maxvit"):
        return InputRule(minimum=224, multiple=224, fixed=True)  # 7x7 windows at stride 32
    return InputRule()


def check_input_size(size: int, what: str, arch: str = "alexnet", training: bool = False) -> None:
    """One line, up front, when `arch` cannot take a `size` px crop (instead of a shape error
    deep inside the first forward); `training`: in training mode (auxiliary heads on)."""
    rule = input_rule(arch)
    smallest = rule.smallest(training)
    if size < smallest:
        mode = " in training" if training and smallest > rule.minimum else ""
        raise ConfigError(
            f"{what}={size} is too small for {arch}{mode}: use at least {smallest} (or another "
            "model.arch)"
        )
    if size % rule.multiple:
        raise ConfigError(
            f"{what}={size} does not fit {arch}: it needs a multiple of {rule.multiple} px"
        )


def check_arch(arch: str) -> None:
    """An unknown name is one line listing the close matches."""
    if arch in architectures():
        return
    close = difflib.get_close_matches(arch, architectures(), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `python -m pipeline.models`"
    raise ConfigError(
        f"model.arch={arch!r} is not an AlexNet variant or a torchvision classification model: "
        f"{hint}"
    )


# keyword arguments some torchvision builders take, and the families that take them
AUX_FAMILIES = ("inception_v3", "googlenet")  # auxiliary classifiers in training mode
RESIDUAL_FAMILIES = ("resnet", "resnext", "wide_resnet")  # zero_init_residual


def build_model(model_cfg: ModelConfig, num_classes: int, image_size: int = 224) -> nn.Module:
    """`model_cfg.arch` with `num_classes` outputs and fresh weights. `image_size` is the side a
    fixed-size model (ViT, MaxViT) is built for: the train crop."""
    check_options(model_cfg)
    if num_classes < 1:
        raise ConfigError(
            f"the model needs at least 1 class, got {num_classes}: check the data or "
            "model.num_classes"
        )
    if model_cfg.arch in ALEXNET_VARIANTS:
        model = build_alexnet(model_cfg, num_classes)
    else:
        model = build_torchvision(model_cfg, num_classes, image_size)
    if model_cfg.blurpool and not apply_blurpool(model):
        raise ConfigError(f"model.blurpool found no strided conv to blur in {model_cfg.arch}")
    return model


def check_options(model_cfg: ModelConfig) -> None:
    """The `model.*` keys against `model.arch`, without building anything (the demo and the
    trainer call it before any data is read)."""
    arch = model_cfg.arch
    check_arch(arch)
    if model_cfg.dropout >= 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {model_cfg.dropout}")
    if arch in ALEXNET_VARIANTS:
        if model_cfg.width_mult <= 0:
            raise ConfigError(f"model.width_mult must be positive, got {model_cfg.width_mult}")
        if model_cfg.classifier_width < 1:
            raise ConfigError(
                f"model.classifier_width must be positive, got {model_cfg.classifier_width}"
            )
        if model_cfg.zero_init_residual:
            raise ConfigError("model.zero_init_residual applies to resnet, resnext, wide_resnet")
        return
    alexnet_only = {
        "model.width_mult": model_cfg.width_mult != 1.0,
        "model.classifier_width": model_cfg.classifier_width != 4096,
        "model.kaiming_init": model_cfg.kaiming_init,
    }
    for key, changed in alexnet_only.items():
        if changed:
            raise ConfigError(
                f"{key} applies to the alexnet variants only; {arch} is built as torchvision "
                f"defines it: remove {key} from the config"
            )
    if model_cfg.transform_input and arch not in AUX_FAMILIES:
        raise ConfigError("model.transform_input applies to inception_v3 and googlenet only")
    if model_cfg.zero_init_residual and not arch.startswith(RESIDUAL_FAMILIES):
        raise ConfigError(
            f"model.zero_init_residual applies to resnet, resnext and wide_resnet, not {arch}"
        )


def build_torchvision(model_cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    arch = model_cfg.arch
    kwargs: dict = {"num_classes": num_classes}
    if model_cfg.dropout >= 0:
        kwargs["dropout"] = model_cfg.dropout
    if arch in AUX_FAMILIES:
        # init_weights: torchvision's own init, said explicitly (it warns otherwise);
        # transform_input re-normalizes to the TF convention the ported weights expect
        kwargs.update(aux_logits=True, init_weights=True, transform_input=model_cfg.transform_input)
    if model_cfg.zero_init_residual:
        kwargs["zero_init_residual"] = True
    if arch.startswith("vit_"):
        kwargs["image_size"] = image_size
    if arch.startswith("maxvit"):
        kwargs["input_size"] = (image_size, image_size)
    try:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except TypeError as err:
        if "dropout" in str(err):
            raise ConfigError(
                f"model.dropout does not apply to {arch} (its torchvision builder takes no "
                "dropout): leave it at -1"
            ) from None
        raise
