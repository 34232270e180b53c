"""Merging the shards of a trace (`interp trace --shard K/N`) into one store.

The merged store is a copy, not an HDF5 virtual dataset over the shards: it is self-contained
(the shards may be moved or deleted afterwards), it has exactly the layout and bytes of a
store traced by one process over the same manifest, so every reader, export and analysis
sees the same thing, and it is written like every other finished store: into a temporary file
that is fsynced and renamed into place. (A virtual dataset would tie the store to the shards'
paths and break when they move, and would read through one more layer of HDF5 mapping.)

Refused, each with one line: shards that are incomplete or not shards, of other manifests,
models (fingerprint or dtype), layers, positions, store dtypes, components, prompts or batch
sizes, a shard given twice, a missing shard, overlapping items.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from interp.errors import InterpError
from interp.store.layout import ITEM_FIELDS

#: what every shard of one trace shares, named as the user would change it
SAME = (("model_fingerprint", "model (fingerprint)"), ("model_dtype", "model dtype"), ("family", "model family"),
        ("component", "component"), ("layers", "layers"), ("positions", "positions"), ("dtype", "store dtype"),
        ("d_model", "width"), ("prompt", "prompt"), ("batch_size", "batch size"), ("n_model_layers", "model depth"))


@dataclass
class MergeSummary:
    path: Path
    n_shards: int
    n_items: int
    n_rows: int


def merge_stores(shards: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False,
                 command: str = "") -> MergeSummary:
    """Join the finished shards of one trace into the store `out`, equal to a single process's."""
    import contextlib
    import sys

    from interp.locks import OutputLock
    from interp.shard import ShardInfo, check_coverage
    from interp.store.reader import ActivationStore
    from interp.store.writer import write_single

    out = Path(out)
    paths = [Path(p) for p in shards]
    if not paths:
        raise InterpError("give the shard stores to merge")
    if out.is_dir():
        raise InterpError(f"{out} is a folder; give a file path for the merged store, e.g. {out / 'acts.h5'}")
    if any(p.resolve() == out.resolve() for p in paths):
        raise InterpError(f"--out {out} is one of the shards; write the merged store to another path")
    command = command or " ".join(["interp"] + sys.argv[1:])
    with contextlib.ExitStack() as stack:
        stack.enter_context(OutputLock(out, command))
        if out.exists() and not overwrite:
            raise InterpError(f"{out} exists; pass --overwrite to replace it")
        # a shard being written by another process is refused at once (its lock is held)
        for p in paths:
            stack.enter_context(OutputLock(p, command))
        stores = [stack.enter_context(ActivationStore(p)) for p in paths]
        names = [str(p) for p in paths]
        infos = []
        for s, name in zip(stores, names):
            info = ShardInfo.from_attrs(s.attrs)
            if info is None:
                raise InterpError(f"{name} is not a shard (traced without --shard, or already merged); "
                                  "give the stores `interp trace --shard K/N` wrote")
            if not s.complete or s.n_items != info.stop - info.start:
                raise InterpError(f"{name} (shard {info.label}) is incomplete: it holds {s.n_items} of its "
                                  f"{info.stop - info.start} items; finish it with `interp trace ... --shard "
                                  f"{info.label} --resume`")
            infos.append(info)
        order = check_coverage(infos, names)
        first = stores[order[0]]
        for i in order:
            for key, what in SAME:
                a, b = str(first.attrs.get(key)), str(stores[i].attrs.get(key))
                if a != b:
                    raise InterpError(f"{names[i]} and {names[order[0]]} differ in {what} ({b} vs {a}); merge shards "
                                      "traced with the same model and settings")
        seen: dict[str, str] = {}
        columns: dict[str, list] = {k: [] for k in ITEM_FIELDS}
        offsets, sources = [0], []
        for i in order:
            s = stores[i]
            for item in s.ids:
                if item in seen:
                    raise InterpError(f"item '{item}' is in both {seen[item]} and {names[i]}: the shards overlap; "
                                      "merge the shards of one split")
                seen[item] = names[i]
            for k in ITEM_FIELDS:
                columns[k].extend(s.items[k].tolist() if k in s.items else [""] * s.n_items)
            offsets.extend((offsets[-1] + s.offsets[1:]).tolist())
            sources.append((s.path, s.n_rows))
        meta = dict(first.attrs)
        meta.update(store_id=secrets.token_hex(6), command=command, complete=True, layout="single",
                    n_items=len(offsets) - 1, shard="",
                    merged_from=json.dumps([f"{infos[i].label}:{stores[i].attrs.get('store_id', '')}" for i in order]))
        meta.pop("parts_folder", None)
        write_single(out, meta, columns, offsets, sources, first.layers, first.d_model, str(first.attrs["dtype"]))
    return MergeSummary(out, len(paths), len(offsets) - 1, int(offsets[-1]))
