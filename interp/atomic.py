"""Write files and folders whole or not at all: write to a temporary sibling, then rename.

`atomic_path` and the `write_*` helpers give one file; `write_durable` does the same with
plain os calls and fsyncs (the store writer's commits, which must survive a power cut as
well as a kill); `staged_folder` builds a whole folder beside its destination and swaps it
in only when the block succeeds, so `--overwrite` never leaves a half-replaced checkpoint.
A full disk or a read-only destination becomes one InterpError line naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from interp.errors import InterpError, io_error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InterpError(f"{path} is a folder; give a file path for this output")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=parent)
    except OSError as e:
        err = io_error(e, parent)
        if isinstance(err, InterpError):
            raise err from None
        raise InterpError(f"cannot write {path}: {e.strerror}; choose a writable output path") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        err = io_error(e, path)
        if isinstance(err, InterpError):
            raise err from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json_line(r) for r in rows))


def json_line(row: dict) -> str:
    return json.dumps(json_ready(row), allow_nan=False) + "\n"


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is out (a write may be short)."""
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view[: 1 << 30]):]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durable(path: str | os.PathLike, data: bytes, resumable: bool = False,
                  where: str | os.PathLike | None = None) -> None:
    """Write `data` to `path` by a temporary sibling, fsync and rename: after a kill or a power
    cut `path` holds either its old bytes or all of `data`. Only os calls touch the disk.
    Errors name `where` (default: the folder of `path`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = io_error(e, where or path.parent, resumable)
        if isinstance(err, InterpError):
            raise err from None
        raise
    fsync_dir(path.parent)


def explain_write_failure(path: str | os.PathLike, error: Exception) -> InterpError:
    """One line for a library that failed to write `path` without saying why (libsndfile's
    "System error"): probe the folder with a plain write to learn the errno."""
    path = Path(path)
    probe = path.parent / f".{path.name}.probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, b"\0" * 65536)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        err = io_error(e, path.parent)
        if isinstance(err, InterpError):
            return err
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return InterpError(f"cannot write {path}: {first}")


def owner_tag() -> str:
    """host-pid: names temporary files and folders so a later run can tell whose they are."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}"


def is_stale(tag: str) -> bool:
    """Whether a temporary named with `owner_tag()` belongs to a process of this host that is gone."""
    host, _, pid = tag.rpartition("-")
    if host != owner_tag().rpartition("-")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False, what: str = "--out") -> Iterator[Path]:
    """Yield an empty folder beside `out`; when the block succeeds it becomes `out`.

    An existing non-empty `out` is refused unless `overwrite`; with it, the old folder is
    replaced only once the new one is complete (atomically where the kernel can exchange
    two names). A failure leaves `out` as it was.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InterpError(f"{what} {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InterpError(f"{what} {out} is not empty; choose a new folder or pass --overwrite to replace it")
    parent = out.parent
    stage = private_stage(parent, f".{out.name}.new-", out, f"choose a writable {what}")
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        if out.is_dir():
            if not _exchange(stage, out):
                backup = parent / f".{out.name}.old-{owner_tag()}"
                os.rename(out, backup)
                os.rename(stage, out)
                stage = backup
        else:
            os.rename(stage, out)
        fsync_dir(parent)
    except OSError as e:
        err = io_error(e, out)
        if isinstance(err, InterpError):
            raise err from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def private_stage(parent: Path, prefix: str, where: Path, fix: str) -> Path:
    """A new folder `parent/{prefix}{host-pid}.XXXX` of this process, after removing the ones
    that processes of this host left behind when they died; a failure is one line naming
    `where` and `fix`."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.glob(f"{prefix}*"):
            if old.is_dir() and is_stale(old.name[len(prefix):].rsplit(".", 1)[0]):
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{prefix}{owner_tag()}.", dir=parent))
    except OSError as e:
        err = io_error(e, parent)
        raise (err if isinstance(err, InterpError) else InterpError(
            f"cannot write {where}: {e.strerror}; {fix}")) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with renameat2(RENAME_EXCHANGE) (Linux); False if unavailable."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def json_ready(obj, strict: bool = True):
    """Plain JSON data, the one way everything the toolkit writes as JSON is made so: NaN and
    infinities become null (JSON has neither), numpy scalars and arrays Python numbers and
    lists, paths strings, mappings dicts, tuples lists. An object of any other type is an error
    (`strict`, the default: a bug to fix) or its `str` (for third-party values such as the
    settings of a generation config)."""
    import math
    from collections.abc import Mapping

    import numpy as np

    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v, strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_ready(v, strict) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if strict:
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
    return str(obj)


def write_safetensors(path: str | os.PathLike, tensors: dict, meta: dict) -> Path:
    """One .safetensors file of torch tensors with `meta` as JSON (key "interp"), written whole or
    not at all: how fitted objects (erasers, probes) are saved."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp),
                  metadata={"interp": json.dumps(json_ready(meta, strict=False))})
    return path


def read_safetensors(path: str | os.PathLike, what: str, format: str, version: int,
                     framework: str = "pt") -> tuple[dict, dict]:
    """(tensors, metadata) of a file `write_safetensors` wrote for a `format` of at most
    `version`; one line naming `what` for a missing, unreadable or foreign file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InterpError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework) as f:
            meta = json.loads((f.metadata() or {}).get("interp", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise InterpError(f"cannot read {what} {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if meta.get("format") != format:
        raise InterpError(f"{path} is not an interp {what} (no format='{format}' metadata)")
    if int(meta.get("format_version", 0)) > version:
        raise InterpError(f"{path} has {what} format {meta['format_version']}; this interp reads up to {version}")
    return tensors, meta
