"""Exit codes and usage errors of the `nn-parity` command."""

from __future__ import annotations

EXIT_PASS, EXIT_DIVERGED, EXIT_USAGE, EXIT_FAULT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


EXIT_TERMINATED = 128 + 15  # SIGTERM, as 130 is 128 + SIGINT


DEFAULT_OUT = "nn-parity-report"


class UsageError(Exception):
    """Bad usage or bad input: reported in one line, exit code 2."""


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that a half-written report is removed on the way out."""
