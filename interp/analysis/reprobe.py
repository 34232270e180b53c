"""Re-probing: does a fresh linear probe still read a concept after erasure?

`reprobe` trains fresh probes for a concept on held-out store rows at each layer, on the stored
activations and on each eraser's output, and reports their grouped cross-validated scores
beside the majority (or mean) baseline: LEACE's guarantee is that no linear probe beats the
baseline on the fitting distribution, and a random subspace of the same rank should not get there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from interp.analysis.concepts import Concept
from interp.analysis.leace import Eraser
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


def _span_coordinates(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows in an orthonormal basis of the training rows' span, when that is narrower than d.

    An L2-penalised linear model's weights lie in the span of its training rows, so fitting on
    these coordinates gives the same predictions at the same penalty (the exact change of
    variables `interp.analysis.probing` uses): a 4096-d state over 1,000 rows becomes a 1,000-d problem.
    """
    n, d = train.shape
    if d <= n:
        return train, test
    evals, U = np.linalg.eigh(train @ train.T)
    keep = evals > max(evals.max(), 1e-30) * 1e-9
    basis = train.T @ (U[:, keep] / np.sqrt(evals[keep]))  # (d, r) orthonormal
    return train @ basis, test @ basis


def probe_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, folds: int = 2, seed: int = 0) -> tuple[float, float]:
    """(probe score, baseline) of a fresh linear probe under grouped K-fold: logistic regression
    (C chosen by inner grouped CV) scored by accuracy against the training-majority class, or
    ridge (alpha by inner CV) scored by R^2 against the training mean."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    n_groups = len(np.unique(groups))
    if n_groups < 4:
        raise InterpError(f"re-probing needs at least 4 held-out items; have {n_groups}: raise --holdout or add items")

    def splitter(k, labels, g):
        # Stratified for classes: with few items, unstratified folds put different majorities
        # on the two sides, and the majority baseline stops being what a blind probe scores.
        k = min(k, len(np.unique(g)))
        if kind == "classes":
            return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(labels, labels, g))
        return list(GroupKFold(k, shuffle=True, random_state=seed).split(labels, groups=g))

    scores, bases = [], []
    # lbfgs on small problems is dominated by BLAS thread hand-offs; big ones keep the threads
    threads = 1 if X.size < 4_000_000 else None
    with warnings.catch_warnings(), threadpool_limits(threads, user_api="blas"):
        warnings.simplefilter("ignore")
        for train, test in splitter(folds, y, groups):
            scaler = StandardScaler().fit(X[train])
            xtr, xte = _span_coordinates(scaler.transform(X[train]), scaler.transform(X[test]))
            inner = splitter(3, y[train], groups[train])
            if kind == "classes":
                if len(np.unique(y[train])) < 2:
                    continue
                clf = LogisticRegressionCV(Cs=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], cv=inner, scoring="neg_log_loss", max_iter=300)
                clf.fit(xtr, y[train])
                scores.append(float((clf.predict(xte) == y[test]).mean()))
                bases.append(float((y[test] == np.bincount(y[train]).argmax()).mean()))
            else:
                reg = RidgeCV(alphas=[1e-1, 1.0, 1e1, 1e2, 1e3, 1e4], cv=inner).fit(xtr, y[train])
                scores.append(float(r2_score(y[test], reg.predict(xte), multioutput="variance_weighted")))
                mean = np.broadcast_to(y[train].mean(0), y[test].shape)
                bases.append(float(r2_score(y[test], mean, multioutput="variance_weighted")))
    if not scores:
        return float("nan"), float("nan")
    return float(np.mean(scores)), float(np.mean(bases))


def reprobe(store: ActivationStore, concept: Concept, erasers: Mapping[str, Eraser], layers: Sequence[int],
            folds: int = 2, seed: int = 0, max_rows: int | None = 2000,
            progress: Progress | None = None) -> ReprobeResult:
    """Train fresh probes for `concept` on the rows it covers (held-out items: restrict it
    first) at each layer: on the stored activations and on each eraser's output. At most
    `max_rows` rows, drawn uniformly, keep it affordable for wide models."""
    rows = _sample_rows(concept.rows, max_rows, seed)
    groups = store.row_items(rows)
    z = concept.z(rows)
    y = z.argmax(1) if concept.kind == "classes" else z
    out = []
    advance = stage(progress, "re-probing", len(layers), "layers")
    for layer in layers:
        X = store.read(str(layer), rows=rows, dtype=np.float64)
        original, base = probe_scores(X, y, groups, concept.kind, folds, seed)
        erased = {name: probe_scores(e(X, layer), y, groups, concept.kind, folds, seed)[0] for name, e in erasers.items()}
        out.append(ReprobeLayer(int(layer), original, erased, base))
        advance(1)
    metric, base_name = ("accuracy", "majority") if concept.kind == "classes" else ("r2", "mean")
    return ReprobeResult(concept.name, metric, base_name, int(len(np.unique(groups))), int(len(rows)), folds, out)
