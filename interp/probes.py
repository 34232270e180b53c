"""Layer-wise linear probes over an activation store: is a quantity linearly readable at layer L?

One probe per layer, fitted and scored under grouped cross-validation: the outer folds are
made once per target (`make_folds`, grouped by item so that positions of one utterance
never sit on both sides of a split) and reused for every layer and for both baselines, so
every number on a curve is comparable to its neighbours. Each fold fits three things:

- the probe: standardised features (statistics of the training fold) and a logistic
  regression whose C is chosen by an inner grouped CV, or a ridge regression whose alpha
  is chosen the same way (leave-one-out when each item is one row);
- the majority/mean baseline: the training fold's most frequent class, or mean;
- the shuffled-label control (Hewitt & Liang's control task): the same probe, refitted on
  labels permuted across items (item-level targets) or across positions (position-level
  targets) and scored against those permuted labels. Selectivity = probe - control.

Targets (`build_target`): any item field (pooled per item, or broadcast to positions);
`energy` and `pitch` computed from each item's waveform over exactly the seconds a stored
position covers; `ctc`, a linear CTC head trained to emit the transcript's characters from
the audio positions (text decodability = max(0, 1 - CER); a layer's probe and control heads
of every fold are trained together by `interp.ctc.fit_ctc_heads`); `chars`, ridge from the
pooled audio span to the transcript's character counts.

Memory: a sweep holds the target and one layer of the selected rows at a time, read from the
store with `ActivationStore.pooled`/`read`. When features outnumber training rows (pooled
7B states: 4096 dims, ~1000 items) the probe is fitted in the span of the training rows
(a Gram-matrix reparametrisation that is exact for L2-penalised linear models, see
`_span_features`), which makes the sweep minutes rather than hours on a laptop CPU.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from interp.errors import InterpError
from interp.store import ActivationStore

SPECIAL_TARGETS = ("energy", "pitch", "ctc", "chars")
PROBE_POSITIONS = ("audio", "all", "last", "audio-mean")
KINDS = ("auto", "classification", "regression")


@dataclass(frozen=True)
class ProbeConfig:
    """How probes are fitted; the defaults are the documented protocol (docs/probes.md)."""

    folds: int = 5  #: outer cross-validation folds, grouped by item
    inner_folds: int = 3  #: inner grouped folds that choose C / alpha
    seed: int = 0  #: seed of the folds, the label permutation and the CTC head
    Cs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  #: logistic-regression C grid (standardised features)
    alphas: tuple[float, ...] = (1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5)  #: ridge alpha grid
    max_iter: int = 300  #: lbfgs iterations per logistic fit
    max_positions: int | None = None  #: per item, for position-level targets (evenly spaced); None keeps all
    ctc_epochs: int = 60  #: most passes over the training items for a CTC head (early stopping usually ends sooner)
    ctc_lr: float = 5e-3  #: Adam learning rate of a CTC head trained for fixed epochs (reference, or no validation split)
    ctc_start_lr: float = 1e-2  #: starting Adam learning rate of a CTC head with a validation split (divided by 4 at plateaus)
    ctc_patience: int = 2  #: learning-rate drops after which a CTC head that fails to improve stops
    ctc_weight_decay: float = 1e-4  #: L2 on the CTC head (Adam weight decay)
    ctc_batch_items: int = 16  #: items per CTC optimisation step
    ctc_val_fraction: float = 0.1  #: share of a fold's training items a CTC head stops on (0: fixed ctc_epochs)
    ctc_method: str = "batched"  #: batched (all folds' heads at once, early stopping) | reference (one head at a time, fixed epochs; slow)
    pitch_fmin: float = 65.0  #: lowest F0 searched by pYIN (Hz)
    pitch_fmax: float = 500.0  #: highest F0 searched by pYIN (Hz)
    device: str = "cpu"  #: torch device of the CTC head


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


@dataclass
class LayerScore:
    """One layer's probe score with its baselines, each as mean and standard deviation over folds."""

    layer: str
    score: float  #: mean over folds of the target's metric
    spread: float  #: standard deviation over folds
    fold_scores: list[float]
    baseline: float  #: majority class / training mean / medoid transcript
    baseline_spread: float
    control: float  #: shuffled-label control task, same probe and folds
    control_spread: float
    selectivity: float  #: score - control
    n_items: int
    n_positions: int
    extra: dict[str, float] = field(default_factory=dict)  #: macro-F1, CER, chosen C/alpha, ...


@dataclass
class ProbeResult:
    """A probe sweep: one LayerScore per layer, plus what was probed and how."""

    store: str
    target: str
    kind: str
    metric: str  #: accuracy | r2 | decodability
    baseline_name: str  #: majority | mean | medoid
    positions: str
    folds: int
    seed: int
    layers: list[LayerScore]
    n_items: int
    n_positions: int
    classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (NaN, e.g. an undefined chosen C, becomes None)."""
        return _finite(asdict(self))

    def best(self) -> LayerScore:
        return max(self.layers, key=lambda s: -np.inf if np.isnan(s.score) else s.score)


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


# ---- targets -----------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Transcript text as probes see it: NFKC, case-folded, anything but letters, digits and
    apostrophes turned into spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", str(text or "")).casefold()
    text = re.sub(r"[^\w']|_", " ", text)
    return " ".join(text.split())


def build_target(store: ActivationStore, target: str, positions: str | None = None, kind: str = "auto",
                 config: ProbeConfig = ProbeConfig()) -> Target:
    """Resolve TARGET against the store: which units (items or rows) and what value each has."""
    if positions is not None and positions not in PROBE_POSITIONS:
        raise InterpError(f"unknown positions '{positions}' for a probe; use one of {', '.join(PROBE_POSITIONS)}")
    if kind not in KINDS:
        raise InterpError(f"unknown probe kind '{kind}'; use one of {', '.join(KINDS)}")
    if target in ("energy", "pitch"):
        return _acoustic_target(store, target, positions or "audio", config)
    if target == "ctc":
        return _ctc_target(store, positions or "audio")
    if target == "chars":
        return _chars_target(store, positions or "audio-mean")
    return _field_target(store, target, positions or "audio-mean", kind, config)


def _check_has_audio(store: ActivationStore, target: str) -> None:
    if not store.positions["is_audio"][: store.n_rows].any():
        raise InterpError(f"target '{target}' needs audio positions and the store has none "
                          f"(traced with positions '{store.attrs.get('positions')}'); trace with --positions audio")


def _field_target(store: ActivationStore, name: str, positions: str, kind: str, config: ProbeConfig) -> Target:
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
            raise InterpError(f"target '{name}' has one class{only} among {len(items)} items; a probe needs at least two")
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
    rows = _subsample(store, store.rows(items, audio_only=positions == "audio"), config.max_positions)
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


def _acoustic_target(store: ActivationStore, name: str, positions: str, config: ProbeConfig) -> Target:
    if positions not in ("audio", "audio-mean"):
        raise InterpError(f"target '{name}' is defined on audio positions; use --positions audio (per position) or audio-mean")
    _check_has_audio(store, name)
    from interp.audio import load_audio

    sr = 16000
    if positions == "audio":
        rows = _subsample(store, store.rows(audio_only=True), config.max_positions)
    else:
        rows = store.rows(audio_only=True)
    owner = store.row_items(rows)
    starts, ends = store.positions["time_start"][rows], store.positions["time_end"][rows]
    values = np.full(len(rows), np.nan)
    unit_items, unit_starts, unit_ends = [], [], []
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
            v = position_pitch(wav, sr, s, e, config.pitch_fmin, config.pitch_fmax)
        if positions == "audio-mean":
            unit_items.append(i)
            unit_starts.append(v[0])
        else:
            values[sel] = v
    notes = []
    if positions == "audio-mean":
        items = np.asarray(unit_items, dtype=np.int64)
        y = np.asarray(unit_starts, dtype=np.float64)
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


# ---- acoustic features -------------------------------------------------------------------


def position_energy_db(wav: np.ndarray, sr: int, starts: np.ndarray, ends: np.ndarray, floor_db: float = -100.0) -> np.ndarray:
    """Frame energy in dB re full scale, 10*log10(mean(x^2)), over samples [round(s*sr), round(e*sr)).

    A full-scale sine (amplitude 1) reads -3.01 dB. Windows past the end of the audio are NaN.
    """
    out = np.full(len(starts), np.nan)
    x2 = np.asarray(wav, dtype=np.float64) ** 2
    csum = np.concatenate([[0.0], np.cumsum(x2)])
    for k, (s, e) in enumerate(zip(starts, ends)):
        if not (np.isfinite(s) and np.isfinite(e)):
            continue
        a, b = int(round(s * sr)), min(int(round(e * sr)), len(wav))
        if b <= a:
            b = a + 1
        if a >= len(wav):
            continue
        power = (csum[b] - csum[a]) / (b - a)
        out[k] = max(10.0 * np.log10(power) if power > 0 else floor_db, floor_db)
    return out


PITCH_FRAME = 1024  #: pYIN analysis window at 16 kHz (64 ms: two periods of a 31 Hz voice)
PITCH_HOP = 160  #: 10 ms between F0 frames


def position_pitch(wav: np.ndarray, sr: int, starts: np.ndarray, ends: np.ndarray, fmin: float = 65.0,
                   fmax: float = 500.0) -> np.ndarray:
    """F0 (Hz) per window: the median pYIN F0 of the voiced frames whose centres fall in
    [start, end); NaN (unvoiced, left out of the target) unless at least half of those frames are voiced.

    F0 needs a longer analysis window (64 ms) than an audio position (20-80 ms), so frames are
    assigned to positions by their centre; a window holding no frame centre takes the nearest frame.
    """
    import librosa

    wav = np.asarray(wav, dtype=np.float32)
    if len(wav) < PITCH_FRAME:
        wav = np.pad(wav, (0, PITCH_FRAME - len(wav)))
    f0, voiced, _ = librosa.pyin(wav, fmin=fmin, fmax=fmax, sr=sr, frame_length=PITCH_FRAME, hop_length=PITCH_HOP,
                                 center=True)
    times = librosa.times_like(f0, sr=sr, hop_length=PITCH_HOP)
    out = np.full(len(starts), np.nan)
    for k, (s, e) in enumerate(zip(starts, ends)):
        if not (np.isfinite(s) and np.isfinite(e)):
            continue
        idx = np.flatnonzero((times >= s) & (times < e))
        if len(idx) == 0:
            idx = np.array([int(np.argmin(np.abs(times - (s + e) / 2)))])
        v = voiced[idx] & np.isfinite(f0[idx])
        if v.sum() * 2 >= len(idx) and v.any():
            out[k] = float(np.median(f0[idx][v]))
    return out


# ---- folds -------------------------------------------------------------------------------


def make_folds(target: Target, n_folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer folds over the target's units, grouped by item (stratified by class when classifying)."""
    n_groups = len(np.unique(target.groups))
    if n_folds < 2:
        raise InterpError(f"--folds must be at least 2 (got {n_folds})")
    if n_groups < n_folds:
        raise InterpError(f"target '{target.name}' has {n_groups} usable item(s), fewer than --folds {n_folds}; "
                          f"lower --folds or add items")
    folds = _grouped_splits(target.y if target.kind == "classification" else None, target.groups, n_folds, seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in folds]


def _grouped_splits(y, groups: np.ndarray, n: int, seed: int) -> list:
    """K folds grouped by `groups`, stratified by `y` when given. One unit per group (pooled
    states) is plain (stratified) K-fold, which is the same split and much faster to draw."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    dummy = np.zeros((len(groups), 1))
    singletons = len(np.unique(groups)) == len(groups)
    if y is not None and not can_stratify(y, groups, n):
        y = None  # no class has an item for every fold: stratifying is impossible, group only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        if y is not None and singletons:
            return list(StratifiedKFold(n, shuffle=True, random_state=seed).split(dummy, y))
        if y is not None:
            return list(StratifiedGroupKFold(n, shuffle=True, random_state=seed).split(dummy, y, groups))
        if singletons:
            return list(KFold(n, shuffle=True, random_state=seed).split(dummy))
        return list(GroupKFold(n, shuffle=True, random_state=seed).split(dummy, groups=groups))


def can_stratify(y, groups: np.ndarray, n: int) -> bool:
    """Whether some class spans at least `n` items (what stratified K-fold needs)."""
    _, first = np.unique(groups, return_index=True)
    return np.bincount(np.unique(np.asarray(y)[first], return_inverse=True)[1]).max() >= n


def _inner_splits(y, groups: np.ndarray, n: int, seed: int, stratify: bool):
    n = min(n, len(np.unique(groups)))
    return _grouped_splits(y if stratify else None, groups, n, seed)


def control_labels(target: Target, folds: Sequence[tuple[np.ndarray, np.ndarray]], seed: int = 0):
    """The shuffled-label control task: the target permuted across items (item-level targets)
    or across positions (position-level targets), within each outer test fold.

    Permuting within folds keeps every fold's class balance (folds are stratified on the true
    labels); a global permutation would leave train and test folds with complementary
    imbalances and push the control below chance.
    """
    rng = np.random.default_rng(seed + 1)
    if target.kind == "ctc":
        perm = np.arange(len(target.y))
        for _, test in folds:
            perm[test] = rng.permutation(test)
        return [target.y[p] for p in perm]
    y = np.asarray(target.y)
    out = y.copy()
    for _, test in folds:
        if target.control_level == "position":
            out[test] = y[rng.permutation(test)]
            continue
        # item level: permute the fold's item values, then broadcast back to each item's units
        items, first, inverse = np.unique(target.groups[test], return_index=True, return_inverse=True)
        per_item = y[test][first]
        out[test] = per_item[rng.permutation(len(items))][inverse]
    return out


# ---- fitting -----------------------------------------------------------------------------


def _standardise(X: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu = X[train].mean(0, dtype=np.float64)
    sd = X[train].std(0, dtype=np.float64)
    sd[sd < 1e-8] = 1.0
    return ((X - mu.astype(X.dtype)) / sd.astype(X.dtype)).astype(np.float32, copy=False)


def _span_features(Xs: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Coordinates of all rows in an orthonormal basis of the training rows' span.

    For an L2-penalised linear model the optimal weights lie in the span of the training
    rows (the gradient of the loss is X_tr^T r), so w = V a with V orthonormal gives the
    same fit and predictions with ||w|| = ||a||: an exact change of variables that turns a
    (n x d) problem with d >> n into an (n x n) one. With G = Xs Xs_tr^T and
    K = G[train] = U diag(s^2) U^T, the coordinates are G U / s.
    """
    n_train, d = len(train), Xs.shape[1]
    if d <= n_train:
        return Xs
    from threadpoolctl import threadpool_limits

    G = Xs @ Xs[train].T  # (n, n_train)
    # OpenBLAS' threaded eigh is slower than one thread at these sizes, by 50x on a busy machine.
    with threadpool_limits(1, user_api="blas"):
        evals, U = np.linalg.eigh(G[train].astype(np.float64))
    keep = evals > max(evals.max(), 1e-30) * 1e-9
    U, s = U[:, keep], np.sqrt(evals[keep])
    return ((G.astype(np.float64) @ U) / s).astype(np.float32)


class _Constant:
    """The probe of a training fold holding one class: it can only predict that class."""

    C_ = float("nan")

    def __init__(self, label):
        self.label = label

    def predict(self, Z):
        return np.full(len(Z), self.label)


def _fit_classifier(Z, y, train, groups, config: ProbeConfig, seed: int):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    y_tr = y[train]
    if len(np.unique(y_tr)) < 2:
        return _Constant(y_tr[0])
    inner = _inner_splits(y_tr, groups[train], config.inner_folds, seed, stratify=True)
    if len(inner) < 2 or any(len(np.unique(y_tr[tr])) < 2 for tr, _ in inner):
        # Too few items to choose C by CV (an inner training split would hold one class):
        # the middle of the grid, recorded as the chosen C.
        C = float(np.median(config.Cs))
        clf = LogisticRegression(C=C, max_iter=config.max_iter).fit(Z[train], y_tr)
        clf.C_ = C
        return clf
    clf = LogisticRegressionCV(Cs=list(config.Cs), l1_ratios=(0.0,), cv=inner, scoring="neg_log_loss",
                               max_iter=config.max_iter, use_legacy_attributes=False)
    clf.fit(Z[train], y_tr)
    return clf


def _fit_regressor(Z, y, train, groups, config: ProbeConfig, seed: int):
    from sklearn.linear_model import RidgeCV

    g = groups[train]
    # One row per item: efficient leave-one-out is leave-one-item-out. Otherwise grouped inner folds.
    cv = None if len(np.unique(g)) == len(g) else _inner_splits(None, g, config.inner_folds, seed, stratify=False)
    reg = RidgeCV(alphas=list(config.alphas), cv=cv)
    reg.fit(Z[train], y[train])
    return reg


def _r2(y_true, y_pred) -> float:
    from sklearn.metrics import r2_score

    if y_true.ndim == 2:
        return float(r2_score(y_true, y_pred, multioutput="variance_weighted"))
    return float(r2_score(y_true, y_pred))


SMALL_PROBLEM = 8_000_000  #: elements of a design matrix below which fits run on one thread


@contextlib.contextmanager
def _one_thread_if_small(n_elements: int):
    """Run small fits on one BLAS/torch thread.

    lbfgs and Adam steps on matrices of a few hundred thousand elements are dominated by
    thread hand-offs: on a 2-core machine one thread is 5-30x faster than two (far more on
    a loaded machine). Large problems keep every thread; the Gram products stay parallel.
    """
    if n_elements >= SMALL_PROBLEM:
        yield
        return
    import sys

    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # only the CTC head needs torch; don't import it for sklearn fits
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        if torch:
            torch.set_num_threads(before)


def _score_fold(target: Target, Z, y, y_ctrl, train, test, config: ProbeConfig, seed: int) -> dict:
    with _one_thread_if_small(Z.size):
        return _score_fold_serial(target, Z, y, y_ctrl, train, test, config, seed)


def _score_fold_serial(target: Target, Z, y, y_ctrl, train, test, config: ProbeConfig, seed: int) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    g = target.groups
    if target.kind == "classification":
        probe = _fit_classifier(Z, y, train, g, config, seed)
        pred = probe.predict(Z[test])
        major = np.bincount(y[train]).argmax()
        base = np.full(len(test), major)
        ctrl = _fit_classifier(Z, y_ctrl, train, g, config, seed).predict(Z[test])
        return {"score": accuracy_score(y[test], pred), "baseline": accuracy_score(y[test], base),
                "control": accuracy_score(y_ctrl[test], ctrl),
                "macro_f1": f1_score(y[test], pred, average="macro", zero_division=0),
                "baseline_macro_f1": f1_score(y[test], base, average="macro", zero_division=0),
                "C": float(np.ravel(probe.C_)[0])}
    probe = _fit_regressor(Z, y, train, g, config, seed)
    base = np.broadcast_to(y[train].mean(0), y[test].shape)
    ctrl = _fit_regressor(Z, y_ctrl, train, g, config, seed)
    return {"score": _r2(y[test], probe.predict(Z[test])), "baseline": _r2(y[test], base),
            "control": _r2(y_ctrl[test], ctrl.predict(Z[test])), "alpha": float(probe.alpha_)}


def layer_features(store: ActivationStore, target: Target, layer: str) -> np.ndarray:
    """One layer's features for the target's units, (n_units, d_model) float32."""
    if target.kind == "ctc":
        return store.read(layer, rows=np.concatenate(target.item_rows))
    if target.rows is None:
        return store.pooled(layer, target.items, how=target.positions)
    return store.read(layer, rows=target.rows)


# ---- CTC text decodability ---------------------------------------------------------------


def fit_ctc_head(seqs: Sequence[np.ndarray], targets: Sequence[np.ndarray], n_symbols: int,
                 config: ProbeConfig = ProbeConfig(), seed: int = 0):
    """Train one linear CTC head (blank = 0) on standardised states for `config.ctc_epochs`
    epochs, no validation split; returns a callable that decodes a list of (T_i, d) arrays into
    symbol sequences. The reference implementation (`interp.ctc.fit_ctc_head`); sweeps use the
    batched `interp.ctc.fit_ctc_heads`."""
    from interp.ctc import fit_ctc_head as reference

    return reference(seqs, targets, n_symbols, config.ctc_epochs, config.ctc_lr, config.ctc_weight_decay,
                     config.ctc_batch_items, seed, config.device)


def _medoid(seqs: Sequence[np.ndarray], rng: np.random.Generator, limit: int = 200) -> np.ndarray:
    """The training transcript with the least total edit distance to (up to `limit`) others."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    pick = rng.choice(len(seqs), size=min(limit, len(seqs)), replace=False)
    cand = [list(map(int, seqs[i])) for i in pick]
    d = cdist(cand, cand, scorer=Levenshtein.distance)
    return seqs[pick[int(np.argmin(d.sum(1)))]]


def _score_ctc_layer(target: Target, X: np.ndarray, bounds: np.ndarray, folds, y_ctrl, config: ProbeConfig) -> list[dict]:
    """Every fold's probe and control head of one layer, trained together (`fit_ctc_heads`):
    head 2k is fold k's probe, head 2k+1 its shuffled-transcript control."""
    import torch

    from interp.ctc import CTCHeadConfig, cer, fit_ctc_heads

    if config.ctc_method == "reference":
        return [_score_ctc_fold_reference(target, X, bounds, y_ctrl, tr, te, config, config.seed + k)
                for k, (tr, te) in enumerate(folds)]
    with _one_thread_if_small(X.size):
        x = torch.as_tensor(X, dtype=torch.float32).to(config.device)
        train = [tr for tr, _ in folds for _ in (0, 1)]
        targets = [y for _ in folds for y in (target.y, y_ctrl)]
        head_config = CTCHeadConfig(epochs=config.ctc_epochs, lr=config.ctc_lr, start_lr=config.ctc_start_lr,
                                    patience=config.ctc_patience, weight_decay=config.ctc_weight_decay,
                                    batch_items=config.ctc_batch_items, val_fraction=config.ctc_val_fraction,
                                    seed=config.seed, device=config.device)
        heads = fit_ctc_heads(x, bounds, targets, train, len(target.classes), head_config)
        out = []
        for k, (train_k, test) in enumerate(folds):
            rows = torch.from_numpy(np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in test])).to(x.device)
            lengths = np.diff(bounds)[test].tolist()
            xs = x.index_select(0, rows)
            refs = [target.y[i] for i in test]
            probe_cer = cer(refs, heads.decode(xs, lengths, 2 * k), target.classes)
            control_cer = cer([y_ctrl[i] for i in test], heads.decode(xs, lengths, 2 * k + 1), target.classes)
            medoid = _medoid([target.y[i] for i in train_k], np.random.default_rng(config.seed + k))
            base_cer = cer(refs, [medoid] * len(test), target.classes)
            dec = lambda c: max(0.0, 1.0 - c)  # noqa: E731
            out.append({"score": dec(probe_cer), "baseline": dec(base_cer), "control": dec(control_cer),
                        "cer": probe_cer, "baseline_cer": base_cer, "control_cer": control_cer,
                        "epochs": float(heads.epochs[2 * k]), "control_epochs": float(heads.epochs[2 * k + 1])})
        return out


def _score_ctc_fold_reference(target: Target, X: np.ndarray, bounds: np.ndarray, y_ctrl, train, test,
                              config: ProbeConfig, seed: int) -> dict:
    """One fold with the reference heads (`fit_ctc_head`): probe, medoid and control."""
    from interp.ctc import cer

    with _one_thread_if_small(X.size):
        seqs = [X[bounds[k]:bounds[k + 1]] for k in range(len(target.items))]
        tr_x, te_x = [seqs[k] for k in train], [seqs[k] for k in test]
        refs = [target.y[k] for k in test]
        probe_cer = cer(refs, fit_ctc_head(tr_x, [target.y[k] for k in train], len(target.classes), config, seed)(te_x),
                        target.classes)
        medoid = _medoid([target.y[k] for k in train], np.random.default_rng(seed))
        base_cer = cer(refs, [medoid] * len(test), target.classes)
        decode_ctrl = fit_ctc_head(tr_x, [y_ctrl[k] for k in train], len(target.classes), config, seed)
        control_cer = cer([y_ctrl[k] for k in test], decode_ctrl(te_x), target.classes)
    dec = lambda c: max(0.0, 1.0 - c)  # noqa: E731
    return {"score": dec(probe_cer), "baseline": dec(base_cer), "control": dec(control_cer), "cer": probe_cer,
            "baseline_cer": base_cer, "control_cer": control_cer}


# ---- the sweep ---------------------------------------------------------------------------

METRIC = {"classification": ("accuracy", "majority"), "regression": ("r2", "mean"), "ctc": ("decodability", "medoid")}


@dataclass
class ProbePlan:
    """A checked probe sweep, ready to run: target, layers and the folds every layer shares."""

    store: ActivationStore
    target: Target
    layers: list[str]
    folds: list[tuple[np.ndarray, np.ndarray]]  #: (train, test) unit indices, grouped by item
    control: object  #: the shuffled-label control target, aligned with target.y
    config: ProbeConfig


def plan_probe(store: ActivationStore, target: str, layers: str | Sequence = "all", positions: str | None = None,
               kind: str = "auto", config: ProbeConfig = ProbeConfig()) -> ProbePlan:
    """Validate the request and build the target and folds; every bad-input error is raised here,
    before any fitting."""
    if store.n_items == 0:
        raise InterpError(f"store {store.path} holds no items; run `interp trace` to fill it")
    names = store.resolve_layers(layers)
    if config.ctc_method not in ("batched", "reference"):
        raise InterpError(f"unknown CTC method '{config.ctc_method}'; use batched or reference")
    tgt = build_target(store, target, positions, kind, config)
    folds = make_folds(tgt, config.folds, config.seed)
    if tgt.kind == "classification" and not can_stratify(tgt.y, tgt.groups, config.folds):
        tgt.notes.append(f"no class has {config.folds} items: folds are grouped but not stratified")
    return ProbePlan(store, tgt, names, folds, control_labels(tgt, folds, config.seed), config)


def run_probe(plan: ProbePlan, on_layer: Callable[[LayerScore], None] | None = None) -> ProbeResult:
    """Fit and score the plan's probes layer by layer, one layer's features in memory at a time."""
    store, tgt, config = plan.store, plan.target, plan.config
    metric, baseline_name = METRIC[tgt.kind]
    n_positions = int(sum(len(r) for r in tgt.item_rows)) if tgt.kind == "ctc" else tgt.n_units
    bounds = np.concatenate([[0], np.cumsum([len(r) for r in tgt.item_rows])]) if tgt.kind == "ctc" else None
    notes = list(tgt.notes)
    scores = []
    unconverged = 0
    for layer in plan.layers:
        X = layer_features(store, tgt, layer)
        if not np.all(np.isfinite(X)):
            raise InterpError(f"layer {layer} of {store.path} holds non-finite values (float16 overflow?); "
                              "re-trace with --dtype float32")
        per_fold = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if tgt.kind == "ctc":
                per_fold = _score_ctc_layer(tgt, X, bounds, plan.folds, plan.control, config)
            for k, (train, test) in enumerate(plan.folds if tgt.kind != "ctc" else []):
                Z = _span_features(_standardise(X, train), train)
                per_fold.append(_score_fold(tgt, Z, np.asarray(tgt.y), plan.control, train, test, config, config.seed + k))
        unconverged += sum("converge" in str(w.message).lower() for w in caught)
        del X
        score = _summarise(layer, per_fold, len(tgt.items), n_positions)
        scores.append(score)
        if on_layer:
            on_layer(score)
    if unconverged:
        notes.append(f"{unconverged} logistic fit(s) stopped at max_iter={config.max_iter} before converging")
    return ProbeResult(str(store.path), tgt.name, tgt.kind, metric, baseline_name, tgt.positions, config.folds,
                       config.seed, scores, len(tgt.items), n_positions, tgt.classes, notes)


def probe(store: ActivationStore | str | Path, target: str, layers: str | Sequence = "all", positions: str | None = None,
          kind: str = "auto", config: ProbeConfig = ProbeConfig(),
          on_layer: Callable[[LayerScore], None] | None = None) -> ProbeResult:
    """Fit and score one probe per layer for TARGET, with majority/mean and shuffled-label baselines
    on the same grouped folds (`plan_probe` then `run_probe`)."""
    own = not isinstance(store, ActivationStore)
    store = ActivationStore(store) if own else store
    try:
        return run_probe(plan_probe(store, target, layers, positions, kind, config), on_layer)
    finally:
        if own:
            store.close()


def _summarise(layer: str, per_fold: list[dict], n_items: int, n_positions: int) -> LayerScore:
    def stat(key):
        v = np.array([f[key] for f in per_fold], dtype=np.float64)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    score, spread = stat("score")
    base, base_sd = stat("baseline")
    ctrl, ctrl_sd = stat("control")
    extra = {}
    for key in per_fold[0]:
        if key not in ("score", "baseline", "control"):
            m, s = stat(key)
            extra[key] = m
            if key in ("macro_f1", "cer"):
                extra[f"{key}_spread"] = s
    return LayerScore(layer, score, spread, [float(f["score"]) for f in per_fold], base, base_sd, ctrl, ctrl_sd,
                      score - ctrl, n_items, n_positions, extra)
