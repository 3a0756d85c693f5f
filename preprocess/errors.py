"""Errors a user can cause: the CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """Bad input: say what was received, what was expected, and what to do."""
