"""Agreement statistics between two systems answering the same items.

Pure functions on per-item arrays (answers, labels, correctness); no files, no printing.
These are the paper's behavioural statistics: Cohen's kappa on per-item answers with a
paired bootstrap interval, raw agreement, conditional error overlap
P(same wrong answer | both wrong), McNemar's exact test on correctness, Wilson intervals
for accuracy (and `accuracy_table`, accuracy per system, task and noise condition), and
Benjamini-Hochberg FDR adjustment across comparisons.

Answers are compared as given: the prediction "unparsed" is an answer category of its
own for kappa and error overlap (two systems that both fail to parse agree on *how* they
failed), and it is always wrong for correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
from scipy import stats

from tasks.noise import snr_order
from tasks.parse import UNPARSED  # the parsers' "no usable answer"; re-exported here

# Bootstrap index matrices are built this many elements at a time: large enough to stay
# vectorised, small enough that 10^4 x 10^5 items does not need gigabytes.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class KappaInterval:
    """A paired percentile-bootstrap interval for Cohen's kappa."""

    low: float
    """Lower end; NaN when kappa is undefined on the data."""
    high: float
    """Upper end; NaN when kappa is undefined on the data."""
    confidence: float
    """Nominal coverage, e.g. 0.95."""
    n_resamples: int
    """Bootstrap resamples drawn."""
    n_undefined: int
    """Resamples on which kappa was undefined (one shared class); left out of the percentiles."""


def encode_labels(a: Sequence[Hashable], b: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray, list]:
    """Map the answers of both raters onto shared integer codes 0..K-1.

    A dict rather than np.unique so that mixed types (str and int answers) still encode.
    Returns (codes_a, codes_b, categories).
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired answers must have equal length, got {len(a)} and {len(b)}")
    index: dict = {}
    for v in a + b:
        index.setdefault(v, len(index))
    codes_a = np.fromiter((index[v] for v in a), dtype=np.int64, count=len(a))
    codes_b = np.fromiter((index[v] for v in b), dtype=np.int64, count=len(b))
    return codes_a, codes_b, list(index)


def confusion_counts(codes_a: np.ndarray, codes_b: np.ndarray, n_categories: int) -> np.ndarray:
    """K x K counts: rows are rater A's category, columns rater B's."""
    k = n_categories
    return np.bincount(codes_a * k + codes_b, minlength=k * k).reshape(k, k)


def _kappa_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Kappa for a stack of confusion matrices (..., K, K); NaN where expected agreement is 1.

    Works in integer counts: kappa = (n*agree - sum(row*col)) / (n^2 - sum(row*col)), so the
    undefined case (denominator 0) is detected exactly rather than by a float tolerance.
    """
    conf = np.asarray(conf, dtype=np.int64)
    n = conf.sum(axis=(-2, -1))
    agree = np.trace(conf, axis1=-2, axis2=-1)
    chance = (conf.sum(axis=-1) * conf.sum(axis=-2)).sum(axis=-1)
    num = n * agree - chance
    den = n * n - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def kappa_undefined_reason(a: Sequence[Hashable], b: Sequence[Hashable]) -> str | None:
    """Why Cohen's kappa is undefined on these answers, or None when it is defined."""
    codes_a, codes_b, cats = encode_labels(a, b)
    if len(codes_a) == 0:
        return "no items to compare"
    if len(cats) == 1:
        # Expected agreement is 1 exactly when both raters give one and the same category
        # to every item: kappa's denominator 1 - p_e is then 0.
        return f"both systems gave the same single answer ({cats[0]!r}) to every item, so expected agreement is 1"
    return None


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' answers on the same items; NaN when undefined.

    See `kappa_undefined_reason` for why a NaN came back.
    """
    codes_a, codes_b, cats = encode_labels(a, b)
    if len(codes_a) == 0:
        return float("nan")
    return float(_kappa_from_confusion(confusion_counts(codes_a, codes_b, len(cats))))


def raw_agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Fraction of items given the same answer; NaN with no items."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired answers must have equal length, got {len(a)} and {len(b)}")
    if not a:
        return float("nan")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def bootstrap_kappas(codes_a: np.ndarray, codes_b: np.ndarray, n_categories: int, indices: np.ndarray) -> np.ndarray:
    """Kappa on each row of a resample index matrix (R, n), all rows at once.

    Each resample's confusion matrix comes from one bincount over pair codes offset by
    resample number, so the cost is a few passes over R*n integers, with no Python loop.
    """
    k2 = n_categories * n_categories
    pair = codes_a * n_categories + codes_b
    r = indices.shape[0]
    offsets = (np.arange(r, dtype=np.int64) * k2)[:, None]
    conf = np.bincount((pair[indices] + offsets).ravel(), minlength=r * k2)
    return _kappa_from_confusion(conf.reshape(r, n_categories, n_categories))


def bootstrap_kappa_ci(
    a: Sequence[Hashable],
    b: Sequence[Hashable],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int | Sequence[int] | np.random.SeedSequence = 0,
) -> KappaInterval:
    """Paired percentile-bootstrap interval for Cohen's kappa.

    Items are resampled with replacement as pairs (both raters' answers travel together),
    which keeps the within-item dependence that kappa measures. Resamples on which kappa
    is undefined are dropped from the percentiles and counted in `n_undefined`.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    codes_a, codes_b, cats = encode_labels(a, b)
    n = len(codes_a)
    nan = float("nan")
    # one item resamples to itself every time: a "95% interval" of one point is no interval
    if n < 2 or len(cats) == 1:
        return KappaInterval(nan, nan, confidence, n_resamples, n_resamples)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    kappas = np.empty(n_resamples)
    for start in range(0, n_resamples, per_chunk):
        stop = min(start + per_chunk, n_resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        kappas[start:stop] = bootstrap_kappas(codes_a, codes_b, len(cats), indices)
    defined = kappas[~np.isnan(kappas)]
    if defined.size == 0:
        return KappaInterval(nan, nan, confidence, n_resamples, n_resamples)
    alpha = 1.0 - confidence
    low, high = np.percentile(defined, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return KappaInterval(float(low), float(high), confidence, n_resamples, int(n_resamples - defined.size))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (scipy's `binomtest(k, n).proportion_ci`);
    (NaN, NaN) when n is 0.

    Wilson rather than the normal approximation because accuracies near 0 or 1 and small
    per-SNR cells are common here, where the Wald interval leaves [0, 1] or collapses.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def error_overlap_given_correct(
    pred_a: Sequence[Hashable],
    pred_b: Sequence[Hashable],
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
) -> tuple[float, int]:
    """Conditional error overlap P(same wrong answer | both wrong) and the number both got wrong.

    For tasks where correctness is not answer == label (open answers scored by a matcher),
    pass the scorer's correctness. NaN when no item is wrong on both sides.
    """
    pa, pb = list(pred_a), list(pred_b)
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if not (len(pa) == len(pb) == len(ca) == len(cb)):
        raise ValueError("answers and correctness must all have the same length")
    both_wrong = np.flatnonzero(~ca & ~cb)
    if both_wrong.size == 0:
        return float("nan"), 0
    same = sum(pa[i] == pb[i] for i in both_wrong)
    return same / both_wrong.size, int(both_wrong.size)


def error_overlap(pred_a: Sequence[Hashable], pred_b: Sequence[Hashable], labels: Sequence[Hashable]) -> tuple[float, int]:
    """P(same wrong answer | both wrong) with correctness = (answer == label); also the count both wrong.

    "unparsed" is never a label, so it is always wrong; two "unparsed" answers count as the
    same wrong answer.
    """
    labels = list(labels)
    ca = [p == y and p != UNPARSED for p, y in zip(pred_a, labels)]
    cb = [p == y and p != UNPARSED for p, y in zip(pred_b, labels)]
    if not (len(ca) == len(cb) == len(labels)):
        raise ValueError("answers and labels must all have the same length")
    return error_overlap_given_correct(pred_a, pred_b, ca, cb)


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value on paired correctness.

    Only discordant items carry information: under H0 (equal accuracy) "A right, B wrong"
    is Binomial(b + c, 1/2). p = 1 when there are no discordant items.
    """
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ValueError(f"paired correctness must have equal length, got {ca.size} and {cb.size}")
    b, c = mcnemar_discordant(ca, cb)
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def mcnemar_discordant(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[int, int]:
    """Discordant pair counts (b, c): A right and B wrong, A wrong and B right."""
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    return int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg FDR-adjusted p-values (q-values), in the input order
    (scipy's `false_discovery_control`).

    NaN p-values (tests that could not be run) stay NaN and do not count towards the
    number of tests m.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    if finite.any():
        out[finite] = stats.false_discovery_control(p[finite], method="bh")
    return out


def accuracy_table(preds: Sequence[dict]) -> list[dict]:
    """Per system, task and SNR: n, accuracy with a Wilson 95% interval, unparsed count."""
    groups: dict[tuple, list[dict]] = {}
    for p in preds:
        groups.setdefault((p["system"], p["task"], p.get("snr_db")), []).append(p)
    table = []
    for (system, task, snr), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], snr_order(kv[0][2]))):
        k = sum(bool(p["correct"]) for p in ps)
        lo, hi = wilson_interval(k, len(ps))
        table.append({"system": system, "task": task, "snr_db": snr, "n": len(ps), "correct": k,
                      "accuracy": k / len(ps), "ci_low": lo, "ci_high": hi,
                      "unparsed": sum(p["prediction"] == "unparsed" for p in ps)})
    return table
