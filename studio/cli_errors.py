"""The one funnel for bad command-line input: the error types below become one line on stderr,
"error: <flag or field>: <what is allowed / what to do>", and exit status 2. Anything else is a bug and
keeps its traceback."""

from __future__ import annotations

import argparse
import sys

from .confio import ConfigError


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


USAGE_ERRORS = (UsageError, ConfigError)  # what `report` turns into one line; nothing broader
EXIT_USAGE = 2


def one_line(text: str) -> str:
    """`text` on one line (a reader's message may hold newlines)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def report(error: BaseException) -> int:
    """Print `error` as the one `error: ...` line and return the exit status for bad input."""
    print(f"error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
    return EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """argparse whose complaints (an unknown flag, `--port abc`) are UsageErrors, not usage + exit."""

    def error(self, message: str):  # argparse calls this and expects it not to return
        raise UsageError(f"{message}; see python app.py --help")
