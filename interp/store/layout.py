"""The store's layout (docs/store.md): its fields, item records, in-memory HDF5 images of
indexes and parts, and the cleanup of what interrupted writers leave.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from interp.atomic import json_ready

FORMAT = "interp-activations"
FORMAT_VERSION = 2
STR = h5py.string_dtype("utf-8")
ITEM_FIELDS = {"id": STR, "task": STR, "label": STR, "transcript": STR, "snr_db": "f8", "audio_seconds": "f8",
               "truncated": "bool", "n_positions": "i8", "meta": STR, "input_fingerprint": STR, "instruction": STR}
#: columns later versions added (stores written before them lack them; readers and writers fill in "")
ADDED_ITEM_FIELDS = ("input_fingerprint", "instruction")
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
    instruction: str = ""  #: the instruction sent with the item's audio (what `ActivationStore.batch` rebuilds)


def parts_folder(path: Path, store_id: str) -> Path:
    return path.parent / f"{path.name}.parts-{store_id}"


@contextlib.contextmanager
def memory_file(size_hint: int = 0) -> Iterator[h5py.File]:
    # the core driver grows its buffer by block_size: one block the size of the image avoids
    # reallocating (and copying) it over and over
    block = max(1 << 20, int(size_hint) + (1 << 20))
    f = h5py.File(f"interp-image-{secrets.token_hex(8)}", "w", driver="core", backing_store=False, block_size=block)
    try:
        yield f
    finally:
        f.close()


def file_image(f: h5py.File) -> bytes:
    f.flush()
    return f.id.get_file_image()


def index_image(meta: dict, columns: dict, offsets, parts) -> bytes:
    with memory_file() as f:
        set_attrs(f, meta)
        write_items(f, columns, np.asarray(offsets, dtype=np.int64))
        g = f.create_group("parts")
        g.create_dataset("file", data=np.array([p[0] for p in parts], dtype=object), dtype=STR)
        g.create_dataset("n_items", data=np.array([p[1] for p in parts], dtype=np.int64))
        g.create_dataset("n_rows", data=np.array([p[2] for p in parts], dtype=np.int64))
        return file_image(f)


def set_attrs(f: h5py.File, meta: dict) -> None:
    # in name order: the file's bytes depend on the order attributes are created in, and a
    # resumed writer must produce the same bytes as an uninterrupted one
    for k in sorted(meta):
        f.attrs[k] = meta[k]


def write_items(f: h5py.File, columns: dict, offsets: np.ndarray) -> None:
    items = f.create_group("items")
    for name, dt in ITEM_FIELDS.items():
        values = columns[name]
        data = np.array(values, dtype=object) if dt is STR else np.asarray(values, dtype=dt)
        items.create_dataset(name, data=data.reshape(len(values)), dtype=dt)
    items.create_dataset("offsets", data=offsets)


def item_columns(records: Sequence[ItemRecord]) -> dict[str, list]:
    return {
        "id": [str(r.id) for r in records],
        "task": [str(r.row.get("task") or "") for r in records],
        "label": ["" if r.row.get("label") is None else str(r.row["label"]) for r in records],
        "transcript": [str(r.row.get("transcript") or "") for r in records],
        "snr_db": [np.nan if r.row.get("snr_db") is None else float(r.row["snr_db"]) for r in records],
        "audio_seconds": [float(r.audio_seconds) for r in records],
        "truncated": [bool(r.truncated) for r in records],
        "n_positions": [int(len(r.token_id)) for r in records],
        "meta": [json.dumps(json_ready(r.row, strict=False)) for r in records],
        "input_fingerprint": [str(r.input_fingerprint or "") for r in records],
        "instruction": [str(r.instruction or "") for r in records],
    }


def referenced_parts(path: Path) -> str | None:
    """The parts folder the index at `path` relies on (None for a finished store or no store)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == FORMAT and f.attrs.get("layout") == "parts":
                return str(f.attrs.get("parts_folder"))
    except (OSError, KeyError):
        pass
    return None


def cleanup(path: Path, keep_parts: set, keep_files: set = frozenset()) -> None:
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
            remove_path(p)


def remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def attr_value(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(json_ready(v, strict=False))
    if v is None:
        return ""
    return v


def plain_attrs(attrs) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[k] = v
    return out


def decode_strings(values) -> list:
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in np.asarray(values).tolist()]
