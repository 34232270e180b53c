"""Fitted probes: the probing estimator fitted on every row, frozen, saved, and used as a direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp.analysis.fitted_probe import FittedProbe, fit_probe
from interp.errors import InterpError


def _planted(n=120, d=24, seed=0):
    """Two classes apart along one raw direction, features on very different scales."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.2, 5.0, size=d)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    labels = np.where(np.arange(n) % 2 == 0, "neg", "pos")
    X = rng.normal(size=(n, d)) * scales + 3.0 + np.outer(np.where(labels == "pos", 1.0, -1.0), 2.0 * u)
    return X, labels, u / scales**2  # the best linear read-out of a shift u in noise of these scales: Sigma^-1 u


@pytest.mark.parametrize("d", [24, 300])
def test_a_fitted_probe_is_sklearns_logistic_regression_on_standardised_rows(d):
    """Same decisions as scikit-learn's own fit at the chosen C, wide (fitted in the rows' span,
    weights mapped back) or narrow."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from interp.analysis.probing import ProbeConfig

    X, y, _ = _planted(d=d)
    probe = fit_probe(X, y, config=ProbeConfig(max_iter=5000))
    assert isinstance(probe, interp.FittedProbe) and probe.kind == "classification" and probe.classes == ("neg", "pos")
    scaler = StandardScaler().fit(X)
    ref = LogisticRegression(C=probe.meta["C"], max_iter=10_000, tol=1e-10).fit(scaler.transform(X), y == "pos")
    # equal up to lbfgs' stopping tolerance (1e-4 on the gradient: ~1% of a decision)
    np.testing.assert_allclose(probe.decision_function(X), ref.decision_function(scaler.transform(X)), rtol=2e-2, atol=1e-2)
    np.testing.assert_allclose(probe.predict_proba(X)[:, 1], ref.predict_proba(scaler.transform(X))[:, 1], atol=5e-3)
    assert probe.score(X, y) >= 0.95 and list(probe.predict(X[:4])) == list(y[:4])


def test_direction_is_the_planted_direction_in_the_residual_basis():
    X, y, u = _planted(n=400, d=16, seed=1)
    probe = fit_probe(X, y)
    direction = probe.direction("pos")
    assert np.linalg.norm(direction) == pytest.approx(1.0)
    assert direction @ (u / np.linalg.norm(u)) > 0.9  # the standardisation undone: the raw-space direction
    assert np.allclose(probe.direction("neg"), -direction) and np.allclose(probe.direction(), direction)
    # moving rows along it raises the probe's score for 'pos'
    before = probe.decision_function(X)
    assert np.all(probe.decision_function(X + 0.5 * direction) > before)
    with pytest.raises(InterpError, match="not one of"):
        probe.direction("maybe")


def test_regression_multiclass_save_and_load(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 12))
    values = X[:, :2] @ np.array([[1.0, 0.0], [-2.0, 1.0]]) + 0.05 * rng.normal(size=(90, 2))
    reg = fit_probe(X, values, classes=["a", "b"])
    assert reg.kind == "regression" and reg.score(X, values) > 0.95 and reg.direction("b").shape == (12,)
    classes = np.array(["x", "y", "z"])[np.argmax(X[:, :3], 1)]
    multi = fit_probe(X, classes, groups=np.arange(90) // 3, layer=4, target="letter", model_fingerprint="f" * 16)
    assert multi.predict_proba(X).shape == (90, 3) and np.allclose(multi.predict_proba(X).sum(1), 1.0)
    with pytest.raises(InterpError, match="3 outputs"):
        multi.direction()
    for probe in (reg, multi):
        back = FittedProbe.load(probe.save(tmp_path / f"{probe.kind}.safetensors"))
        assert back.describe() == probe.describe()
        np.testing.assert_array_equal(back.predict(X), probe.predict(X))
    assert back.layer == "4" and back.target == "letter" and back.model_fingerprint == "f" * 16
    with pytest.raises(InterpError, match="needs at least two classes"):
        fit_probe(X, ["one"] * 90)


def test_the_sweep_returns_a_fitted_probe_per_layer(tmp_path):
    from interp.analysis.probing import ProbeConfig
    from interp.analysis.sweep import probe
    from tests.test_probes import planted_label_store

    store = planted_label_store(tmp_path / "s.h5", n=60)
    result = probe(store, "label", layers="1,2", config=ProbeConfig(folds=3, Cs=(1e-2, 1.0)))
    assert set(result.probes) == {"1", "2"} and "probes" not in result.to_dict()
    fitted = result.probes["2"]
    assert fitted.layer == "2" and fitted.target == "label" and fitted.classes == ("neg", "pos")
    with interp.ActivationStore(store) as s:
        X, y = s.pooled("2"), s.field("label")
    assert fitted.score(X, y) >= 0.95 > result.probes["1"].score(X, y)


def test_steering_along_a_fitted_direction_moves_the_residual_by_it(tiny_adapter, tmp_path):
    """The direction is in the residual basis: Steer adds exactly alpha x direction there."""
    from interp.audio import load_audio
    from interp.manifest import read_manifest
    from tests.conftest import write_tones

    adapter = tiny_adapter("qwen2-audio")
    rows = read_manifest(write_tones(tmp_path, 2))
    batch = adapter.prepare([load_audio(r["audio"]) for r in rows], ["Hi", "Hi"], padding_side="left")
    X, y, _ = _planted(n=60, d=adapter.d_model, seed=3)
    direction = torch.as_tensor(fit_probe(X, y).direction("pos"), dtype=torch.float32)
    plain, steered = interp.Record(layers=[1], positions="all"), interp.Record(layers=[1], positions="all")
    interp.run(adapter, batch, [plain])
    interp.run(adapter, batch, [interp.Steer(layers=[1], positions="all", vector=3.0 * direction), steered])
    delta = steered.saved[1][0][2] - plain.saved[1][0][2]
    torch.testing.assert_close(delta, (3.0 * direction).expand_as(delta), rtol=1e-4, atol=1e-4)
