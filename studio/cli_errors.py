"""The one error type the command line turns into a one-line message and exit status 2."""


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""
