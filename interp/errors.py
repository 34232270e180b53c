"""User-facing errors.

`InterpError` carries one line that names the problem and the fix. The CLI prints it
without a traceback and exits non-zero; library callers can catch it like any exception.
"""


class InterpError(Exception):
    """Bad input or an unusable environment, described in one line for the user."""
