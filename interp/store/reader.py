"""Reading a store: `ActivationStore`, items, positions and one layer at a time, in bounded memory.

Reads finished stores, stores still being written (their committed items, across the part
files: `_PartsDataset`), and stores of format 1. Rows of arbitrary sets of items are read with
contiguous-run slicing (h5py's fancy indexing is slow).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from interp.errors import InterpError
from interp.store.layout import FORMAT, FORMAT_VERSION, ITEM_FIELDS, OPEN_PARTS, POSITION_FIELDS, decode_strings, plain_attrs, layer_key

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
        self.attrs = plain_attrs(self.file.attrs)
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
            self._part_files = [folder / f for f in decode_strings(self.file["parts/file"][()])]
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

    @cached_property
    def items(self) -> dict[str, np.ndarray]:
        """Per-item columns (id, task, label, transcript, snr_db, audio_seconds, ...)."""
        out = {}
        for name in ITEM_FIELDS:
            if name not in self.file["items"]:
                continue  # older stores lack later columns (format 1: input fingerprints)
            v = self.file["items"][name][: self.n_items]
            if h5py.check_string_dtype(self.file["items"][name].dtype):
                v = np.array([s.decode() if isinstance(s, bytes) else s for s in v], dtype=object)
            out[name] = v
        return out

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
        keys = {k for k in ITEM_FIELDS if k not in ("meta", "truncated", "n_positions", "input_fingerprint", "instruction")}
        for i in range(min(self.n_items, 50)):
            keys.update(k for k, v in self.meta(i).items() if v is not None)
        return sorted(keys)

    def _dataset_of(self, key: str):
        if self.layout == "parts":
            return _PartsDataset(self, key)
        return self.file[key]

    @cached_property
    def positions(self) -> dict[str, np.ndarray]:
        """Per-row columns: token_id, index, is_audio, time_start, time_end."""
        return {name: self._dataset_of(f"positions/{name}")[: self.n_rows] for name in POSITION_FIELDS}

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

    def rows(self, items: Sequence[int] | np.ndarray | None = None, audio_only: bool = False,
             positions: str = "all") -> np.ndarray:
        """Row indices (into the flat position axis) of the given items, in item order: every
        stored row (`all`), or only its `audio`, `text` or `last` rows (`interp.positions`);
        `audio_only` is `positions="audio"`."""
        items = np.arange(self.n_items) if items is None else np.asarray(items, dtype=np.int64)
        if len(items) == 0:
            return np.zeros(0, dtype=np.int64)
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in items])
        positions = "audio" if audio_only else positions
        if positions == "audio":
            return rows[self.positions["is_audio"][rows]]
        if positions == "text":
            return rows[~self.positions["is_audio"][rows]]
        if positions == "last":
            owner = self.row_items(rows)
            return rows[np.r_[owner[1:] != owner[:-1], True]] if len(rows) else rows
        if positions != "all":
            from interp.positions import check_positions

            check_positions(positions, ("all", "audio", "text", "last"), "store rows")
        return rows

    def row_items(self, rows: np.ndarray) -> np.ndarray:
        """The item index owning each row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    # ---- activations -----------------------------------------------------------------

    def resolve_layers(self, spec: str | int | Sequence = "all") -> list[str]:
        """Layer names for a `--layers` spec ('all', '0,4,8', 'embed,-1', [0, -1]), checked against
        the store (`interp.layers.parse_layers`; negative indices count back from the model's
        last block, the `n_model_layers` attribute). 'all' is every stored layer, in store order."""
        from interp.layers import parse_layers

        if spec is None or (isinstance(spec, str) and spec.strip() == "all"):
            return list(self.layers)
        wanted = parse_layers(spec, self.n_model_layers, in_range=False)
        missing = [x for x in wanted if x not in self.layers]
        if missing:
            raise InterpError(f"layer(s) {', '.join(missing)} not in the store {self.path.name}; it holds: "
                              f"{', '.join(self.layers)}")
        return [x for x in self.layers if x in wanted]

    @property
    def n_model_layers(self) -> int:
        """Blocks of the model (or encoder) the store was traced from, as negative layer indices count them."""
        blocks = [int(x) for x in self.layers if x != "embed"]
        return int(self.attrs.get("n_model_layers") or (max(blocks) + 1 if blocks else 0))

    def _dataset(self, layer):
        key = layer_key(layer)
        if key not in self.layers:
            key = self.resolve_layers([layer])[0]
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

    # ---- what produced it, and views for other tools -----------------------------------

    def batch(self, adapter, items: Sequence[int], padding_side: str = "right"):
        """The model inputs that produced these items: each item's audio (from its manifest
        row) and the instruction recorded with it, prepared by `adapter` as `interp trace`
        prepared them. Refuses a model other than the store's."""
        from interp.audio import load_audio
        from interp.fingerprint import check_model
        from interp.store.export import check_items

        check_model(self.attrs, adapter.fingerprint(), adapter.runtime_dtype, f"store {self.path.name}",
                    f"the model at {adapter.path}", "give the model the store was traced with")
        items = check_items(self, items)
        if "instruction" not in self.items:
            raise InterpError(f"store {self.path.name} was traced before stores recorded each item's instruction; "
                              "trace it again to rebuild its batches")
        waves = [load_audio(self.meta(int(i))["audio"], adapter.sampling_rate) for i in items]
        return adapter.prepare(waves, [str(self.items["instruction"][i]) for i in items], padding_side=padding_side)

    def to_transformer_lens(self, items=None, layers="all", positions: str = "all"):
        """A TransformerLens-shaped cache: hook name -> (batch, pos, d_model) tensor, one batch
        row per item, with `.mask` of its stored positions (`interp.store.export`)."""
        from interp.store.export import to_transformer_lens

        return to_transformer_lens(self, items, layers, positions)

    def to_hf_dataset(self, layer, path, context_size: int = 128, positions: str = "all", items=None,
                      overwrite: bool = False, progress=None):
        """One layer as SAELens' cached-activation dataset at `path` (`interp.store.export`)."""
        from interp.store.export import to_hf_dataset

        return to_hf_dataset(self, layer, path, context_size, positions, items, overwrite, progress)


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
