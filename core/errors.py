"""The one root of every error a user can cause, and the exit codes the CLIs report them with.

    from core.errors import EXIT_USAGE, UserError
    raise UserError(f"--shard-size must be >= 1, got {shard_size}")

`UserError` is the root for the whole project: preprocess raises it (and `ManifestError`, its
subclass in core.shard_format, for shard directories), and the user-facing errors of pipeline/
and launch/ derive from it. Every entry point prints one as a single line on stderr and exits
EXIT_USAGE; any other exception is a bug and keeps its traceback. A bad input image is not one
of these: see `preprocess.images.BadImage`.
"""

EXIT_USAGE = 2  # bad input: one line on stderr says what was received, expected, and what to do
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT): 128 + 2, the shell's convention


class UserError(Exception):
    """Bad input: say what was received, what was expected, and what to do.

    One line even when raised in a DataLoader worker: torch re-raises a worker's exception in
    the main process as `type(err)("Caught ... in DataLoader worker process N.\nOriginal
    Traceback ...: <message>")`; the original message stays str(err), the rest goes to
    `.worker_report`.
    """

    def __init__(self, message: str = "") -> None:
        self.worker_report = ""
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            marker = f"{type(self).__name__}: "
            last = [line for line in message.splitlines() if marker in line]
            if last:
                self.worker_report = message
                message = last[-1].split(marker, 1)[1]
        super().__init__(message)
