"""One error type for everything a user can get wrong.

The CLI boundary catches `AdsError` and prints its one-line message with exit code 2. Library
code raises it with a message that names the file and line, or the option, and the problem.
"""

from __future__ import annotations


class AdsError(Exception):
    """Bad input, bad usage or an unreachable source: the user can fix it."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())
