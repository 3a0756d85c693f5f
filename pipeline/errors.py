"""Errors a user can cause, and the exit codes every entry point returns.

Every such error descends from one root, `core.errors.UserError` (the root lives in the
first stage because `preprocess` never imports `pipeline`). Entry points catch `UserError`, print
its first line as `error: ...` on stderr and exit with EXIT_USAGE; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from core.errors import EXIT_USAGE, UserError

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_USAGE",  # 2: bad config, paths, data or checkpoint; one line on stderr
    "CheckpointError",
    "ConfigError",
    "LoaderError",
    "SampleDecodeError",
    "UserError",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # `--check` ran and a check failed
EXIT_STOPPED = 75  # EX_TEMPFAIL, "try again": stopped by a signal after a resumable checkpoint


class ConfigError(UserError):
    """A config file or override a user wrote is wrong; the message says how to fix it."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, needs more than weights_only loading, or does not
    fit the model or optimizer this config builds."""


class LoaderError(UserError):
    """A data path, config or installation problem a user can fix; the message says how."""


class SampleDecodeError(LoaderError):
    """An image that does not decode: one line with the file (or shard and key), the reason and
    what to do, even when raised in a DataLoader worker (`UserError` keeps torch's report aside
    in `.worker_report`)."""


def first_line(err: BaseException) -> str:
    """What an entry point prints for a user error: its first line, or its type."""
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__
