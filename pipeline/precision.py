"""Numeric precision of a run: which one `auto` means on this device, and its autocast context.

precision = resolve_precision(cfg.train.precision, device)   # auto -> bf16 | fp16 | fp32
autocast = build_autocast(precision, device)                  # a factory: `with autocast():`
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch

from pipeline.errors import ConfigError

Precision = Literal["bf16", "fp16", "fp32"]


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """auto → bf16 on CUDA GPUs that support it (fp16 + GradScaler on older ones), fp32 on CPU.

    An explicit bf16 on a GPU without native bf16 is a ConfigError. torch counts emulated bf16
    as supported (sm75 says True), and emulation is slower than fp16 + GradScaler there, so only
    native support counts."""
    native_bf16 = device.type == "cuda" and has_native_bf16()
    if precision == "bf16" and device.type == "cuda" and not native_bf16:
        raise ConfigError(
            "train.precision=bf16 but this GPU has no native bf16 (Ampere or newer has it): use "
            "fp16 or auto"
        )
    if precision != "auto":
        return precision  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if native_bf16 else "fp16"
    return "fp32"


def has_native_bf16() -> bool:
    """bf16 in hardware (sm80+), not the emulation torch's default also counts."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def configure_device(device: torch.device) -> None:
    """Process-wide settings for training on `device`: cuDNN autotuning on CUDA (the input
    shape is fixed per resolution, so the search pays off after the first steps)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def build_autocast(
    precision: Precision, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts (fresh each use) for the resolved precision."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
