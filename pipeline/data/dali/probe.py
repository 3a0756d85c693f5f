"""Whether NVIDIA DALI is importable here, and which decoder (`mixed` or `cpu`) a run uses."""

from __future__ import annotations

import torch

from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError


def import_dali():
    """The DALI modules, or a LoaderError saying how to get them."""
    try:
        from nvidia import dali
        from nvidia.dali import fn, types
    except ImportError as err:
        raise LoaderError(
            f"data.backend=dali needs NVIDIA DALI, which is not importable here ({err}): install "
            f"nvidia-dali-cuda130 (uv sync installs it on Linux) or use data.backend=folder or wds"
        ) from err
    return dali, fn, types


def resolve_decode(requested: str, dist: DistInfo) -> str:
    """'mixed' or 'cpu' from data.dali_decode and the training device."""
    on_gpu = dist.device.startswith("cuda") and torch.cuda.is_available()
    if requested == "auto":
        return "mixed" if on_gpu else "cpu"
    if requested == "mixed" and not on_gpu:
        raise LoaderError(
            "data.dali_decode=mixed decodes on the GPU (nvJPEG) but the training device is "
            f"{dist.device} (CUDA available: {torch.cuda.is_available()}): use "
            "data.dali_decode=cpu or auto"
        )
    return requested
