"""The probing estimator: grouped cross-validation folds and one linear probe per fold.

Folds are grouped by item (`make_folds`), so positions of one utterance never sit on both sides
of a split, and stratified by class where some class has an item for every fold. A fold's
probe is fitted on standardised features (statistics of the training fold): a logistic
regression whose C is chosen by an inner grouped CV, or a ridge regression whose alpha is
chosen the same way (leave-one-out when each item is one row). A training fold that holds one
class gets the probe that predicts that class. Beside each probe: the training fold's
majority class (or mean) and the shuffled-label control (Hewitt & Liang's control task), the
same probe refitted on labels permuted across items or positions (`control_labels`).

When features outnumber training rows (pooled 7B states: 4096 dims, ~1000 items) the probe is
fitted in the span of the training rows (`span_features`), a change of variables that is
exact for L2-penalised linear models and makes a sweep minutes rather than hours on a CPU.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from interp.analysis.targets import Target
from interp.errors import InterpError


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
    ctc_jobs: int = 0  #: layers whose CTC heads train at once, each in a worker process on one thread (0: one per CPU core for a large sweep on a CPU; 1: in this process)
    ctc_method: str = "batched"  #: batched (all folds' heads at once, early stopping) | reference (one head at a time, fixed epochs; slow)
    pitch_fmin: float = 65.0  #: lowest F0 searched by pYIN (Hz)
    pitch_fmax: float = 500.0  #: highest F0 searched by pYIN (Hz)
    device: str = "cpu"  #: torch device of the CTC head


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


def standardise(X: np.ndarray, train: np.ndarray):
    """(X standardised with the training rows' statistics as float32, the fitted `StandardScaler`);
    a feature constant over the training rows keeps scale 1."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X[train].astype(np.float64, copy=False))
    return scaler.transform(X).astype(np.float32, copy=False), scaler


def span_features(Xs: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(coordinates of all rows in an orthonormal basis of the training rows' span, the map from
    those coordinates back to training-row weights), or (Xs, None) when features do not
    outnumber training rows.

    For an L2-penalised linear model the optimal weights lie in the span of the training
    rows (the gradient of the loss is X_tr^T r), so w = V a with V orthonormal gives the
    same fit and predictions with ||w|| = ||a||: an exact change of variables that turns a
    (n x d) problem with d >> n into an (n x n) one. With G = Xs Xs_tr^T and
    K = G[train] = U diag(s^2) U^T, the coordinates are G U / s and V = Xs_tr^T U / s, so a
    probe's weights in the standardised space are Xs_tr^T (back @ a) with back = U / s.
    """
    n_train, d = len(train), Xs.shape[1]
    if d <= n_train:
        return Xs, None
    from threadpoolctl import threadpool_limits

    G = Xs @ Xs[train].T  # (n, n_train)
    # OpenBLAS' threaded eigh is slower than one thread at these sizes, by 50x on a busy machine.
    with threadpool_limits(1, user_api="blas"):
        evals, U = np.linalg.eigh(G[train].astype(np.float64))
    keep = evals > max(evals.max(), 1e-30) * 1e-9
    back = U[:, keep] / np.sqrt(evals[keep])
    return (G.astype(np.float64) @ back).astype(np.float32), back


class _Constant:
    """The probe of a training fold holding one class: it can only predict that class."""

    C_ = float("nan")

    def __init__(self, label, n_features: int):
        self.label = label
        self.classes_ = np.array([label])
        self.coef_ = np.zeros((1, n_features))
        self.intercept_ = np.zeros(1)

    def predict(self, Z):
        return np.full(len(Z), self.label)


def fit_classifier(Z: np.ndarray, y: np.ndarray, groups: np.ndarray, config: ProbeConfig, seed: int):
    """A logistic regression on (Z, y) whose C is chosen by inner grouped CV (stratified), or
    the constant probe when y holds one class."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    if len(np.unique(y)) < 2:
        return _Constant(y[0], Z.shape[1])
    inner = _inner_splits(y, groups, config.inner_folds, seed, stratify=True)
    if len(inner) < 2 or any(len(np.unique(y[tr])) < 2 for tr, _ in inner):
        # Too few items to choose C by CV (an inner training split would hold one class):
        # the middle of the grid, recorded as the chosen C.
        C = float(np.median(config.Cs))
        clf = LogisticRegression(C=C, max_iter=config.max_iter).fit(Z, y)
        clf.C_ = C
        return clf
    clf = LogisticRegressionCV(Cs=list(config.Cs), l1_ratios=(0.0,), cv=inner, scoring="neg_log_loss",
                               max_iter=config.max_iter, use_legacy_attributes=False)
    return clf.fit(Z, y)


def fit_regressor(Z: np.ndarray, y: np.ndarray, groups: np.ndarray, config: ProbeConfig, seed: int):
    """A ridge regression on (Z, y) whose alpha is chosen by inner grouped CV (leave-one-out
    when each group is one row)."""
    from sklearn.linear_model import RidgeCV

    # One row per item: efficient leave-one-out is leave-one-item-out. Otherwise grouped inner folds.
    cv = None if len(np.unique(groups)) == len(groups) else _inner_splits(None, groups, config.inner_folds, seed,
                                                                          stratify=False)
    return RidgeCV(alphas=list(config.alphas), cv=cv).fit(Z, y)


def _r2(y_true, y_pred) -> float:
    from sklearn.metrics import r2_score

    if y_true.ndim == 2:
        return float(r2_score(y_true, y_pred, multioutput="variance_weighted"))
    return float(r2_score(y_true, y_pred))


SMALL_PROBLEM = 8_000_000  #: elements of a design matrix below which fits run on one thread


@contextlib.contextmanager
def one_thread_if_small(n_elements: int):
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


def score_fold(kind: str, Z: np.ndarray, y: np.ndarray, groups: np.ndarray, train: np.ndarray, test: np.ndarray,
               config: ProbeConfig, seed: int, y_control: np.ndarray | None = None) -> dict:
    """One outer fold: the probe's held-out score, the training fold's majority class (or mean)
    as baseline, and, given `y_control`, the same probe refitted on the control labels."""
    from sklearn.metrics import accuracy_score, f1_score

    g = groups[train]
    with one_thread_if_small(Z.size):
        if kind == "classification":
            probe = fit_classifier(Z[train], y[train], g, config, seed)
            pred = probe.predict(Z[test])
            base = np.full(len(test), np.bincount(y[train]).argmax())
            out = {"score": accuracy_score(y[test], pred), "baseline": accuracy_score(y[test], base),
                   "macro_f1": f1_score(y[test], pred, average="macro", zero_division=0),
                   "baseline_macro_f1": f1_score(y[test], base, average="macro", zero_division=0),
                   "C": float(np.ravel(probe.C_)[0])}
            if y_control is not None:
                ctrl = fit_classifier(Z[train], y_control[train], g, config, seed).predict(Z[test])
                out["control"] = accuracy_score(y_control[test], ctrl)
            return out
        probe = fit_regressor(Z[train], y[train], g, config, seed)
        base = np.broadcast_to(y[train].mean(0), y[test].shape)
        out = {"score": _r2(y[test], probe.predict(Z[test])), "baseline": _r2(y[test], base),
               "alpha": float(probe.alpha_)}
        if y_control is not None:
            ctrl = fit_regressor(Z[train], y_control[train], g, config, seed)
            out["control"] = _r2(y_control[test], ctrl.predict(Z[test]))
        return out


def cross_validate(X: np.ndarray, y, groups: np.ndarray, kind: str, folds: Sequence[tuple[np.ndarray, np.ndarray]],
                   config: ProbeConfig, y_control=None) -> list[dict]:
    """The probing estimator over outer folds: per fold, features standardised on the training
    fold, fitted in the training rows' span where d > n, then `score_fold`. Every caller (the
    probe sweep, the re-probe of erased activations) scores a layer with this."""
    y = np.asarray(y)
    out = []
    for k, (train, test) in enumerate(folds):
        Z, _ = span_features(standardise(X, train)[0], train)
        out.append(score_fold(kind, Z, y, groups, train, test, config, config.seed + k, y_control))
    return out
