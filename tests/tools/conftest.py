"""Make `import tools` work from every pytest entry point.

tools/ is not an installed package (pyproject.toml installs preprocess, pipeline and launch), so
`python -m pytest` finds it through the working directory but `pytest` / `uv run pytest` do not,
and would import tests/tools itself as a namespace package `tools`. Until pyproject.toml lists
tools (or sets pytest's `pythonpath = ["."]`), put the repository root first on sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
