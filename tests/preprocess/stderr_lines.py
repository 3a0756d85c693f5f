"""What a user reads on stderr once progress logging is set aside (import from test modules).

from stderr_lines import problem_lines   # tests/preprocess is on sys.path
"""

from __future__ import annotations

import re

PROGRESS = re.compile(r"^\d\d:\d\d:\d\d (INFO|DEBUG) ")


def problem_lines(stderr: str) -> list[str]:
    """The stderr lines that are not INFO/DEBUG progress records: the error, and anything else."""
    return [line for line in stderr.splitlines() if not PROGRESS.match(line)]
