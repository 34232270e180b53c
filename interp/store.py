"""The activation store: residual-stream activations in HDF5, written crash-safely batch by batch.

A store is the file `acts.h5` (`format = "interp-activations"`, `format_version = 2`),
readable with plain h5py. While a trace runs, it is a small index file plus one immutable
part file per committed batch in the folder beside it (`acts.h5.parts-<store id>/`); when the
trace completes, the parts are copied into one self-contained file and the folder goes. The
full layout is in docs/store.md.

Why parts: HDF5 does not survive a kill in the middle of an in-place update (a resize, a
variable-length string write, a metadata flush at close), and such a file may open but never
be appendable again. So no file that holds committed items is ever modified. Each batch is
built as an HDF5 image in memory, written to a temporary name with plain os calls, fsynced
and renamed into the parts folder; then the index (items table and the list of parts) is
rebuilt in memory and renamed over the old one: that rename is the commit. A kill at any
point leaves the old index and its parts untouched; leftovers (an orphan part, temporary
files) are removed by the next writer. Because HDF5 itself only ever writes to memory on this
path, a full disk is an ordinary OSError from `os.write` (one line for the user), never a
crash inside the library. Finishing copies the parts into a temporary file and renames it
over the index: the same rule, one level up.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from interp.errors import InterpError, io_error

FORMAT = "interp-activations"
FORMAT_VERSION = 2
STR = h5py.string_dtype("utf-8")
ITEM_FIELDS = {"id": STR, "task": STR, "label": STR, "transcript": STR, "snr_db": "f8", "audio_seconds": "f8",
               "truncated": "bool", "n_positions": "i8", "meta": STR, "input_fingerprint": STR}
POSITION_FIELDS = {"token_id": "i8", "index": "i8", "is_audio": "bool", "time_start": "f8", "time_end": "f8"}
OPEN_PARTS = 32  #: part files a reader keeps open at once


def layer_key(layer: int | str) -> str:
    return str(layer)


@dataclass
class ItemRecord:
    """One item's rows, ready to append: activations per layer name plus position metadata."""

    id: str
    row: dict  #: the manifest row
    resid: dict[str, np.ndarray]  #: layer name -> (n_positions, d_model)
    token_id: np.ndarray
    index: np.ndarray
    is_audio: np.ndarray
    time_start: np.ndarray
    time_end: np.ndarray
    audio_seconds: float
    truncated: bool
    input_fingerprint: str = ""  #: `interp.fingerprint.input_fingerprint` of the item's audio and instruction


def parts_folder(path: Path, store_id: str) -> Path:
    return path.parent / f"{path.name}.parts-{store_id}"


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
                attrs = _plain_attrs(f.attrs)
                if attrs.get("format") != FORMAT:
                    raise InterpError(f"{self.path} is not an interp activation store; choose another --out or pass --overwrite")
                version = int(attrs.get("format_version", 0))
                if version < 2:
                    raise InterpError(f"{self.path} was written by an older interp (store format {version}), which this "
                                      "version cannot append to; it stays readable, or trace it again with --overwrite")
                if version > FORMAT_VERSION:
                    raise InterpError(f"{self.path} has store format {version}; this interp writes up to {FORMAT_VERSION}: upgrade interp")
                columns = {name: _decode(f["items"][name][()]) for name in ITEM_FIELDS}
                offsets = f["items/offsets"][()].astype(np.int64)
                parts = [] if attrs.get("layout") == "single" else list(zip(
                    _decode(f["parts/file"][()]), f["parts/n_items"][()].tolist(), f["parts/n_rows"][()].tolist()))
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
        keep = {_referenced_parts(path)} if replace else set()
        _cleanup(path, keep_parts=keep)
        parts_dir = parts_folder(path, store_id)
        try:
            parts_dir.mkdir(parents=True)
        except OSError as e:
            err = io_error(e, path.parent)
            raise (err if isinstance(err, InterpError) else InterpError(
                f"cannot write {path}: {e.strerror}; choose a writable output path")) from None
        meta = {k: _attr(v) for k, v in attrs.items()}
        meta.update(format=FORMAT, format_version=FORMAT_VERSION, layout="parts", store_id=store_id,
                    parts_folder=parts_dir.name, layers=json.dumps(list(layers)), d_model=int(d_model), dtype=dtype,
                    n_items=0, complete=False)
        columns = {name: [] for name in ITEM_FIELDS}
        from interp.atomic import write_durable

        write_durable(index, _index_image(meta, columns, [0], []))
        return cls(path, _index=index)

    def resume(self) -> int:
        """Remove what an interrupted append left behind; return the number of committed items."""
        _cleanup(self.path, keep_parts={self.parts_dir.name} if not self.complete else set(),
                 keep_files={self.index_path.name})
        if not self.complete and self.parts_dir.is_dir():
            committed = {name for name, _, _ in self.parts}
            for p in self.parts_dir.iterdir():
                if p.name not in committed:
                    _remove(p)
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
        cols = _item_columns(records)
        write_durable(self.parts_dir / name, self._part_image(records, cols, counts), resumable=True,
                      where=self.path.parent)
        columns = {k: self.columns[k] + cols[k] for k in ITEM_FIELDS}
        offsets = self.offsets + (self.offsets[-1] + np.cumsum(counts)).tolist()
        parts = self.parts + [(name, len(records), n_rows)]
        meta = dict(self.attrs, n_items=len(offsets) - 1)
        # The commit point: until this rename, readers and resume see the previous index.
        write_durable(self.index_path, _index_image(meta, columns, offsets, parts), resumable=True)
        self.attrs, self.columns, self.offsets, self.parts = meta, columns, offsets, parts
        self.n_items = len(offsets) - 1

    def _reopen(self) -> None:
        """Extend a finished store: it becomes the first part of a running one. It is linked
        (or copied) into a new parts folder, never modified, and the new index renamed over it."""
        from interp.atomic import fsync_dir, write_durable

        store_id = self.store_id or secrets.token_hex(6)
        parts_dir = parts_folder(self.path, store_id)
        _cleanup(self.path, keep_parts=set())
        try:
            parts_dir.mkdir(parents=True)
            first = parts_dir / "part-000000.h5"
            try:
                os.link(self.path, first)
            except OSError:
                shutil.copyfile(self.path, first)
            fsync_dir(parts_dir)
        except OSError as e:
            _remove(parts_dir)
            err = io_error(e, self.path.parent, resumable=True)
            raise (err if isinstance(err, InterpError) else e) from None
        parts = [(first.name, self.n_items, self.offsets[-1])] if self.n_items else []
        if not self.n_items:
            _remove(first)
        meta = dict(self.attrs, layout="parts", parts_folder=parts_dir.name, store_id=store_id, complete=False)
        write_durable(self.path, _index_image(meta, self.columns, self.offsets, parts), resumable=True)
        self.attrs, self.parts, self.store_id, self.parts_dir, self.complete = meta, parts, store_id, parts_dir, False

    def _part_image(self, records, cols, counts) -> bytes:
        size = sum(x.nbytes for r in records for x in r.resid.values()) + 64 * int(sum(counts))
        with _memory_file(size) as f:
            _set_attrs(f, dict(store_id=self.store_id, part=len(self.parts), first_item=self.n_items,
                               first_row=self.offsets[-1]))
            _write_items(f, cols, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            pos = f.create_group("positions")
            for name, dt in POSITION_FIELDS.items():
                pos.create_dataset(name, data=np.concatenate([np.asarray(getattr(r, name)) for r in records]).astype(dt))
            resid = f.create_group("resid")
            for layer in self.layers:
                x = np.concatenate([r.resid[layer] for r in records]).astype(self.dtype, copy=False)
                if x.ndim != 2 or x.shape[1] != self.d_model:
                    raise InterpError(f"layer {layer} rows have shape {x.shape[1:]}, not ({self.d_model},) as the store")
                resid.create_dataset(layer, data=x)
            return _image(f)

    def finish(self) -> None:
        """Copy the parts into one self-contained file renamed over the index (an atomic replace)."""
        if self.complete:
            return
        from interp.atomic import fsync_dir

        tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
        need = sum((self.parts_dir / name).stat().st_size for name, _, _ in self.parts) + (1 << 20)
        free = shutil.disk_usage(self.path.parent).free
        if free < need:
            raise InterpError(f"no space left on device at {self.path.parent}: finishing the store needs "
                              f"{_size(need)} free, {_size(free)} are; free space and rerun with --resume")
        meta = dict(self.attrs, layout="single", complete=True, n_items=self.n_items)
        for key in ("parts_folder",):
            meta.pop(key, None)
        try:
            with h5py.File(tmp, "w") as f:
                _set_attrs(f, meta)
                _write_items(f, self.columns, np.asarray(self.offsets, dtype=np.int64))
                n = self.offsets[-1]
                targets = {f"positions/{k}": f.create_dataset(f"positions/{k}", shape=(n,), dtype=dt)
                           for k, dt in POSITION_FIELDS.items()}
                targets.update({f"resid/{layer}": f.create_dataset(f"resid/{layer}", shape=(n, self.d_model), dtype=self.dtype)
                                for layer in self.layers})
                start = 0
                for name, _, rows in self.parts:
                    with h5py.File(self.parts_dir / name, "r") as part:
                        for key, ds in targets.items():
                            if rows:
                                ds[start:start + rows] = part[key][()]
                    start += rows
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.errno is not None:
                err = io_error(e, self.path.parent, resumable=True)
                if isinstance(err, InterpError):
                    raise err from None
                raise
            # h5py reports a failed write without an errno: tell a full disk by the free space
            if "No space left" in str(e) or shutil.disk_usage(self.path.parent).free < need:
                raise InterpError(f"no space left on device at {self.path.parent}; free space and rerun with --resume") from None
            raise
        fsync_dir(self.path.parent)
        self.complete, self.attrs, self.index_path = True, meta, self.path
        _cleanup(self.path, keep_parts=set())

    def abandon(self) -> None:
        """Drop a staged replacement (`create(..., replace=True)`) that will not be finished."""
        if self.index_path != self.path and not self.complete:
            _remove(self.index_path)
            _remove(self.parts_dir)

    def ids(self) -> list[str]:
        return list(self.columns["id"])


# ---- HDF5 images and cleanup ---------------------------------------------------------------------


@contextlib.contextmanager
def _memory_file(size_hint: int = 0) -> Iterator[h5py.File]:
    # the core driver grows its buffer by block_size: one block the size of the image avoids
    # reallocating (and copying) it over and over
    block = max(1 << 20, int(size_hint) + (1 << 20))
    f = h5py.File(f"interp-image-{secrets.token_hex(8)}", "w", driver="core", backing_store=False, block_size=block)
    try:
        yield f
    finally:
        f.close()


def _image(f: h5py.File) -> bytes:
    f.flush()
    return f.id.get_file_image()


def _index_image(meta: dict, columns: dict, offsets, parts) -> bytes:
    with _memory_file() as f:
        _set_attrs(f, meta)
        _write_items(f, columns, np.asarray(offsets, dtype=np.int64))
        g = f.create_group("parts")
        g.create_dataset("file", data=np.array([p[0] for p in parts], dtype=object), dtype=STR)
        g.create_dataset("n_items", data=np.array([p[1] for p in parts], dtype=np.int64))
        g.create_dataset("n_rows", data=np.array([p[2] for p in parts], dtype=np.int64))
        return _image(f)


def _set_attrs(f: h5py.File, meta: dict) -> None:
    # in name order: the file's bytes depend on the order attributes are created in, and a
    # resumed writer must produce the same bytes as an uninterrupted one
    for k in sorted(meta):
        f.attrs[k] = meta[k]


def _write_items(f: h5py.File, columns: dict, offsets: np.ndarray) -> None:
    items = f.create_group("items")
    for name, dt in ITEM_FIELDS.items():
        values = columns[name]
        data = np.array(values, dtype=object) if dt is STR else np.asarray(values, dtype=dt)
        items.create_dataset(name, data=data.reshape(len(values)), dtype=dt)
    items.create_dataset("offsets", data=offsets)


def _item_columns(records: Sequence[ItemRecord]) -> dict[str, list]:
    return {
        "id": [str(r.id) for r in records],
        "task": [str(r.row.get("task") or "") for r in records],
        "label": ["" if r.row.get("label") is None else str(r.row["label"]) for r in records],
        "transcript": [str(r.row.get("transcript") or "") for r in records],
        "snr_db": [np.nan if r.row.get("snr_db") is None else float(r.row["snr_db"]) for r in records],
        "audio_seconds": [float(r.audio_seconds) for r in records],
        "truncated": [bool(r.truncated) for r in records],
        "n_positions": [int(len(r.token_id)) for r in records],
        "meta": [json.dumps(r.row, default=str) for r in records],
        "input_fingerprint": [str(r.input_fingerprint or "") for r in records],
    }


def _referenced_parts(path: Path) -> str | None:
    """The parts folder the index at `path` relies on (None for a finished store or no store)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == FORMAT and f.attrs.get("layout") == "parts":
                return str(f.attrs.get("parts_folder"))
    except (OSError, KeyError):
        pass
    return None


def _cleanup(path: Path, keep_parts: set, keep_files: set = frozenset()) -> None:
    """Remove what interrupted writers of `path` left: temporary files, staging indexes of
    abandoned --overwrite runs, and parts folders no index relies on. Callers hold the lock."""
    parent = path.parent if path.parent.is_dir() else None
    if parent is None:
        return
    keep_parts = {p for p in keep_parts if p}
    n = path.name
    prefixes = (f".{n}.tmp-", f".{n}.staging-", f"..{n}.staging-")
    for p in parent.iterdir():
        name = p.name
        if name in keep_files:
            continue
        if name.startswith(prefixes) or (name.startswith(f"{n}.parts-") and name not in keep_parts):
            _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _attr(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    if v is None:
        return ""
    return v


def _plain_attrs(attrs) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[k] = v
    return out


def _decode(values) -> list:
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in np.asarray(values).tolist()]


# ---- reading -------------------------------------------------------------------------------------


class _PartsDataset:
    """One dataset (`resid/8`, `positions/is_audio`, ...) across a running store's part files,
    read by row ranges like an h5py dataset."""

    def __init__(self, store: "ActivationStore", key: str):
        self.store, self.key = store, key
        first = store._part(0)[key] if store._part_files else None
        tail = first.shape[1:] if first is not None else ((store.d_model,) if key.startswith("resid/") else ())
        self.shape = (store.n_rows, *tail)
        if first is not None:
            self.dtype = first.dtype
        else:
            self.dtype = np.dtype(store.attrs.get("dtype", "float32") if key.startswith("resid/")
                                  else POSITION_FIELDS[key.split("/", 1)[1]])

    def read_direct(self, out: np.ndarray, source_sel: slice, dest_sel: slice) -> None:
        a, b, d = source_sel.start, source_sel.stop, dest_sel.start
        starts = self.store._part_starts
        k = int(np.searchsorted(starts, a, side="right") - 1)
        while a < b:
            end = min(b, int(starts[k + 1]))
            if end > a:
                ds = self.store._part(k)[self.key]
                ds.read_direct(out, np.s_[a - starts[k]:end - starts[k]], np.s_[d:d + end - a])
                d += end - a
                a = end
            k += 1

    def __getitem__(self, sel):
        if isinstance(sel, slice) and sel.step in (None, 1):
            a, b, _ = sel.indices(self.shape[0])
            out = np.empty((max(b - a, 0), *self.shape[1:]), dtype=self.dtype)
            if b > a:
                self.read_direct(out, np.s_[a:b], np.s_[0:b - a])
            return out
        raise TypeError("a running store's datasets are read by row ranges")


class ActivationStore:
    """Read a store: items, positions and one layer at a time, in bounded memory.

    Reads finished stores, stores still being written (their committed items), and stores of
    format 1.

    >>> store = ActivationStore("acts.h5")
    >>> x = store.read(8, items=store.select(task="sst2"), audio_only=True)
    """

    def __init__(self, path: str | os.PathLike):
        from interp.errors import path_problem

        self.path = Path(path)
        problem = path_problem(self.path, "store")
        if problem:
            raise InterpError(f"{problem}; create one with `interp trace`")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise InterpError(f"cannot open store {self.path}: {str(e).splitlines()[0]}") from None
        self._open_parts: OrderedDict[int, h5py.File] = OrderedDict()
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise
        self._items = None
        self._positions = None

    def _read_header(self) -> None:
        if self.file.attrs.get("format") != FORMAT:
            raise InterpError(f"{self.path} is not an interp activation store (no format='{FORMAT}' attribute)")
        damaged = f"store {self.path} is damaged or incomplete"
        try:
            version = int(self.file.attrs["format_version"])
        except (KeyError, ValueError, TypeError):
            raise InterpError(f"{damaged}: no valid format_version attribute; trace it again") from None
        if version > FORMAT_VERSION:
            raise InterpError(f"{self.path} has store format {version}; this interp reads up to {FORMAT_VERSION}: upgrade interp")
        self.attrs = _plain_attrs(self.file.attrs)
        try:
            self.layers: list[str] = [str(x) for x in json.loads(self.attrs["layers"])]
            self.d_model = int(self.attrs["d_model"])
        except KeyError as e:
            raise InterpError(f"{damaged}: attribute {e} is missing; trace it again") from None
        except (ValueError, TypeError):
            raise InterpError(f"{damaged}: its 'layers' attribute is not a JSON list of layer names; trace it again") from None
        self.layout = "parts" if self.attrs.get("layout") == "parts" else "single"
        needed = ["items/offsets"] + [f"items/{k}" for k in ("id", "task", "label", "transcript", "meta")]
        if self.layout == "parts":
            needed += ["parts/file", "parts/n_rows"]
        else:
            needed += [f"positions/{k}" for k in POSITION_FIELDS] + [f"resid/{layer}" for layer in self.layers]
        missing = [k for k in needed if k not in self.file]
        if missing:
            raise InterpError(f"{damaged}: it has no '{missing[0]}' dataset ({len(missing)} missing); trace it again")
        n_items = int(self.attrs.get("n_items", self.file["items/offsets"].shape[0] - 1))
        self.n_items = max(0, min(n_items, self.file["items/offsets"].shape[0] - 1))
        self.offsets = self.file["items/offsets"][: self.n_items + 1]
        if self.layout == "parts":
            folder = self.path.parent / str(self.attrs.get("parts_folder", ""))
            self._part_files = [folder / f for f in _decode(self.file["parts/file"][()])]
            self._part_starts = np.concatenate([[0], np.cumsum(self.file["parts/n_rows"][()])]).astype(np.int64)
            gone = [p for p in self._part_files if not p.is_file()]
            if gone:
                raise InterpError(f"store {self.path} is still being written and {len(gone)} of its part files are "
                                  f"missing (e.g. {gone[0]}); keep the folder {folder.name} beside the store")

    def _part(self, k: int) -> h5py.File:
        f = self._open_parts.get(k)
        if f is None:
            f = h5py.File(self._part_files[k], "r")
            self._open_parts[k] = f
            if len(self._open_parts) > OPEN_PARTS:
                self._open_parts.popitem(last=False)[1].close()
        else:
            self._open_parts.move_to_end(k)
        return f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for f in self._open_parts.values():
            f.close()
        self._open_parts.clear()
        self.file.close()

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, items={self.n_items}, rows={self.n_rows}, "
                f"layers={self.layers}, d_model={self.d_model}, positions={self.attrs.get('positions')!r})")

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def identity(self) -> str:
        """What names this store's contents in provenance: its store id (format 2; the path for
        format 1) and its number of items, so a store extended by a resume is another one."""
        return f"{self.attrs.get('store_id') or self.path.resolve()}:{self.n_items}"

    # ---- items and positions ---------------------------------------------------------

    @property
    def items(self) -> dict[str, np.ndarray]:
        """Per-item columns (id, task, label, transcript, snr_db, audio_seconds, ...)."""
        if self._items is None:
            out = {}
            for name in ITEM_FIELDS:
                if name not in self.file["items"]:
                    continue  # stores of format 1 have no input fingerprints
                v = self.file["items"][name][: self.n_items]
                if h5py.check_string_dtype(self.file["items"][name].dtype):
                    v = np.array([s.decode() if isinstance(s, bytes) else s for s in v], dtype=object)
                out[name] = v
            self._items = out
        return self._items

    @property
    def ids(self) -> list[str]:
        return list(self.items["id"])

    def meta(self, i: int) -> dict:
        """The full manifest row of item `i`."""
        return json.loads(self.items["meta"][i])

    def field(self, name: str) -> np.ndarray:
        """One per-item field: a stored column or a key of the manifest rows."""
        if name in self.items and name not in ("meta",):
            return self.items[name]
        values = [self.meta(i).get(name) for i in range(self.n_items)]
        if all(v is None for v in values):
            raise InterpError(f"the store has no item field '{name}'; it has: {', '.join(self.item_fields())}")
        return np.array(values, dtype=object)

    def item_fields(self) -> list[str]:
        keys = {k for k in ITEM_FIELDS if k not in ("meta", "truncated", "n_positions", "input_fingerprint")}
        for i in range(min(self.n_items, 50)):
            keys.update(k for k, v in self.meta(i).items() if v is not None)
        return sorted(keys)

    def _dataset_of(self, key: str):
        if self.layout == "parts":
            return _PartsDataset(self, key)
        return self.file[key]

    @property
    def positions(self) -> dict[str, np.ndarray]:
        """Per-row columns: token_id, index, is_audio, time_start, time_end."""
        if self._positions is None:
            self._positions = {name: self._dataset_of(f"positions/{name}")[: self.n_rows] for name in POSITION_FIELDS}
        return self._positions

    def select(self, ids: Sequence[str] | None = None, task: str | None = None, label: str | None = None) -> np.ndarray:
        """Indices of items matching all the given filters."""
        keep = np.ones(self.n_items, dtype=bool)
        if ids is not None:
            wanted = set(map(str, ids))
            keep &= np.array([i in wanted for i in self.items["id"]], dtype=bool)
        if task is not None:
            keep &= self.items["task"] == task
        if label is not None:
            keep &= self.items["label"] == str(label)
        return np.flatnonzero(keep)

    def rows(self, items: Sequence[int] | np.ndarray | None = None, audio_only: bool = False) -> np.ndarray:
        """Row indices (into the flat position axis) of the given items, in item order."""
        items = np.arange(self.n_items) if items is None else np.asarray(items, dtype=np.int64)
        if len(items) == 0:
            return np.zeros(0, dtype=np.int64)
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in items])
        if audio_only:
            rows = rows[self.positions["is_audio"][rows]]
        return rows

    def row_items(self, rows: np.ndarray) -> np.ndarray:
        """The item index owning each row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    # ---- activations -----------------------------------------------------------------

    def resolve_layers(self, spec: str | Sequence = "all") -> list[str]:
        """Layer names for a `--layers` spec ('all', '0,4,8', 'embed,-1'), checked against the store.

        'all' is every stored layer; negative indices count back from the model's last block
        (the `n_model_layers` attribute). Names come back in store order.
        """
        if spec is None or (isinstance(spec, str) and spec.strip() == "all"):
            return list(self.layers)
        parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p) for p in spec]
        blocks = [int(x) for x in self.layers if x != "embed"]
        n_model = int(self.attrs.get("n_model_layers") or (max(blocks) + 1 if blocks else 0))
        wanted, missing = set(), []
        for p in filter(None, parts):
            if p != "embed":
                try:
                    i = int(p)
                except ValueError:
                    raise InterpError(f"bad layer '{p}'; use 'all' or comma-separated block indices like 0,4,8 (and 'embed')") from None
                p = str(i + n_model) if i < 0 and i + n_model >= 0 else str(i)
            (wanted.add if p in self.layers else missing.append)(p)
        if missing:
            raise InterpError(f"layer(s) {', '.join(missing)} not in the store {self.path.name}; it holds: "
                              f"{', '.join(self.layers)}")
        if not wanted:
            raise InterpError("no layers selected; use 'all' or indices like 0,4,8")
        return [x for x in self.layers if x in wanted]

    def _dataset(self, layer):
        key = layer_key(layer)
        if key not in self.layers:
            raise InterpError(f"layer '{key}' is not in the store; it holds: {', '.join(self.layers)}")
        return self._dataset_of(f"resid/{key}")

    def read(self, layer, items=None, audio_only: bool = False, rows: np.ndarray | None = None,
             dtype=np.float32, torch: bool = False):
        """One layer's activations for the selected rows, as (n_rows, d_model)."""
        ds = self._dataset(layer)
        if rows is None:
            rows = self.rows(items, audio_only=audio_only)
        out = _read_rows(ds, np.asarray(rows, dtype=np.int64)).astype(dtype, copy=False)
        if torch:
            import torch as _torch

            return _torch.from_numpy(out)
        return out

    def iter_batches(self, layer, items=None, batch_items: int = 64, audio_only: bool = False,
                     dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (item indices, row indices, activations) for `batch_items` items at a time."""
        items = np.arange(self.n_items) if items is None else np.asarray(items, dtype=np.int64)
        for s in range(0, len(items), batch_items):
            chunk = items[s:s + batch_items]
            rows = self.rows(chunk, audio_only=audio_only)
            yield chunk, rows, self.read(layer, rows=rows, dtype=dtype)

    def pooled(self, layer, items=None, how: str = "audio-mean", batch_items: int = 256, dtype=np.float32) -> np.ndarray:
        """One vector per item: mean over audio rows (`audio-mean`), or its `last` row."""
        items = np.arange(self.n_items) if items is None else np.asarray(items, dtype=np.int64)
        out = np.zeros((len(items), self.d_model), dtype=dtype)
        pos = 0
        for chunk, rows, x in self.iter_batches(layer, items, batch_items, dtype=np.float64):
            owner = self.row_items(rows)
            for i in chunk:
                sel = owner == i
                if how == "last":
                    out[pos] = x[sel][-1]
                else:
                    audio = sel & self.positions["is_audio"][rows]
                    if not audio.any():
                        raise InterpError(f"item '{self.items['id'][i]}' has no audio rows; use positions 'last'")
                    out[pos] = x[audio].mean(0)
                pos += 1
        return out

    def to_transformer_lens(self, items=None, audio_only: bool = False) -> dict:
        """Activations under TransformerLens hook names, as torch tensors (n_rows, d_model).

        `resid/{i}` -> `blocks.{i}.hook_resid_post`; `resid/embed` -> `blocks.0.hook_resid_pre`.
        """
        rows = self.rows(items, audio_only=audio_only)
        out = {}
        for layer in self.layers:
            name = "blocks.0.hook_resid_pre" if layer == "embed" else f"blocks.{layer}.hook_resid_post"
            out[name] = self.read(layer, rows=rows, torch=True)
        return out


def _read_rows(ds, rows: np.ndarray) -> np.ndarray:
    """Read arbitrary rows with contiguous-run slicing (h5py fancy indexing is slow)."""
    if len(rows) == 0:
        return np.zeros((0, ds.shape[1]), dtype=ds.dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    out = np.empty((len(rows), ds.shape[1]), dtype=ds.dtype)
    for s, e in zip(starts, ends):
        ds.read_direct(out, np.s_[rows[s]:rows[e - 1] + 1], np.s_[s:e])
    return out
