"""Targets: what a probe reads out, or what an eraser removes, resolved against a store.

`build_target(store, name, positions)` gives a `Target`: the units (one pooled state per item,
or store rows), the value of each, the item each belongs to (the groups of cross-validation)
and what was left out. The same resolver serves `interp probe` and the erasure concepts
(`interp.analysis.concepts`), so both read a name the same way:

- any item field (label, speaker, snr_db, ...): classes (text, or a few whole numbers) or a
  regression (many or fractional numbers); one value per item, pooled or broadcast to the
  item's rows. `Target.one_hot()` gives the classes as indicator columns (what LEACE fits);
- `energy`, `pitch`: per audio position, from the waveform over the seconds the position
  covers (`interp.analysis.acoustics`); unvoiced positions are left out of `pitch`;
- `ctc`: each item's transcript as character codes (1-based; 0 is the CTC blank) over its
  audio rows; `chars`: the transcript's bag-of-characters counts per item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interp.errors import InterpError
from interp.positions import PROBE, check_positions
from interp.store import ActivationStore
from interp.text import normalise_text

SPECIAL_TARGETS = ("energy", "pitch", "ctc", "chars")
KINDS = ("auto", "classification", "regression")


@dataclass
class Target:
    """What a probe predicts, aligned with the store rows or items its features come from."""

    name: str  #: target name as given (`label`, `energy`, `ctc`, ...)
    kind: str  #: classification | regression | ctc
    positions: str  #: audio | all | last | audio-mean
    items: np.ndarray  #: item indices with a usable target, ascending
    rows: np.ndarray | None  #: store rows, one per unit (None: one pooled vector per item)
    y: object  #: per unit: class ids (n,), floats (n,) or (n, k); for ctc a list of int arrays per item
    groups: np.ndarray  #: item index of each unit (the CV groups)
    control_level: str  #: "item" or "position": what the shuffled control permutes
    classes: list[str] = field(default_factory=list)  #: class names (classification) or characters (ctc, chars)
    item_rows: list[np.ndarray] | None = None  #: ctc only: each item's audio rows
    notes: list[str] = field(default_factory=list)  #: what was left out and why

    @property
    def n_units(self) -> int:
        return len(self.groups)

    @property
    def pooled(self) -> bool:
        return self.rows is None and self.kind != "ctc"

    def one_hot(self) -> np.ndarray:
        """Classes as indicator columns (n_units, n_classes) float64: the z that LEACE fits."""
        if self.kind != "classification":
            raise InterpError(f"target '{self.name}' is a {self.kind} target; only classes have a one-hot form")
        return np.eye(len(self.classes))[np.asarray(self.y, dtype=np.int64)]


def build_target(store: ActivationStore, target: str, positions: str | None = None, kind: str = "auto",
                 max_positions: int | None = None, pitch_range: tuple[float, float] = (65.0, 500.0)) -> Target:
    """Resolve TARGET against the store: which units (items or rows) and what value each has.

    `max_positions` keeps at most that many evenly spaced rows per item (position-level
    targets); `pitch_range` is the F0 search range of `pitch` in Hz."""
    if positions is not None:
        check_positions(positions, PROBE, "a probe")
    if kind not in KINDS:
        raise InterpError(f"unknown probe kind '{kind}'; use one of {', '.join(KINDS)}")
    if target in ("energy", "pitch"):
        return _acoustic_target(store, target, positions or "audio", max_positions, pitch_range)
    if target == "ctc":
        return _ctc_target(store, positions or "audio")
    if target == "chars":
        return _chars_target(store, positions or "audio-mean")
    return _field_target(store, target, positions or "audio-mean", kind, max_positions)


def _check_has_audio(store: ActivationStore, target: str) -> None:
    if not store.positions["is_audio"][: store.n_rows].any():
        raise InterpError(f"target '{target}' needs audio positions and the store has none "
                          f"(traced with positions '{store.attrs.get('positions')}'); trace with --positions audio")


def _field_target(store: ActivationStore, name: str, positions: str, kind: str, max_positions: int | None) -> Target:
    try:
        values = store.field(name)
    except InterpError:
        raise InterpError(f"the store has no target '{name}'; item fields: {', '.join(store.item_fields())}; "
                          f"computed targets: {', '.join(SPECIAL_TARGETS)}") from None
    numeric = [v for v in values if _is_number(v)]
    if kind == "auto":
        # Text (labels are stored as text) and a few whole numbers (SNRs, ratings) are classes;
        # fractional numbers (durations, scores) or many distinct ones are regressed.
        distinct = {float(v) for v in numeric if not np.isnan(float(v))}
        continuous = len(distinct) > 10 or any(not v.is_integer() for v in distinct)
        kind = "regression" if numeric and len(numeric) == len(values) and continuous else "classification"
    keep, y = [], []
    for i, v in enumerate(values):
        if kind == "regression":
            v = _as_float(v)
            if v is None or np.isnan(v):
                continue
            y.append(v)
        else:
            if v is None or (isinstance(v, str) and v == ""):
                continue
            if _is_number(v) and np.isnan(float(v)):
                if name != "snr_db":
                    continue
                v = "clean"  # the store writes NaN for clean audio
            y.append(_class_name(v))
        keep.append(i)
    if not keep:
        fix = "use --kind classification" if kind == "regression" else "add it to the manifest and re-trace"
        raise InterpError(f"target '{name}' has no {'numeric ' if kind == 'regression' else ''}values in the store's items; {fix}")
    items = np.asarray(keep, dtype=np.int64)
    notes = [f"{store.n_items - len(items)} item(s) without a value of '{name}' left out"] if len(items) < store.n_items else []
    if kind == "classification":
        classes, codes = np.unique(np.asarray(y, dtype=object).astype(str), return_inverse=True)
        if len(classes) < 2:
            only = f" ('{classes[0]}')" if len(classes) else ""
            raise InterpError(f"target '{name}' has one class{only} among {len(items)} items; probing or erasing it "
                              "needs at least two")
        y_items, classes = codes.astype(np.int64), [str(c) for c in classes]
    else:
        y_items, classes = np.asarray(y, dtype=np.float64), []
        if len(y_items) and np.ptp(y_items) == 0:
            raise InterpError(f"target '{name}' is constant ({y_items[0]:g}) over {len(items)} items; nothing to regress")
    if positions in ("audio-mean", "last"):
        if positions == "audio-mean":
            _check_has_audio(store, name)
        return Target(name, kind, positions, items, None, y_items, items.copy(), "item", classes, notes=notes)
    # Broadcast: every selected row of an item carries the item's value; CV stays grouped by item.
    if positions == "audio":
        _check_has_audio(store, name)
    rows = _subsample(store, store.rows(items, audio_only=positions == "audio"), max_positions)
    owner = store.row_items(rows)
    lookup = np.full(store.n_items, -1, dtype=np.int64)
    lookup[items] = np.arange(len(items))
    return Target(name, kind, positions, items, rows, y_items[lookup[owner]], owner, "item", classes, notes=notes)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _as_float(v) -> float | None:
    """A number, or a string holding one (labels are stored as text); None otherwise."""
    if _is_number(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _class_name(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _subsample(store: ActivationStore, rows: np.ndarray, max_positions: int | None) -> np.ndarray:
    """Keep at most `max_positions` evenly spaced rows per item."""
    if max_positions is None or len(rows) == 0:
        return rows
    owner = store.row_items(rows)
    keep = []
    for i in np.unique(owner):
        r = rows[owner == i]
        if len(r) > max_positions:
            r = r[np.unique(np.linspace(0, len(r) - 1, max_positions).round().astype(int))]
        keep.append(r)
    return np.concatenate(keep)


def _audio_path(store: ActivationStore, i: int, target: str) -> str:
    path = store.meta(i).get("audio")
    if not path:
        raise InterpError(f"item '{store.items['id'][i]}' has no 'audio' path in the store; target '{target}' needs the waveform")
    if not Path(path).is_file():
        raise InterpError(f"audio file not found: {path} (item '{store.items['id'][i]}'); target '{target}' reads the "
                          "waveform: restore the file or re-trace from a manifest with valid paths")
    return path


def _acoustic_target(store: ActivationStore, name: str, positions: str, max_positions: int | None,
                     pitch_range: tuple[float, float]) -> Target:
    if positions not in ("audio", "audio-mean"):
        raise InterpError(f"target '{name}' is defined on audio positions; use --positions audio (per position) or audio-mean")
    _check_has_audio(store, name)
    from interp.analysis.acoustics import position_energy_db, position_pitch
    from interp.audio import load_audio

    sr = 16000
    if positions == "audio":
        rows = _subsample(store, store.rows(audio_only=True), max_positions)
    else:
        rows = store.rows(audio_only=True)
    owner = store.row_items(rows)
    starts, ends = store.positions["time_start"][rows], store.positions["time_end"][rows]
    values = np.full(len(rows), np.nan)
    unit_items, unit_values = [], []
    for i in np.unique(owner):
        sel = np.flatnonzero(owner == i)
        if positions == "audio-mean":
            # the pooled state covers the item's whole audio span
            s, e = np.array([np.nanmin(starts[sel])]), np.array([np.nanmax(ends[sel])])
        else:
            s, e = starts[sel], ends[sel]
        wav = load_audio(_audio_path(store, i, name), sr, check=False)
        if name == "energy":
            v = position_energy_db(wav, sr, s, e)
        else:
            v = position_pitch(wav, sr, s, e, *pitch_range)
        if positions == "audio-mean":
            unit_items.append(i)
            unit_values.append(v[0])
        else:
            values[sel] = v
    notes = []
    if positions == "audio-mean":
        items = np.asarray(unit_items, dtype=np.int64)
        y = np.asarray(unit_values, dtype=np.float64)
        ok = np.isfinite(y)
        if (~ok).any():
            notes.append(f"{int((~ok).sum())} item(s) with no {'voiced frame' if name == 'pitch' else 'samples'} left out")
        items, y = items[ok], y[ok]
        target = Target(name, "regression", positions, items, None, y, items.copy(), "item", notes=notes)
    else:
        ok = np.isfinite(values)
        if (~ok).any():
            why = "unvoiced" if name == "pitch" else "outside the audio"
            notes.append(f"{int((~ok).sum())} of {len(rows)} audio position(s) {why} left out")
        rows, values, owner = rows[ok], values[ok], owner[ok]
        target = Target(name, "regression", positions, np.unique(owner), rows, values, owner, "position", notes=notes)
    if target.n_units < 2 or np.ptp(target.y) == 0:
        raise InterpError(f"target '{name}' has fewer than two distinct values in the store's audio; nothing to regress")
    return target


def _transcripts(store: ActivationStore, target: str) -> np.ndarray:
    texts = np.array([normalise_text(t) for t in store.items["transcript"]], dtype=object)
    if not any(texts):
        raise InterpError(f"target '{target}' needs transcripts and the store's items have none; add 'transcript' to the manifest and re-trace")
    return texts


def _ctc_target(store: ActivationStore, positions: str) -> Target:
    if positions != "audio":
        raise InterpError("target 'ctc' decodes the sequence of audio positions; use --positions audio")
    _check_has_audio(store, "ctc")
    if store.attrs.get("positions") == "audio-mean":
        raise InterpError("target 'ctc' needs one state per audio position, but the store holds pooled states "
                          "(positions audio-mean); trace with --positions audio")
    texts = _transcripts(store, "ctc")
    chars = sorted({c for t in texts for c in t})
    code = {c: k + 1 for k, c in enumerate(chars)}  # 0 is the CTC blank
    items, seqs, item_rows = [], [], []
    too_long = 0
    for i, t in enumerate(texts):
        rows = store.rows([i], audio_only=True)
        if not t or len(rows) == 0:
            continue
        seq = np.array([code[c] for c in t], dtype=np.int64)
        # CTC needs a frame per character plus one per repeated pair (a blank between them).
        if len(rows) < len(seq) + int((seq[1:] == seq[:-1]).sum()):
            too_long += 1
            continue
        items.append(i)
        seqs.append(seq)
        item_rows.append(rows)
    notes = []
    if store.n_items - len(items):
        notes.append(f"{store.n_items - len(items)} item(s) left out: empty transcript, no audio positions, "
                     f"or more characters than audio positions ({too_long})")
    items = np.asarray(items, dtype=np.int64)
    if len(items) < 2:
        raise InterpError("target 'ctc' has fewer than two items with a transcript that fits their audio positions")
    return Target("ctc", "ctc", positions, items, None, seqs, items.copy(), "item", chars, item_rows, notes)


def _chars_target(store: ActivationStore, positions: str) -> Target:
    if positions not in ("audio-mean", "last"):
        raise InterpError("target 'chars' regresses from the pooled audio span; use --positions audio-mean (or last)")
    if positions == "audio-mean":
        _check_has_audio(store, "chars")
    texts = _transcripts(store, "chars")
    items = np.flatnonzero([bool(t) for t in texts]).astype(np.int64)
    chars = sorted({c for i in items for c in texts[i] if c != " "})
    col = {c: k for k, c in enumerate(chars)}
    y = np.zeros((len(items), len(chars)))
    for r, i in enumerate(items):
        for c in texts[i]:
            if c != " ":
                y[r, col[c]] += 1
    notes = [f"{store.n_items - len(items)} item(s) without a transcript left out"] if len(items) < store.n_items else []
    if len(items) < 2:
        raise InterpError("target 'chars' needs at least two items with transcripts")
    return Target("chars", "regression", positions, items, None, y, items.copy(), "item", chars, notes=notes)
