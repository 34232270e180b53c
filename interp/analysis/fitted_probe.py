"""Fitted probes: a linear read-out of one layer, frozen, saved, and usable as a direction.

`fit_probe(X, y, groups)` fits the probing estimator of `interp probe`
(`interp.analysis.probing`: standardised features, C or alpha chosen by grouped inner CV,
fitted in the training rows' span when features outnumber rows) on every row it is given, and
freezes it into a `FittedProbe`: coefficients on standardised features, the standardisation,
the classes (or output names), and what it was fitted on (layer, target, model fingerprint).
The probe sweep (`interp.analysis.sweep.run_probe`) returns one per layer beside its
cross-validated scores.

A probe is a direction in the residual stream: `direction(class_)` is the unit vector along
which the probe's decision grows, in the residual's own basis (the standardisation undone:
w / scale), ready for `Steer` or `Ablate`. Probes are saved as one safetensors file with JSON
metadata, like erasers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from interp.analysis.probing import ProbeConfig, fit_classifier, fit_regressor, span_features, standardise
from interp.errors import InterpError

FORMAT = "interp-probe"
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class FittedProbe:
    """A linear probe of one layer, frozen: decision = ((x - mean) / scale) @ coef.T + intercept.

    >>> probe = fit_probe(store.pooled(8), labels, kind="classification")  # doctest: +SKIP
    >>> interp.run(model, batch, [Steer(layers=[8], vector=4 * probe.direction("positive"))])  # doctest: +SKIP
    """

    kind: str
    """classification | regression."""
    coef: np.ndarray
    """(n_outputs, d_model) float64 weights on standardised features (one row for two classes)."""
    intercept: np.ndarray
    """(n_outputs,) float64."""
    mean: np.ndarray
    """(d_model,) the standardisation's mean (of the rows it was fitted on)."""
    scale: np.ndarray
    """(d_model,) the standardisation's scale (1 where a feature was constant)."""
    classes: tuple[str, ...] = ()
    """Class names, in the order of the probe's outputs (classification); output names (regression)."""
    layer: str | None = None
    """The layer it reads, when fitted from a store."""
    target: str = ""
    """What it predicts (an item field, energy, chars, ...)."""
    model_fingerprint: str = ""
    """The model whose residuals it was fitted on."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Provenance: rows and items fitted, chosen C or alpha, ..."""

    def __post_init__(self):
        for name in ("coef", "intercept", "mean", "scale"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def d_model(self) -> int:
        return int(self.coef.shape[1])

    def decision_function(self, X) -> np.ndarray:
        """(n,) or (n, n_outputs) scores of raw residuals X (n, d_model)."""
        z = ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale) @ self.coef.T + self.intercept
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X) -> np.ndarray:
        """(n, n_classes) class probabilities, as the logistic regression gives them."""
        if self.kind != "classification":
            raise InterpError("predict_proba applies to classification probes; this one regresses")
        z = self.decision_function(X)
        if z.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-z))
            return np.stack([1.0 - p, p], axis=1)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Class names (classification) or values (regression) for raw residuals X."""
        if self.kind == "classification":
            return np.asarray(self.classes, dtype=object)[self.predict_proba(X).argmax(1)]
        return self.decision_function(X)

    def score(self, X, y) -> float:
        """Accuracy (y: class names) or R^2 (y: values, variance-weighted over outputs)."""
        if self.kind == "classification":
            return float(np.mean(self.predict(X) == np.asarray([str(v) for v in np.ravel(y)], dtype=object)))
        from sklearn.metrics import r2_score

        return float(r2_score(np.asarray(y, dtype=np.float64), self.predict(X), multioutput="variance_weighted"))

    def direction(self, class_: str | None = None) -> np.ndarray:
        """Unit vector (d_model,) in the residual's basis along which the probe's score for
        `class_` (a regression output, or a class; for two classes, the second by default)
        grows: the weights with the standardisation undone (w / scale), normalised."""
        if len(self.coef) == 1:
            if class_ is not None and str(class_) not in self.classes:
                raise InterpError(f"'{class_}' is not one of the probe's {', '.join(self.classes) or 'outputs'}")
            w = self.coef[0] * (-1.0 if self.kind == "classification" and class_ is not None
                                and str(class_) == self.classes[0] else 1.0)
        else:
            if class_ is None:
                raise InterpError(f"this probe has {len(self.coef)} outputs ({', '.join(self.classes)}); name one")
            if str(class_) not in self.classes:
                raise InterpError(f"'{class_}' is not one of the probe's {', '.join(self.classes)}")
            w = self.coef[self.classes.index(str(class_))]
        w = w / self.scale
        norm = np.linalg.norm(w)
        return w / norm if norm > 0 else w

    def describe(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "classes": list(self.classes),
                "layer": self.layer, "target": self.target, "model_fingerprint": self.model_fingerprint,
                "d_model": self.d_model, "meta": dict(self.meta)}

    def save(self, path) -> Path:
        """One .safetensors file: coef, intercept, mean, scale, plus the metadata as JSON."""
        import torch

        from interp.atomic import write_safetensors

        tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in ("coef", "intercept", "mean", "scale")}
        return write_safetensors(path, tensors, self.describe())

    @classmethod
    def load(cls, path) -> "FittedProbe":
        from interp.atomic import read_safetensors

        tensors, meta = read_safetensors(path, "probe", FORMAT, FORMAT_VERSION, framework="np")
        return cls(meta["kind"], tensors["coef"], tensors["intercept"], tensors["mean"], tensors["scale"],
                   meta.get("classes", ()), meta.get("layer"), meta.get("target", ""), meta.get("model_fingerprint", ""),
                   meta.get("meta", {}))


def infer_kind(y) -> str:
    """'regression' for numbers that are many or fractional, else 'classification' (text, or a
    few whole numbers such as SNRs or ratings): the rule item-field targets use."""
    values = list(np.ravel(np.asarray(y, dtype=object)))
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                  for v in values)
    if not numeric:
        return "classification"
    distinct = {float(v) for v in values if not np.isnan(float(v))}
    return "regression" if len(distinct) > 10 or any(not v.is_integer() for v in distinct) else "classification"


def fit_probe(X, y, groups: Sequence | None = None, kind: str = "auto", config: ProbeConfig | None = None,
              layer: str | int | None = None, target: str = "", model_fingerprint: str = "",
              classes: Sequence[str] | None = None) -> FittedProbe:
    """Fit the probing estimator on every row of X (n, d_model) for y and freeze it.

    y: class labels (any values; or class ids with `classes` naming them) or numbers (n,) /
    (n, k). `groups` (an item per row; default: each row its own) keep an item's rows on one
    side of the inner folds that choose C or alpha. `kind`: auto | classification | regression."""
    config = config or ProbeConfig()
    X = np.asarray(X)
    groups = np.arange(len(X)) if groups is None else np.asarray(groups)
    if len(X) != len(y) or len(groups) != len(X):
        raise InterpError(f"fit_probe needs one y and one group per row of X: {len(X)} rows, {len(y)} y, "
                          f"{len(groups)} groups")
    kind = infer_kind(y) if kind == "auto" else kind
    if kind not in ("classification", "regression"):
        raise InterpError(f"unknown probe kind '{kind}'; use auto, classification or regression")
    Xs, scaler = standardise(X, np.arange(len(X)))
    Z, back = span_features(Xs, np.arange(len(X)))
    if kind == "classification":
        if classes is None:
            classes, codes = np.unique(np.asarray([str(v) for v in np.ravel(y)], dtype=object), return_inverse=True)
        else:
            codes = np.asarray(y, dtype=np.int64)
        if len(classes) < 2 or len(np.unique(codes)) < 2:
            raise InterpError("a classification probe needs at least two classes among its rows")
        est = fit_classifier(Z, codes, groups, config, config.seed)
        chosen = {"C": float(np.ravel(est.C_)[0])}
        names = [str(c) for c in classes]
    else:
        codes = np.asarray(y, dtype=np.float64)
        est = fit_regressor(Z, codes, groups, config, config.seed)
        chosen = {"alpha": float(est.alpha_)}
        names = list(classes) if classes is not None else []
    a = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
    coef = a if back is None else (Xs.astype(np.float64).T @ (back @ a.T)).T  # from span coordinates back to features
    meta = {"n_rows": int(len(X)), "n_groups": int(len(np.unique(groups))), **chosen}
    return FittedProbe(kind, coef, np.ravel(np.asarray(est.intercept_, dtype=np.float64)), scaler.mean_,
                       scaler.scale_, tuple(names), None if layer is None else str(layer), target, model_fingerprint,
                       meta)
