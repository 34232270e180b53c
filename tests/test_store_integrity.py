"""Crash safety of the store writer, proven by killing it at every operation of an append.

A forked child appends a batch and SIGKILLs itself right before its k-th file-system or
HDF5 call (for every k until the append finishes untouched); each broken store must then
resume and finish byte-identical, file by file, to the same store continued without a kill.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from interp.store import ActivationStore, ItemRecord, StoreWriter

LAYERS = ["embed", "0", "1"]
D = 8

# Every call that can touch a file: h5py's (the HDF5 library writes only through these) and
# the os-level ones a writer may use. Killing before call k, for every k, also kills after
# call k - 1, so each boundary between two operations is a kill point.
PATCHED = {
    h5py.File: ["__init__", "close", "flush"],
    h5py.Group: ["create_dataset", "create_group", "require_group", "__setitem__", "__delitem__",
                 "create_virtual_dataset", "copy", "move"],
    h5py.Dataset: ["__setitem__", "resize", "write_direct"],
    h5py.AttributeManager: ["__setitem__", "create", "modify", "__delitem__"],
    os: ["open", "write", "pwrite", "fsync", "fdatasync", "close", "replace", "rename", "unlink", "remove", "rmdir",
         "mkdir", "makedirs", "truncate", "ftruncate", "link", "symlink"],
    shutil: ["rmtree", "move", "copyfile", "copy2", "copytree"],
}


def record(i: int, rng, n: int | None = None) -> ItemRecord:
    n = n or 2 + i % 4
    return ItemRecord(
        id=f"i{i}", row={"id": f"i{i}", "audio": "x.wav", "task": "agnews", "label": ["World", "Sports"][i % 2],
                          "transcript": "a transcript with ünïcode " * (1 + i % 3), "snr_db": None if i % 2 else 5.0},
        resid={layer: rng.standard_normal((n, D)).astype(np.float32) for layer in LAYERS},
        token_id=np.arange(n), index=np.arange(n), is_audio=np.arange(n) % 2 == 0,
        time_start=np.where(np.arange(n) % 2 == 0, np.arange(n) * 0.04, np.nan),
        time_end=np.where(np.arange(n) % 2 == 0, np.arange(n) * 0.04 + 0.04, np.nan), audio_seconds=1.0 + i,
        truncated=bool(i % 5 == 4))


def batches():
    rng = np.random.default_rng(0)
    recs = [record(i, rng) for i in range(9)]
    return recs[:3], recs[3:6], recs[6:]


def new_store(folder: Path, first) -> Path:
    folder.mkdir(parents=True)
    path = folder / "s.h5"
    w = StoreWriter.create(path, {"model_path": "m", "positions": "all", "batch_size": 3}, LAYERS, D, "float16")
    w.append(first)
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def contents(path: Path) -> dict:
    """Everything a reader can see, as comparable values."""
    with ActivationStore(path) as s:
        out = {"n": s.n_items, "complete": s.complete, "attrs": {k: str(v) for k, v in s.attrs.items()},
               "offsets": s.offsets.tolist()}
        for name, v in s.items.items():
            out[f"items/{name}"] = [str(x) for x in v]
        for name, v in s.positions.items():
            out[f"positions/{name}"] = np.asarray(v).tobytes()
        for layer in s.layers:
            out[f"resid/{layer}"] = s.read(layer, dtype=np.float16).tobytes()
    return out


def arm(k: int) -> None:
    """In this process, SIGKILL right before the k-th patched call."""
    count = [0]

    def wrap(owner, name):
        orig = getattr(owner, name)

        def call(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(*args, **kwargs)

        setattr(owner, name, call)

    for owner, names in PATCHED.items():
        for name in names:
            if hasattr(owner, name):
                wrap(owner, name)


def in_child(fn) -> int:
    """Run fn in a forked child; its exit status, or -signal if a signal ended it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def finish_from(path: Path, rest) -> None:
    w = StoreWriter(path)
    n = w.resume()
    todo = [r for b in rest for r in b][n - 3:]  # the first batch (3 items) is committed before any kill
    for s in range(0, len(todo), 3):
        w.append(todo[s:s + 3])
    w.finish()


@pytest.fixture
def fast_tmp(tmp_path):
    """A folder on tmpfs where there is one: the sweeps fsync a lot, and what they test is the
    order of operations, not the disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="interp-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep(tmp_path: Path, work, resume) -> int:
    """Kill `work(path)` before each of its operations in turn; after each kill `resume(path)`
    must give exactly the files and contents of an uninterrupted run. Returns the number of
    kill points tried."""
    first, second, third = batches()
    base = new_store(tmp_path / "base", first)
    ref = Path(shutil.copytree(tmp_path / "base", tmp_path / "ref")) / base.name
    finish_from(ref, [second, third])
    want_files, want = files_of(tmp_path / "ref"), contents(ref)
    assert want["n"] == 9 and want["complete"]

    failures, k = [], 0
    while True:
        k += 1
        assert k < 1000, "the work never finished"
        path = Path(shutil.copytree(tmp_path / "base", tmp_path / f"k{k}")) / base.name
        status = in_child(lambda: work(path, lambda: arm(k)))
        if status == 0:
            break  # k is past the last operation: the work ran whole
        assert status == -signal.SIGKILL
        try:
            resume(path)
            got = contents(path)
        except Exception as e:  # a store the kill made unusable
            failures.append(f"kill before operation {k}: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        if got != want:
            failures.append(f"kill before operation {k}: resumed contents differ in "
                            f"{sorted(x for x in want if got.get(x) != want[x])}")
        elif files_of(tmp_path / f"k{k}") != want_files:
            failures.append(f"kill before operation {k}: files differ from an uninterrupted run")
        shutil.rmtree(tmp_path / f"k{k}")
    assert not failures, f"{len(failures)} of {k - 1} kill points broke the store:\n" + "\n".join(failures)
    return k - 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_every_operation_of_an_append_then_resume_is_byte_identical(fast_tmp):
    _, second, third = batches()

    def work(path, arm_now):
        arm_now()
        StoreWriter(path).append(second)

    assert sweep(fast_tmp, work, lambda path: finish_from(path, [second, third])) > 10


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_every_operation_of_finishing_then_resume_is_byte_identical(fast_tmp):
    _, second, third = batches()

    def work(path, arm_now):
        w = StoreWriter(path)
        w.append(second)
        w.append(third)
        arm_now()
        w.finish()

    def resume(path):
        w = StoreWriter(path)
        assert w.resume() == 9
        w.finish()

    assert sweep(fast_tmp, work, resume) > 10
