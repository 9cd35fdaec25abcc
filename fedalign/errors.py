"""One exception type for bad user input.

The CLI turns a `UsageError` into one line on stderr and exit code 2, so every
check in the library can raise it with a message that names the problem and
the fix, without knowing whether it runs under the CLI, a test or a notebook.
"""


class UsageError(ValueError):
    """Bad input from a user: the message says what is wrong and how to fix it."""


def check(condition: bool, message: str) -> None:
    """Raise `UsageError(message)` unless `condition` holds."""
    if not condition:
        raise UsageError(message)
