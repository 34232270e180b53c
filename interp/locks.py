"""Exclusive locks on outputs being written, so two runs never interleave into one file.

`OutputLock(path)` takes an `fcntl.flock` on a hidden `.NAME.lock` file beside the output
and writes into it who holds it (pid, host, command, start time). A second writer fails at
once with one line naming the holder. The kernel drops a flock when its process dies, so a
killed run never leaves a stale lock; the lock file is removed on release, and a writer that
finds the file replaced under it (removed by the previous holder) takes the new one instead.
Locks are re-entrant within a process: the CLI takes one before loading a model (to fail
fast) and the library takes the same one again around the actual writes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from interp.errors import InterpError

_HELD: dict[str, "OutputLock"] = {}


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


class OutputLock:
    """An exclusive, re-entrant lock on one output path (file or folder)."""

    def __init__(self, path: str | os.PathLike, command: str | None = None):
        path = Path(path)
        # one lock per output, whatever path names it: resolve the folder (the output itself may not exist yet)
        self.path = Path(os.path.realpath(path.parent)) / path.name
        self.file = lock_path(self.path)
        self.command = command or " ".join(["interp"] + sys.argv[1:])
        self.fd: int | None = None
        self.depth = 0

    def acquire(self) -> "OutputLock":
        key = str(self.path)
        held = _HELD.get(key)
        if held is not None and held is not self:
            held.depth += 1
            self._shared = held
            return self
        if self.fd is not None:
            self.depth += 1
            return self
        import fcntl

        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from interp.errors import io_error

            err = io_error(e, self.file.parent)
            raise (err if isinstance(err, InterpError) else InterpError(
                f"cannot write {self.path}: {e.strerror}; choose a writable output path")) from None
        for _ in range(20):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                from interp.errors import io_error

                err = io_error(e, self.file.parent)
                raise (err if isinstance(err, InterpError) else InterpError(
                    f"cannot lock {self.path}: {e.strerror}; choose a writable output path")) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(fd)
                os.close(fd)
                raise InterpError(f"{self.path} is being written by another process ({holder}); wait for it to "
                                  f"finish or stop it, then run again") from None
            # The previous holder may have removed the lock file between our open and flock:
            # then we hold a lock on an orphan inode, and must retry on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise InterpError(f"cannot lock {self.path}: its lock file keeps changing; try again")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except OSError as e:
            from interp.errors import io_error

            os.unlink(self.file)
            os.close(fd)
            err = io_error(e, self.file.parent)
            raise (err if isinstance(err, InterpError) else InterpError(
                f"cannot lock {self.path}: {e.strerror}; choose a writable output path")) from None
        self.fd, self.depth = fd, 1
        _HELD[key] = self
        return self

    def release(self) -> None:
        shared = getattr(self, "_shared", None)
        if shared is not None:
            shared.depth -= 1
            self._shared = None
            return
        if self.fd is None:
            return
        self.depth -= 1
        if self.depth > 0:
            return
        _HELD.pop(str(self.path), None)
        try:
            os.unlink(self.file)  # while still holding it, so no one locks an orphan
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}: "
            f"`{info.get('command')}`")
