"""Writing a store: `StoreWriter` appends batches of items, each append one commit.

Each batch is built as an HDF5 image in memory, written to a temporary name with plain os
calls, fsynced and renamed into the parts folder; then the index (items table and the list of
parts) is rebuilt in memory and renamed over the old one: that rename is the commit. See the
package docstring for why, and docs/store.md for the layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from interp.errors import InterpError, io_error
from interp.store.layout import (FORMAT, FORMAT_VERSION, ITEM_FIELDS, POSITION_FIELDS, ItemRecord, attr_value, cleanup,
                                 decode_strings, file_image, human_size, index_image, item_columns, memory_file,
                                 parts_folder, plain_attrs, referenced_parts, remove_path, set_attrs, write_items)

class StoreWriter:
    """Appends batches of items to a store; each `append` is one commit (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, _index: Path | None = None):
        self.path = Path(path)
        self.index_path = _index or self.path
        self._load()

    # ---- opening -------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            with h5py.File(self.index_path, "r") as f:
                attrs = plain_attrs(f.attrs)
                if attrs.get("format") != FORMAT:
                    raise InterpError(f"{self.path} is not an interp activation store; choose another --out or pass --overwrite")
                version = int(attrs.get("format_version", 0))
                if version < 2:
                    raise InterpError(f"{self.path} was written by an older interp (store format {version}), which this "
                                      "version cannot append to; it stays readable, or trace it again with --overwrite")
                if version > FORMAT_VERSION:
                    raise InterpError(f"{self.path} has store format {version}; this interp writes up to {FORMAT_VERSION}: upgrade interp")
                n = int(f["items/offsets"].shape[0]) - 1
                columns = {name: decode_strings(f["items"][name][()]) if name in f["items"] else [""] * n
                           for name in ITEM_FIELDS}
                offsets = f["items/offsets"][()].astype(np.int64)
                parts = [] if attrs.get("layout") == "single" else list(zip(
                    decode_strings(f["parts/file"][()]), f["parts/n_items"][()].tolist(), f["parts/n_rows"][()].tolist()))
        except InterpError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise InterpError(f"cannot open {self.path} to append ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              "use --overwrite to start again") from None
        self.attrs = attrs
        self.layers: list[str] = json.loads(attrs["layers"])
        self.d_model = int(attrs["d_model"])
        self.dtype = str(attrs["dtype"])
        self.store_id = str(attrs.get("store_id", ""))
        self.complete = bool(attrs.get("complete"))
        self.columns = {k: list(v) for k, v in columns.items()}
        self.offsets = [int(x) for x in offsets]
        self.parts = parts
        self.n_items = len(self.offsets) - 1
        self.parts_dir = parts_folder(self.path, self.store_id)

    @classmethod
    def create(cls, path: str | os.PathLike, attrs: dict, layers: Sequence[str], d_model: int, dtype: str,
               chunk_rows: int = 256, replace: bool = False) -> "StoreWriter":
        """Start an empty store at `path`.

        With `replace`, an existing `path` stays as it is until `finish`: the new store is
        built beside it (a hidden staging index and its own parts folder) and only the
        finished store is renamed over the old one. `chunk_rows` is kept for callers of the
        older API; the finished store's activations are contiguous.
        """
        path = Path(path)
        if path.is_dir():
            raise InterpError(f"{path} is a folder; give a file path for the store, e.g. {path / 'acts.h5'}")
        store_id = secrets.token_hex(6)
        index = path.parent / f".{path.name}.staging-{store_id}" if replace else path
        keep = {referenced_parts(path)} if replace else set()
        cleanup(path, keep_parts=keep)
        parts_dir = parts_folder(path, store_id)
        try:
            parts_dir.mkdir(parents=True)
        except OSError as e:
            err = io_error(e, path.parent)
            raise (err if isinstance(err, InterpError) else InterpError(
                f"cannot write {path}: {e.strerror}; choose a writable output path")) from None
        meta = {k: attr_value(v) for k, v in attrs.items()}
        meta.update(format=FORMAT, format_version=FORMAT_VERSION, layout="parts", store_id=store_id,
                    parts_folder=parts_dir.name, layers=json.dumps(list(layers)), d_model=int(d_model), dtype=dtype,
                    n_items=0, complete=False)
        columns = {name: [] for name in ITEM_FIELDS}
        from interp.atomic import write_durable

        write_durable(index, index_image(meta, columns, [0], []))
        return cls(path, _index=index)

    def resume(self) -> int:
        """Remove what an interrupted append left behind; return the number of committed items."""
        cleanup(self.path, keep_parts={self.parts_dir.name} if not self.complete else set(),
                 keep_files={self.index_path.name})
        if not self.complete and self.parts_dir.is_dir():
            committed = {name for name, _, _ in self.parts}
            for p in self.parts_dir.iterdir():
                if p.name not in committed:
                    remove_path(p)
        return self.n_items

    # ---- writing -------------------------------------------------------------------------

    def append(self, records: Sequence[ItemRecord]) -> None:
        """Commit one batch of items: a new part file, then the index naming it."""
        if not records:
            return
        from interp.atomic import write_durable

        if self.complete:
            self._reopen()

        counts = [len(r.token_id) for r in records]
        n_rows = int(sum(counts))
        name = f"part-{len(self.parts):06d}.h5"
        cols = item_columns(records)
        write_durable(self.parts_dir / name, self._part_image(records, cols, counts), resumable=True,
                      where=self.path.parent)
        columns = {k: self.columns[k] + cols[k] for k in ITEM_FIELDS}
        offsets = self.offsets + (self.offsets[-1] + np.cumsum(counts)).tolist()
        parts = self.parts + [(name, len(records), n_rows)]
        meta = dict(self.attrs, n_items=len(offsets) - 1)
        # The commit point: until this rename, readers and resume see the previous index.
        write_durable(self.index_path, index_image(meta, columns, offsets, parts), resumable=True)
        self.attrs, self.columns, self.offsets, self.parts = meta, columns, offsets, parts
        self.n_items = len(offsets) - 1

    def _reopen(self) -> None:
        """Extend a finished store: it becomes the first part of a running one. It is linked
        (or copied) into a new parts folder, never modified, and the new index renamed over it."""
        from interp.atomic import fsync_dir, write_durable

        store_id = self.store_id or secrets.token_hex(6)
        parts_dir = parts_folder(self.path, store_id)
        cleanup(self.path, keep_parts=set())
        try:
            parts_dir.mkdir(parents=True)
            first = parts_dir / "part-000000.h5"
            try:
                os.link(self.path, first)
            except OSError:
                shutil.copyfile(self.path, first)
            fsync_dir(parts_dir)
        except OSError as e:
            remove_path(parts_dir)
            err = io_error(e, self.path.parent, resumable=True)
            raise (err if isinstance(err, InterpError) else e) from None
        parts = [(first.name, self.n_items, self.offsets[-1])] if self.n_items else []
        if not self.n_items:
            remove_path(first)
        meta = dict(self.attrs, layout="parts", parts_folder=parts_dir.name, store_id=store_id, complete=False)
        write_durable(self.path, index_image(meta, self.columns, self.offsets, parts), resumable=True)
        self.attrs, self.parts, self.store_id, self.parts_dir, self.complete = meta, parts, store_id, parts_dir, False

    def _part_image(self, records, cols, counts) -> bytes:
        size = sum(x.nbytes for r in records for x in r.resid.values()) + 64 * int(sum(counts))
        with memory_file(size) as f:
            set_attrs(f, dict(store_id=self.store_id, part=len(self.parts), first_item=self.n_items,
                               first_row=self.offsets[-1]))
            write_items(f, cols, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            pos = f.create_group("positions")
            for name, dt in POSITION_FIELDS.items():
                pos.create_dataset(name, data=np.concatenate([np.asarray(getattr(r, name)) for r in records]).astype(dt))
            resid = f.create_group("resid")
            for layer in self.layers:
                x = np.concatenate([r.resid[layer] for r in records]).astype(self.dtype, copy=False)
                if x.ndim != 2 or x.shape[1] != self.d_model:
                    raise InterpError(f"layer {layer} rows have shape {x.shape[1:]}, not ({self.d_model},) as the store")
                resid.create_dataset(layer, data=x)
            return file_image(f)

    def finish(self) -> None:
        """Copy the parts into one self-contained file renamed over the index (an atomic replace)."""
        if self.complete:
            return
        meta = dict(self.attrs, layout="single", complete=True, n_items=self.n_items)
        for key in ("parts_folder",):
            meta.pop(key, None)
        sources = [(self.parts_dir / name, rows) for name, _, rows in self.parts]
        write_single(self.path, meta, self.columns, self.offsets, sources, self.layers, self.d_model, self.dtype)
        self.complete, self.attrs, self.index_path = True, meta, self.path
        cleanup(self.path, keep_parts=set())

    def abandon(self) -> None:
        """Drop a staged replacement (`create(..., replace=True)`) that will not be finished."""
        if self.index_path != self.path and not self.complete:
            remove_path(self.index_path)
            remove_path(self.parts_dir)

    def ids(self) -> list[str]:
        return list(self.columns["id"])


#: rows copied at a time when joining files: bounded memory whatever a source holds
COPY_BYTES = 256 << 20


def write_single(path: Path, meta: dict, columns: dict, offsets: Sequence[int], sources: Sequence[tuple[Path, int]],
                 layers: Sequence[str], d_model: int, dtype: str) -> None:
    """Write a finished (single-file) store at `path` from `sources`, files holding the rows in
    order (`positions/...`, `resid/LAYER`: a store's parts, or finished stores) with their row
    counts: built in a temporary file, fsynced and renamed over `path` (an atomic replace)."""
    from interp.atomic import fsync_dir

    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    need = sum(Path(p).stat().st_size for p, _ in sources) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise InterpError(f"no space left on device at {path.parent}: writing {path.name} needs "
                          f"{human_size(need)} free, {human_size(free)} are; free space and rerun with --resume")
    try:
        with h5py.File(tmp, "w") as f:
            set_attrs(f, meta)
            write_items(f, columns, np.asarray(offsets, dtype=np.int64))
            n = int(offsets[-1])
            targets = {f"positions/{k}": f.create_dataset(f"positions/{k}", shape=(n,), dtype=dt)
                       for k, dt in POSITION_FIELDS.items()}
            targets.update({f"resid/{layer}": f.create_dataset(f"resid/{layer}", shape=(n, d_model), dtype=dtype)
                            for layer in layers})
            start = 0
            for source, rows in sources:
                with h5py.File(source, "r") as part:
                    for key, ds in targets.items():
                        step = max(1, COPY_BYTES // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
                        for a in range(0, rows, step):
                            b = min(rows, a + step)
                            ds[start + a:start + b] = part[key][a:b]
                start += rows
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            err = io_error(e, path.parent, resumable=True)
            if isinstance(err, InterpError):
                raise err from None
            raise
        # h5py reports a failed write without an errno: tell a full disk by the free space
        if "No space left" in str(e) or shutil.disk_usage(path.parent).free < need:
            raise InterpError(f"no space left on device at {path.parent}; free space and rerun with --resume") from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
