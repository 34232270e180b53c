"""Concepts: the values z an eraser removes, attached to store rows.

A concept resolves a name with the same target resolver as the probes
(`interp.analysis.targets`), then gives z per store row, computed on demand for any subset
of rows (a ctc concept over a million rows is never held whole):

- any item field (label, speaker, task, ...): its classes one-hot (`Target.one_hot`),
  broadcast to the item's rows;
- `chars`: the transcript's bag-of-characters counts, broadcast to the item's rows;
- `ctc`: per audio position, the transcript characters aligned to it (fractional counts
  under a uniform alignment of the transcript over the item's audio positions);
- `energy`, `pitch`: per audio position, as the probes compute them;
- a `+` of several (e.g. `energy+pitch`, the acoustic control): the columns side by side,
  on the rows where all are defined.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from interp.analysis.targets import SPECIAL_TARGETS, build_target
from interp.errors import InterpError
from interp.positions import FIT, check_positions
from interp.store import ActivationStore


@dataclass
class Concept:
    """A concept's value z on store rows: which rows carry one, and a function giving their z."""

    name: str
    """As given: a field, chars, ctc, energy, pitch or a '+' of them."""
    kind: str
    """classes (one-hot, probed by accuracy) | values (continuous, probed by R^2)."""
    rows: np.ndarray
    """Store rows with a value, ascending."""
    columns: list[str]
    """Names of z's columns (classes, characters, 'energy', ...)."""
    values: Callable[[np.ndarray], np.ndarray]
    """Sorted subset of `rows` -> (n, len(columns)) float64."""
    notes: list[str] = field(default_factory=list)
    """What was left out and why."""

    def z(self, rows: np.ndarray) -> np.ndarray:
        return self.values(np.asarray(rows, dtype=np.int64))

    def restrict(self, store: ActivationStore, items: np.ndarray) -> "Concept":
        """The same concept on the rows of `items` only."""
        keep = np.zeros(store.n_rows, dtype=bool)
        keep[store.rows(items)] = True
        return replace(self, rows=self.rows[keep[self.rows]])

    def items(self, store: ActivationStore) -> np.ndarray:
        """Item indices owning at least one of the rows."""
        return np.unique(store.row_items(self.rows))


def check_fit_store(store: ActivationStore, positions: str) -> None:
    """Refuse stores erasers cannot be fitted from: empty, encoder, pooled, or without audio for `positions=audio`."""
    check_positions(positions, FIT, "an eraser to be fitted on")
    if store.n_items == 0:
        raise InterpError(f"store {store.path} holds no items; fill it with `interp trace`")
    if store.attrs.get("component", "decoder") != "decoder":
        raise InterpError(f"store {store.path} holds {store.attrs.get('component')} states; erasers act on the decoder's "
                          "residual stream: trace with --component decoder")
    if store.attrs.get("positions") in ("audio-mean", "last"):
        raise InterpError(f"store {store.path} holds one pooled state per item (positions '{store.attrs['positions']}'); "
                          "erasers are fitted per position: trace with --positions audio or all")
    if positions == "audio" and not store.positions["is_audio"].any():
        raise InterpError(f"store has no audio spans: {store.path.name} was traced with positions "
                          f"'{store.attrs.get('positions')}'; re-trace with --positions audio, or fit with --positions all")


def build_concept(store: ActivationStore, name: str, positions: str = "audio",
                  pitch_range: tuple[float, float] = (65.0, 500.0)) -> Concept:
    """Resolve a concept name against the store (see the module docstring for the names)."""
    check_fit_store(store, positions)
    parts = [p.strip() for p in name.split("+") if p.strip()]
    if not parts:
        raise InterpError("empty concept; give an item field (e.g. label) or one of " + ", ".join(SPECIAL_TARGETS))
    built = [_one_concept(store, p, positions, pitch_range) for p in parts]
    if len(built) == 1:
        return built[0]
    rows = built[0].rows
    for c in built[1:]:
        rows = np.intersect1d(rows, c.rows, assume_unique=True)
    if len(rows) == 0:
        raise InterpError(f"concept '{name}': no store row has a value of all of {', '.join(parts)}")

    def values(r):
        return np.concatenate([c.values(r) for c in built], axis=1)

    columns = [f"{c.name}:{col}" for c in built for col in c.columns]
    notes = [n for c in built for n in c.notes]
    return Concept(name, "values", rows, columns, values, notes)


def _one_concept(store: ActivationStore, name: str, positions: str, pitch_range: tuple[float, float]) -> Concept:
    audio_only = positions == "audio"
    if name in ("energy", "pitch"):
        tgt = build_target(store, name, "audio", pitch_range=pitch_range)
        rows, y = tgt.rows, np.asarray(tgt.y, dtype=np.float64)
        order = np.argsort(rows)
        rows, y = rows[order], y[order]
        notes = list(tgt.notes) + ([f"'{name}' is defined on audio positions only"] if positions == "all" else [])
        return Concept(name, "values", rows, [name], _lookup(rows, y[:, None]), notes)
    if name == "chars":
        # item-level counts; positions 'last' only selects the items, no activations are read
        tgt = build_target(store, "chars", "last")
        counts = np.asarray(tgt.y, dtype=np.float64)
        return _broadcast(store, "chars", "values", tgt.items, counts, tgt.classes, audio_only, list(tgt.notes))
    if name == "ctc":
        return _ctc_concept(store, positions)
    # an item field's classes; positions 'last' only selects the items, no activations are read
    tgt = build_target(store, name, "last", kind="classification")
    return _broadcast(store, name, "classes", tgt.items, tgt.one_hot(), tgt.classes, audio_only, list(tgt.notes))


def _lookup(rows: np.ndarray, table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def values(r):
        return table[np.searchsorted(rows, r)]

    return values


def _broadcast(store, name, kind, items, per_item, columns, audio_only, notes) -> Concept:
    """Every selected row of an item carries the item's value."""
    rows = store.rows(items, audio_only=audio_only)
    slot = np.full(store.n_items, -1, dtype=np.int64)
    slot[items] = np.arange(len(items))

    def values(r):
        return per_item[slot[store.row_items(r)]]

    return Concept(name, kind, rows, [str(c) for c in columns], values, notes)


def ctc_frame_targets(n_frames: int, codes: np.ndarray, n_symbols: int) -> np.ndarray:
    """(n_frames, n_symbols) fractional character counts per frame under a uniform alignment:
    character k of n covers frames [k T/n, (k+1) T/n); a frame gets the share of each
    character falling in it, so each character's shares sum to 1 over the frames."""
    n = len(codes)
    t = np.arange(n_frames, dtype=np.float64)[:, None]
    k = np.arange(n, dtype=np.float64)[None, :]
    width = n_frames / n
    overlap = np.clip(np.minimum(t + 1, (k + 1) * width) - np.maximum(t, k * width), 0, None) / width
    out = np.zeros((n_frames, n_symbols))
    np.add.at(out.T, codes, overlap.T)
    return out


def _ctc_concept(store: ActivationStore, positions: str) -> Concept:
    # The CTC target gives each item's transcript as character codes (1-based, 0 = blank)
    # over its audio rows; erasure needs a value per position, so the characters are spread
    # uniformly over the item's audio positions (speaking rate taken as constant: the
    # documented stand-in for a forced alignment).
    tgt = build_target(store, "ctc", "audio")
    n_sym = len(tgt.classes)
    first = {int(r[0]): (r, seq) for r, seq in zip(tgt.item_rows, tgt.y)}
    starts = np.array(sorted(first), dtype=np.int64)
    rows = np.concatenate(tgt.item_rows)
    order = np.argsort(rows)
    rows = rows[order]
    cache: dict[int, np.ndarray] = {}

    def values(r):
        out = np.zeros((len(r), n_sym))
        owner = starts[np.searchsorted(starts, r, side="right") - 1]
        for s in map(int, np.unique(owner)):
            item_rows, seq = first[s]
            if s not in cache:
                if len(cache) > 64:
                    cache.clear()
                cache[s] = ctc_frame_targets(len(item_rows), np.asarray(seq) - 1, n_sym)
            sel = owner == s
            out[sel] = cache[s][np.searchsorted(item_rows, r[sel])]
        return out

    notes = list(tgt.notes) + (["'ctc' is defined on audio positions only"] if positions == "all" else [])
    return Concept("ctc", "values", rows, list(tgt.classes), values, notes)
