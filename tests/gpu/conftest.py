"""GPU tests (`pytest tests/gpu`, run by `make gpu-check`): skipped with their reason on a machine
without CUDA (tests/conftest.py), and without DALI where they need it.

cuBLAS picks its reduction order per workspace: a fixed workspace (set here, before any test
touches cuBLAS) is one of the two conditions for bit-identical GPU runs; the other is
torch.use_deterministic_algorithms, which the resume test turns on for its own runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, str(Path(__file__).parent))

from gpu_fixtures import gpu_data, nccl_world_of_one  # noqa: F401 (fixtures, by name)
