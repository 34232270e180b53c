"""Re-probing: does a fresh linear probe still read a concept after erasure?

`reprobe` trains fresh probes for a concept on held-out store rows at each layer, on the stored
activations and on each eraser's output, and reports their grouped cross-validated scores
beside the majority (or mean) baseline: LEACE's guarantee is that no linear probe beats the
baseline on the fitting distribution, and a random subspace of the same rank should not get there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from interp.analysis.concepts import Concept
from interp.analysis.leace import Eraser
from interp.analysis.probing import ProbeConfig, cross_validate, make_folds
from interp.analysis.targets import Target
from interp.errors import InterpError
from interp.progress import Progress, stage
from interp.store import ActivationStore


@dataclass
class ReprobeLayer:
    """A fresh probe's held-out score at one layer, on original and on erased activations."""

    layer: int
    original: float
    erased: dict[str, float]  #: condition (e.g. 'label erased', 'random subspace') -> score
    baseline: float  #: majority class accuracy, or 0 for R^2 (the training mean)


@dataclass
class ReprobeResult:
    concept: str
    metric: str  #: accuracy | r2
    baseline_name: str  #: majority | mean
    n_items: int
    n_rows: int
    folds: int
    layers: list[ReprobeLayer]


def _sample_rows(rows: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """A uniform random subset of rows (sorted). Uniform on purpose: the eraser's guarantee holds
    on the distribution of rows it was fitted on, and a per-item selection that over-weights some
    positions (say each item's first and last) can read back a concept encoded differently there."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))


def held_out_target(store: ActivationStore, concept: Concept, max_rows: int | None = 2000, seed: int = 0) -> Target:
    """The concept as a probe target on (at most `max_rows` of) its rows: its classes (the
    one-hot column set) or its values, grouped by item."""
    rows = _sample_rows(concept.rows, max_rows, seed)
    groups = store.row_items(rows)
    z = concept.z(rows)
    classes = concept.kind == "classes"
    return Target(concept.name, "classification" if classes else "regression", "all", np.unique(groups), rows,
                  z.argmax(1) if classes else z, groups, "item", list(concept.columns) if classes else [])


def reprobe(store: ActivationStore, concept: Concept, erasers: Mapping[str, Eraser], layers: Sequence[int],
            folds: int = 2, seed: int = 0, max_rows: int | None = 2000, config: ProbeConfig | None = None,
            progress: Progress | None = None) -> ReprobeResult:
    """Train fresh probes for `concept` on the rows it covers (held-out items: restrict it
    first) at each layer: on the stored activations and on each eraser's output, with the
    probing estimator of `interp probe` (`interp.analysis.probing.cross_validate`: the same
    grids, standardisation and folds, so the numbers are comparable). At most `max_rows` rows,
    drawn uniformly, keep it affordable for wide models."""
    config = replace(config or ProbeConfig(), folds=folds, seed=seed)
    target = held_out_target(store, concept, max_rows, seed)
    n_groups = len(target.items)
    if n_groups < 4:
        raise InterpError(f"re-probing needs at least 4 held-out items; have {n_groups}: raise --holdout or add items")
    fold_list = make_folds(target, folds, seed)

    def score(X) -> tuple[float, float]:
        per_fold = cross_validate(X, target.y, target.groups, target.kind, fold_list, config)
        return float(np.mean([f["score"] for f in per_fold])), float(np.mean([f["baseline"] for f in per_fold]))

    out = []
    advance = stage(progress, "re-probing", len(layers), "layers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged fits on erased (signal-free) rows are expected
        for layer in layers:
            X = store.read(str(layer), rows=target.rows, dtype=np.float64)
            original, base = score(X)
            erased = {name: score(e(X, layer))[0] for name, e in erasers.items()}
            out.append(ReprobeLayer(int(layer), original, erased, base))
            advance(1)
    metric, base_name = ("accuracy", "majority") if concept.kind == "classes" else ("r2", "mean")
    return ReprobeResult(concept.name, metric, base_name, n_groups, int(len(target.rows)), folds, out)
