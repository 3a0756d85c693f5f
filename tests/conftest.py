"""Shared pytest set-up: CPU only, offline W&B, and clean skips for gpu/slurm/dali tests.

Fixtures that build tiny ImageNet layouts live next to the tests that use them
(tests/preprocess, tests/data, tests/train, tests/slurm).
"""

from __future__ import annotations

import os
import shutil

import pytest

# No test ever talks to the network; W&B runs the real client in offline mode.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    has_slurm = shutil.which("slurmctld") is not None and shutil.which("munged") is not None
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    skip_slurm = pytest.mark.skip(
        reason="slurm-wlm/munge not installed (make test installs them as root)"
    )
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slurm" in item.keywords and not has_slurm:
            item.add_marker(skip_slurm)
