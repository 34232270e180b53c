"""User-facing errors and warnings.

`InterpError` carries one line that names the problem and the fix. The CLI prints it
without a traceback and exits non-zero; library callers can catch it like any exception.
`InterpWarning` is for things the user should know but that do not stop the work (a store
traced in another dtype, a cut-off line dropped on resume); the CLI prints each as one line.
`io_error` turns an OSError met while writing a path into such a line, so a full disk or a
read-only folder reads the same wherever it happens.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path


class InterpError(Exception):
    """Bad input or an unusable environment, described in one line for the user."""


class InterpWarning(UserWarning):
    """Something worth a line on the terminal that does not stop the work."""


def warn(message: str) -> None:
    warnings.warn(message, InterpWarning, stacklevel=2)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def io_error(e: OSError, path: str | os.PathLike, resumable: bool = False) -> InterpError | OSError:
    """The one-line InterpError for a full disk or an unwritable output at `path`; other
    OSErrors come back unchanged (they are not the user's to fix)."""
    where = Path(path)
    if e.errno in DISK_FULL:
        rerun = "rerun with --resume" if resumable else "rerun"
        return InterpError(f"no space left on device at {where}; free space and {rerun}")
    if e.errno in NOT_WRITABLE:
        why = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return InterpError(f"cannot write {where}: {why}; choose a writable output path")
    return e


def path_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why `path` cannot be read as a file (missing, a folder, a symlink loop, ...), or None."""
    path = Path(path)
    try:
        if path.is_file():
            return None
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{what} {path} is a symbolic link loop"
        if e.errno == errno.ENOENT:
            if path.is_symlink():
                return f"{what} {path} is a broken symbolic link (to {os.readlink(path)})"
            return f"{what} not found: {path}"
        return f"cannot read {what} {path}: {e.strerror}"
    if path.is_dir():
        return f"{what} {path} is a folder, not a file"
    return f"{what} {path} is not a regular file"
