"""Numeric precision of a run: which one `auto` means on this device, its autocast context and
its GradScaler, travelling together as one `Precision`.

    precision = build_precision(cfg.train.precision, device)   # auto -> bf16 | fp16 | fp32
    with precision.autocast():                                # a fresh context each use
        loss = ...
    precision.scaler.scale(loss).backward()                   # enabled for fp16 only
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

import torch

from pipeline.errors import ConfigError

PrecisionName = Literal["bf16", "fp16", "fp32"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Precision:
    """The resolved precision on one device: autocast contexts and the step's GradScaler."""

    name: PrecisionName
    device: torch.device
    scaler: torch.amp.GradScaler  # enabled for fp16 only: bf16 and fp32 gradients do not underflow

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh autocast context for this precision (a null one for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.name])


def build_precision(setting: str, device: torch.device) -> Precision:
    """train.precision resolved on `device` (see resolve_precision), with its GradScaler."""
    name = resolve_precision(setting, device)
    return Precision(name, device, torch.amp.GradScaler(device.type, enabled=name == "fp16"))


def resolve_precision(precision: str, device: torch.device) -> PrecisionName:
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
