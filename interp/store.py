"""The activation store: one HDF5 file of residual-stream activations, streamed batch by batch.

Format (`format = "interp-activations"`, `format_version = 1`), readable with plain h5py:

    /                   attrs: format, format_version, model_path, model_class, family,
                        config_hash, component, dtype, d_model, layers (JSON list of names),
                        positions, prompt, batch_size, library_versions (JSON), command,
                        n_items (items committed), complete
    /items/id           (n,) str     item id from the manifest
    /items/task         (n,) str     "" when absent
    /items/label        (n,) str     "" when absent (stored as text whatever its JSON type)
    /items/transcript   (n,) str
    /items/snr_db       (n,) f8      NaN for clean audio
    /items/audio_seconds(n,) f8      duration of the audio as read (before any truncation)
    /items/truncated    (n,) bool    audio was cut at the encoder window
    /items/n_positions  (n,) i8      rows stored for the item
    /items/meta         (n,) str     the full manifest row as JSON (speaker, choices, ...)
    /items/offsets      (n+1,) i8    item i owns rows offsets[i]:offsets[i+1]
    /positions/token_id (N,) i8      token id (the audio placeholder id at audio positions; -1 pooled)
    /positions/index    (N,) i8      position within the item's unpadded sequence (-1 pooled)
    /positions/is_audio (N,) bool
    /positions/time_start, time_end (N,) f8   seconds covered; NaN for text positions
    /resid/embed        (N, d_model) residual entering block 0 (embeddings with audio merged in)
    /resid/{i}          (N, d_model) output of block i, 0-based, before the final norm

Crash safety: the writer opens the file, appends one batch, sets `n_items` last, and closes
it, so a process killed at any moment leaves a file that opens with h5py and whose first
`n_items` items are complete. Rows past `offsets[n_items]` are leftovers of an unfinished
batch; readers ignore them and `StoreWriter.resume` truncates them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from interp.errors import InterpError

FORMAT = "interp-activations"
FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")
ITEM_FIELDS = {"id": STR, "task": STR, "label": STR, "transcript": STR, "snr_db": "f8", "audio_seconds": "f8",
               "truncated": "bool", "n_positions": "i8", "meta": STR}
POSITION_FIELDS = {"token_id": "i8", "index": "i8", "is_audio": "bool", "time_start": "f8", "time_end": "f8"}


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


class StoreWriter:
    """Appends batches of items to a store; each `append` is one open-write-close cycle."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            self.layers = json.loads(f.attrs["layers"])
            self.n_items = int(f.attrs["n_items"])

    @classmethod
    def create(cls, path: str | os.PathLike, attrs: dict, layers: Sequence[str], d_model: int, dtype: str,
               chunk_rows: int = 256) -> "StoreWriter":
        """Write an empty store (atomically: a temp file renamed into place)."""
        from interp.atomic import atomic_path

        path = Path(path)
        with atomic_path(path, suffix=".h5") as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs.update({k: _attr(v) for k, v in attrs.items()})
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["layers"] = json.dumps(list(layers))
                f.attrs["d_model"] = int(d_model)
                f.attrs["dtype"] = dtype
                f.attrs["n_items"] = 0
                f.attrs["complete"] = False
                items = f.create_group("items")
                for name, dt in ITEM_FIELDS.items():
                    items.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(1024,))
                items.create_dataset("offsets", data=np.zeros(1, dtype="i8"), maxshape=(None,), chunks=(1024,))
                pos = f.create_group("positions")
                for name, dt in POSITION_FIELDS.items():
                    pos.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
                resid = f.create_group("resid")
                for layer in layers:
                    resid.create_dataset(layer, shape=(0, d_model), maxshape=(None, d_model), dtype=dtype,
                                         chunks=(chunk_rows, d_model))
        return cls(path)

    def resume(self) -> int:
        """Drop rows of an unfinished batch; return the number of complete items."""
        with h5py.File(self.path, "a") as f:
            n = int(f.attrs["n_items"])
            rows = int(f["items/offsets"][n])
            for name in ITEM_FIELDS:
                f["items"][name].resize((n,))
            f["items/offsets"].resize((n + 1,))
            for name in POSITION_FIELDS:
                f["positions"][name].resize((rows,))
            for layer in self.layers:
                ds = f["resid"][layer]
                ds.resize((rows, ds.shape[1]))
        self.n_items = n
        return n

    def append(self, records: Sequence[ItemRecord]) -> None:
        if not records:
            return
        with h5py.File(self.path, "a") as f:
            n = int(f.attrs["n_items"])
            offsets = f["items/offsets"]
            start = int(offsets[n])
            counts = np.array([len(r.token_id) for r in records], dtype=np.int64)
            end = start + int(counts.sum())
            for layer in self.layers:
                ds = f["resid"][layer]
                ds.resize((end, ds.shape[1]))
                ds[start:end] = np.concatenate([r.resid[layer] for r in records]).astype(ds.dtype, copy=False)
            for name in POSITION_FIELDS:
                ds = f["positions"][name]
                ds.resize((end,))
                ds[start:end] = np.concatenate([getattr(r, name) for r in records])
            m = len(records)
            columns = {
                "id": [r.id for r in records],
                "task": [str(r.row.get("task") or "") for r in records],
                "label": ["" if r.row.get("label") is None else str(r.row["label"]) for r in records],
                "transcript": [str(r.row.get("transcript") or "") for r in records],
                "snr_db": [np.nan if r.row.get("snr_db") is None else float(r.row["snr_db"]) for r in records],
                "audio_seconds": [r.audio_seconds for r in records],
                "truncated": [r.truncated for r in records],
                "n_positions": counts,
                "meta": [json.dumps(r.row, default=str) for r in records],
            }
            for name, values in columns.items():
                ds = f["items"][name]
                ds.resize((n + m,))
                ds[n:] = values
            offsets.resize((n + m + 1,))
            offsets[n + 1:] = start + np.cumsum(counts)
            # The commit point: only now do readers and resume see these items.
            f.attrs["n_items"] = n + m
        self.n_items = n + m

    def finish(self) -> None:
        with h5py.File(self.path, "a") as f:
            f.attrs["complete"] = True

    def ids(self) -> list[str]:
        with h5py.File(self.path, "r") as f:
            n = int(f.attrs["n_items"])
            return [s.decode() if isinstance(s, bytes) else s for s in f["items/id"][:n]]


def _attr(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    if v is None:
        return ""
    return v


class ActivationStore:
    """Read a store: items, positions and one layer at a time, in bounded memory.

    >>> store = ActivationStore("acts.h5")
    >>> x = store.read(8, items=store.select(task="sst2"), audio_only=True)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InterpError(f"store not found: {self.path}; create one with `interp trace`")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise InterpError(f"cannot open store {self.path}: {str(e).splitlines()[0]}") from None
        if self.file.attrs.get("format") != FORMAT:
            raise InterpError(f"{self.path} is not an interp activation store (no format='{FORMAT}' attribute)")
        version = int(self.file.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise InterpError(f"{self.path} has store format {version}; this interp reads up to {FORMAT_VERSION}: upgrade interp")
        self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}
        self.layers: list[str] = json.loads(self.attrs["layers"])
        self.n_items = int(self.attrs["n_items"])
        self.d_model = int(self.attrs["d_model"])
        self.offsets = self.file["items/offsets"][: self.n_items + 1]
        self._items = None
        self._positions = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
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

    # ---- items and positions ---------------------------------------------------------

    @property
    def items(self) -> dict[str, np.ndarray]:
        """Per-item columns (id, task, label, transcript, snr_db, audio_seconds, ...)."""
        if self._items is None:
            out = {}
            for name in ITEM_FIELDS:
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
        keys = {k for k in ITEM_FIELDS if k not in ("meta", "truncated", "n_positions")}
        for i in range(min(self.n_items, 50)):
            keys.update(k for k, v in self.meta(i).items() if v is not None)
        return sorted(keys)

    @property
    def positions(self) -> dict[str, np.ndarray]:
        """Per-row columns: token_id, index, is_audio, time_start, time_end."""
        if self._positions is None:
            self._positions = {name: self.file["positions"][name][: self.n_rows] for name in POSITION_FIELDS}
        return self._positions

    def select(self, ids: Sequence[str] | None = None, task: str | None = None, label: str | None = None) -> np.ndarray:
        """Indices of items matching all the given filters."""
        keep = np.ones(self.n_items, dtype=bool)
        if ids is not None:
            wanted = set(map(str, ids))
            keep &= np.array([i in wanted for i in self.items["id"]])
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

    def _dataset(self, layer) -> h5py.Dataset:
        key = layer_key(layer)
        if key not in self.layers:
            raise InterpError(f"layer '{key}' is not in the store; it holds: {', '.join(self.layers)}")
        return self.file["resid"][key]

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


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
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
