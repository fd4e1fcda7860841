"""The project's user-error exception: one clear line and exit code 2, never a traceback."""
from __future__ import annotations


class UsageError(SystemExit):
    """Bad usage: the message is printed as one line and the process exits with code 2.
    (A SystemExit, so code that lets it through still stops with the message.)"""

    def __init__(self, message: str):
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])
