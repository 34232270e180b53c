"""cascades.agreement against reference implementations (sklearn, statsmodels) and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

import cascades.agreement as ag
from cascades.agreement import (
    UNPARSED,
    benjamini_hochberg,
    bootstrap_kappa_ci,
    bootstrap_kappas,
    cohen_kappa,
    encode_labels,
    error_overlap,
    error_overlap_given_correct,
    kappa_undefined_reason,
    mcnemar_exact,
    raw_agreement,
    wilson_interval,
)


def _rater_pair(rng, n, k, copy_prob):
    """Two raters over k string categories; B copies A with probability copy_prob."""
    cats = np.array([f"c{i}" for i in range(k)])
    a = rng.integers(0, k, n)
    b = np.where(rng.random(n) < copy_prob, a, rng.integers(0, k, n))
    return list(cats[a]), list(cats[b])


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
def test_kappa_matches_sklearn(k):
    rng = np.random.default_rng(k)
    checked = 0
    for seed in range(40):
        n = int(rng.integers(5, 400))
        a, b = _rater_pair(np.random.default_rng(seed), n, k, copy_prob=rng.random())
        if kappa_undefined_reason(a, b):
            continue
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
        checked += 1
    assert checked >= 35


def test_kappa_mixed_label_types_and_disjoint_answers():
    # Different single answers on each side: p_e = 0, kappa defined (0), as sklearn says.
    assert cohen_kappa(["x"] * 5, ["y"] * 5) == pytest.approx(cohen_kappa_score(["x"] * 5, ["y"] * 5))
    a = [1, "1", 2, 2, "unparsed", 1]
    b = [1, "1", 2, 1, "unparsed", "1"]
    codes_a, codes_b, cats = encode_labels(a, b)
    assert len(cats) == 4  # 1 and "1" are different answers
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(codes_a, codes_b))


def test_kappa_undefined_when_one_class_on_both_sides():
    a = b = ["positive"] * 20
    assert math.isnan(cohen_kappa(a, b))
    reason = kappa_undefined_reason(a, b)
    assert reason is not None and "expected agreement is 1" in reason and "positive" in reason
    ci = bootstrap_kappa_ci(a, b, n_resamples=100)
    assert math.isnan(ci.low) and math.isnan(ci.high) and ci.n_undefined == 100
    assert math.isnan(cohen_kappa([], [])) and kappa_undefined_reason([], []) == "no items to compare"
    assert kappa_undefined_reason(["a", "b"], ["a", "a"]) is None


def test_raw_agreement():
    assert raw_agreement(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    with pytest.raises(ValueError):
        raw_agreement(["a"], ["a", "b"])


def test_vectorised_bootstrap_equals_loop_over_resamples():
    rng = np.random.default_rng(7)
    a, b = _rater_pair(rng, 150, 4, 0.6)
    codes_a, codes_b, cats = encode_labels(a, b)
    idx = rng.integers(0, 150, size=(50, 150))
    fast = bootstrap_kappas(codes_a, codes_b, len(cats), idx)
    slow = [cohen_kappa_score(codes_a[row], codes_b[row]) for row in idx]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_bootstrap_is_seeded_and_independent_of_chunking(monkeypatch):
    a, b = _rater_pair(np.random.default_rng(3), 300, 3, 0.7)
    first = bootstrap_kappa_ci(a, b, n_resamples=3000, seed=11)
    assert bootstrap_kappa_ci(a, b, n_resamples=3000, seed=11) == first
    assert bootstrap_kappa_ci(a, b, n_resamples=3000, seed=12) != first
    monkeypatch.setattr(ag, "_CHUNK_ELEMENTS", 1000)  # many small chunks, same random stream
    assert bootstrap_kappa_ci(a, b, n_resamples=3000, seed=11) == first
    k = cohen_kappa(a, b)
    assert first.low < k < first.high
    narrow = bootstrap_kappa_ci(a, b, n_resamples=3000, confidence=0.5, seed=11)
    assert first.low < narrow.low < narrow.high < first.high


def test_bootstrap_interval_covers_true_kappa_about_95_percent():
    # A population with a known joint answer distribution, hence a known kappa.
    joint = np.array([[0.30, 0.05, 0.03], [0.04, 0.25, 0.05], [0.02, 0.06, 0.20]])
    pa, pb = joint.sum(1), joint.sum(0)
    pe = float(pa @ pb)
    true_kappa = (np.trace(joint) - pe) / (1 - pe)
    rng = np.random.default_rng(2024)
    n_sims, n_items, hits = 200, 200, 0
    for sim in range(n_sims):
        cells = rng.choice(9, size=n_items, p=joint.ravel())
        a, b = cells // 3, cells % 3
        ci = bootstrap_kappa_ci(a, b, n_resamples=1000, seed=sim)
        hits += ci.low <= true_kappa <= ci.high
    coverage = hits / n_sims
    assert 0.90 <= coverage <= 0.99, coverage


def test_wilson_matches_statsmodels():
    for n in (1, 2, 7, 30, 200, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for conf in (0.9, 0.95, 0.99):
                ref = proportion_confint(k, n, alpha=1 - conf, method="wilson")
                np.testing.assert_allclose(wilson_interval(k, n, conf), ref, atol=1e-12)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_error_overlap_counts_same_wrong_answers_among_both_wrong():
    labels = ["a", "a", "b", "b", "c", "c"]
    pred_a = ["a", "b", "c", "a", UNPARSED, "a"]
    pred_b = ["b", "b", "c", "c", UNPARSED, "c"]
    # both wrong on items 1, 2, 3, 4; same wrong answer on 1, 2 and 4 (both unparsed).
    p, n_both = error_overlap(pred_a, pred_b, labels)
    assert (p, n_both) == (0.75, 4)
    p, n_both = error_overlap(["a", "b"], ["a", "b"], ["a", "b"])
    assert math.isnan(p) and n_both == 0
    # Correctness from a scorer (open answers): only the correctness masks matter.
    p, n_both = error_overlap_given_correct(["x", "y", "z"], ["x", "q", "z"], [False, False, True], [False, False, False])
    assert (p, n_both) == (0.5, 2)


def test_unparsed_is_wrong_even_if_label_says_unparsed():
    p, n_both = error_overlap([UNPARSED], [UNPARSED], [UNPARSED])
    assert (p, n_both) == (1.0, 1)


def test_mcnemar_matches_statsmodels_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 120))
        ca = rng.random(n) < rng.random()
        cb = np.where(rng.random(n) < rng.random(), ca, rng.random(n) < 0.5)
        table = [[np.sum(ca & cb), np.sum(ca & ~cb)], [np.sum(~ca & cb), np.sum(~ca & ~cb)]]
        assert mcnemar_exact(ca, cb) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9, abs=1e-15)
    assert mcnemar_exact([True, False], [True, False]) == 1.0


def test_benjamini_hochberg_matches_statsmodels():
    rng = np.random.default_rng(5)
    for m in (1, 2, 5, 17, 100):
        p = np.concatenate([rng.random(m // 2) * 0.01, rng.random(m - m // 2)])
        rng.shuffle(p)
        np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], atol=1e-12)
    p = np.array([0.01, 0.04, 0.03, 0.03, 0.5])  # ties
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], atol=1e-12)
    with_nan = benjamini_hochberg([0.01, np.nan, 0.04])
    assert math.isnan(with_nan[1])
    np.testing.assert_allclose(with_nan[[0, 2]], multipletests([0.01, 0.04], method="fdr_bh")[1])
