"""Errors shown to users of the command line (a leaf module: it imports nothing of the package)."""


class CLIError(Exception):
    """A user-facing error: the CLI prints it as one line and exits with status 2."""
