"""A trained model from a run's checkpoint: the model (raw or EMA weights) in eval mode, the run's
config (and so its val transform), and its class names. What predict and export start from.

    trained = load_trained_model(Path("runs/alexnet/checkpoints/best.pt"), weights="auto")
    logits = trained.model(normalize(images))     # images: uint8 [B, 3, val_crop, val_crop]

The config is the checkpoint's own (every checkpoint holds the resolved config), else the run's
config.yaml beside `checkpoints/`. Class names are the checkpoint's (`class_names`, written
since predict exists), else read again from the run's train data, else the WNIDs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline.config import Config, build_config, load_config
from pipeline.data.classes import resolve_classes
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Augmentation
from pipeline.errors import CheckpointError, UserError
from pipeline.models import build_model, resolve_num_classes
from pipeline.models.weights import clean_state_dict

logger = logging.getLogger(__name__)

WeightsChoice = Literal["auto", "raw", "ema"]  # auto: the weights eval.best_metric followed


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    model: nn.Module  # eval mode, on the CPU, float32
    state: dict[str, torch.Tensor]  # its state_dict, keys as torchvision names them
    cfg: Config  # the run's resolved config
    weights: Literal["raw", "ema"]
    source: Path  # the checkpoint
    wnids: tuple[str, ...]  # the data's classes in index order
    class_names: tuple[str, ...]  # one per model output; outputs past the data's: "class N"
    step: int  # the optimizer step the checkpoint was written at

    @property
    def arch(self) -> str:
        return self.cfg.model.arch

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> int:
        """The side, pixels, of the square crop the model was evaluated at (data.val_crop)."""
        return self.cfg.data.val_crop

    def augmentation(self) -> Augmentation:
        """The run's val transform: short side to data.val_resize, center crop data.val_crop."""
        return Augmentation.from_config(self.cfg.data)

    def describe(self) -> dict[str, Any]:
        """What an export records beside the weights (as plain values)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "wnids": list(self.wnids),
            "input_size": self.input_size,
            "val_resize": self.cfg.data.val_resize,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "input": "float32 [B, 3, H, W] RGB, (pixels / 255 - mean) / std",
            "weights": self.weights,
            "step": self.step,
        }


def load_trained_model(path: Path, weights: WeightsChoice = "auto") -> TrainedModel:
    """The model a pipeline.train checkpoint holds; one CheckpointError line when it cannot."""
    path = Path(path)
    fix = "pass a run's RUN_DIR/checkpoints/best.pt or last.pt"
    data = ckpt.load_training_checkpoint(path, fix)
    cfg = read_run_config(path, data)
    chosen = choose_weights(path, data, cfg, weights)
    state = clean_state_dict(data[chosen] if chosen == "ema" else data["model"])
    wnids = tuple(data.get("classes") or ())
    num_classes = resolve_num_classes(cfg.model, len(wnids))
    model = build_model(cfg.model, num_classes, image_size=cfg.data.train_crop)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        raise CheckpointError(
            f"{path}: its {chosen} weights do not fit model.arch={cfg.model.arch} as its config "
            f"builds it ({detail[1].strip() if len(detail) > 1 else detail[0]})"
        ) from None
    model.eval()
    names = read_class_names(data, cfg, wnids)
    names += [f"class {index}" for index in range(len(names), num_classes)]
    return TrainedModel(
        model=model,
        state=state,
        cfg=cfg,
        weights=chosen,
        source=path,
        wnids=wnids,
        class_names=tuple(names),
        step=int(data.get("step", 0)),
    )


def read_run_config(path: Path, data: dict[str, Any]) -> Config:
    """The checkpoint's resolved config, else RUN_DIR/config.yaml (RUN_DIR/checkpoints/X.pt)."""
    if isinstance(data.get("config"), dict):
        try:
            return build_config(data["config"])
        except UserError as err:
            raise CheckpointError(f"{path}: its saved config does not load here: {err}") from None
    beside = path.resolve().parent.parent / "config.yaml"
    if beside.is_file():
        return load_config(beside)
    raise CheckpointError(
        f"{path} holds no config and {beside} does not exist: keep the checkpoint in its run dir"
    )


def choose_weights(
    path: Path, data: dict[str, Any], cfg: Config, weights: WeightsChoice
) -> Literal["raw", "ema"]:
    has_ema = isinstance(data.get("ema"), dict)
    if weights == "auto":
        return "ema" if has_ema and cfg.eval.best_metric == "val/ema_top1" else "raw"
    if weights == "ema" and not has_ema:
        raise CheckpointError(
            f"{path} holds no weight EMA (the run had train.ema_decay=0): use --weights raw"
        )
    return weights


def read_class_names(data: dict[str, Any], cfg: Config, wnids: tuple[str, ...]) -> list[str]:
    """The checkpoint's class names; older checkpoints: the run's data's, else the WNIDs."""
    names = data.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == len(wnids):
        return [str(name) for name in names]
    try:
        classes = resolve_classes(cfg)
    except UserError:
        logger.warning("no class names in the checkpoint or the run's data: showing WNIDs")
        return list(wnids)
    if tuple(classes.wnids) != wnids:
        return list(wnids)
    return classes.display_names()
