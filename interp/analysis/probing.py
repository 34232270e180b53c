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
fitted in the span of the training rows (`_span_features`), a change of variables that is
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
