"""Weights from local files: model.init_from (every tensor must fit) and model.finetune (all but
the head, which is re-initialized for the new classes). Nothing is ever downloaded.

    load_weights(model, "resnet50-torchvision.pth", "resnet50")      # a torchvision state_dict
    load_for_finetune(model, "runs/x/checkpoints/best.pt", "features", "resnet50")
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.checkpoint import load_checkpoint
from pipeline.errors import ConfigError
from pipeline.models.heads import apply_freeze, head_paths, is_under

logger = logging.getLogger(__name__)

# Auxiliary classifiers a state_dict may lack (saved from a model built with aux_logits=False):
# they start fresh, with a warning, instead of refusing the file.
AUX_ROOTS = ["AuxLogits", "aux1", "aux2"]


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


def mismatch(own: dict, given: dict, fresh: list[str]) -> str:
    """The first way `given` does not fit `own` ("" when it fits); keys under `fresh` may be
    missing from `given`."""
    missing = sorted(k for k in set(own) - set(given) if not is_under(k, fresh))
    unexpected = sorted(set(given) - set(own))
    mismatched = [k for k in own if k in given and own[k].shape != given[k].shape]
    if missing:
        return f"missing {missing[:3]}"
    if unexpected:
        return f"unexpected {unexpected[:3]}"
    if mismatched:
        key = mismatched[0]
        return f"shape of {key} is {tuple(given[key].shape)}, model has {tuple(own[key].shape)}"
    return ""


def load_weights(model: nn.Module, path: str | Path, arch: str = "alexnet") -> None:
    """model.init_from: every parameter and buffer must match by name and shape (auxiliary
    classifiers the file lacks start fresh)."""
    state = read_weights(path)
    own = model.state_dict()
    detail = mismatch(own, state, AUX_ROOTS)
    if detail:
        raise ConfigError(
            f"weights in {path} do not fit model.arch={arch} (arch, widths, num_classes): {detail}"
        )
    fresh = sorted({k.split(".")[0] for k in set(own) - set(state)})
    model.load_state_dict(state, strict=not fresh)
    if fresh:
        logger.warning("%s has no %s: those auxiliary heads start fresh", path, ", ".join(fresh))
    logger.info("loaded weights from %s", path)


def load_for_finetune(
    model: nn.Module, path: str | Path, freeze: str, arch: str = "alexnet"
) -> None:
    """model.finetune: load everything but the head(s), which keep their fresh initialization
    for the new classes; then freeze as model.freeze says."""
    state = read_weights(path)
    heads = head_paths(model, arch)
    body = {k: v for k, v in state.items() if not is_under(k, heads)}
    own = {k: v for k, v in model.state_dict().items() if not is_under(k, heads)}
    detail = mismatch(own, body, AUX_ROOTS)
    if detail:
        raise ConfigError(
            f"model.finetune={path} does not fit model.arch={arch} (the same arch and widths are "
            f"needed): {detail}"
        )
    model.load_state_dict(body, strict=False)
    apply_freeze(model, arch, freeze)
    logger.info(
        "fine-tuning %s from %s: %s re-initialized for the new classes, freeze=%s",
        arch,
        path,
        ", ".join(heads),
        freeze,
    )
