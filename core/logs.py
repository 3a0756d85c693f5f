"""Logging for every entry point: one handler on the root logger that writes to ``sys.stderr``.

The handler looks ``sys.stderr`` up when it emits, not when it is made, so a process that swaps
its stderr (a test capturing output, a launcher redirecting it) never logs into a closed stream,
and calling an entry point twice in one process replaces its handler rather than stacking a
second one (which ``logging.basicConfig`` would silently skip).
"""

from __future__ import annotations

import logging
import sys

QUIET_LIBRARIES = ("PIL", "matplotlib", "wandb", "urllib3", "git")


class StderrHandler(logging.StreamHandler):
    """A ``StreamHandler`` bound to the current ``sys.stderr``, whatever it is at emit time."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: int, fmt: str, datefmt: str | None = "%H:%M:%S") -> None:
    """Give the root logger one ``StderrHandler`` (replacing an earlier call's, leaving handlers
    others installed, such as a test's log capture); third parties stay at WARNING."""
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, StderrHandler):  # ours, from an earlier call; others stay
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)
