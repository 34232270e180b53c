"""Compare systems item by item from their predictions files: the paper's behavioural half.

Predictions files are read by `cascades.answers` (any JSON Lines with `id` and `prediction`
per line, so an API model's answers take part too).

- An item is keyed by (id, snr_db): one file may hold clean and noisy versions of an item.
- Only items both systems answered are paired; the rest are counted and listed in the
  report, never silently dropped or matched by position.
- For every pair of systems, per task and SNR condition: accuracy (Wilson), raw agreement,
  Cohen's kappa (paired bootstrap interval), conditional error overlap, McNemar exact p,
  and Benjamini-Hochberg q across all comparisons in the report.
- Rows written by `interp run` / `interp cascade` carry the decoding that ran (`decoding`:
  strategy, penalties, token budget, model dtype). Two systems decoded differently are not a
  clean comparison, so the report warns, naming the settings that differ; a system whose own
  rows disagree is warned about too. Files without `decoding` (e.g. an API model's) are not.

The library returns a `Report`; `cascades.report` renders and saves it, the CLI prints it.
"""

from __future__ import annotations

import itertools
import json
import os
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Collection, Sequence

import numpy as np

from cascades.agreement import (
    UNPARSED,
    benjamini_hochberg,
    bootstrap_kappa_ci,
    cohen_kappa,
    error_overlap_given_correct,
    kappa_undefined_reason,
    mcnemar_discordant,
    mcnemar_exact,
    raw_agreement,
    wilson_interval,
)
from cascades.answers import ItemKey, Prediction, SystemPredictions, group_systems, read_predictions
from interp.atomic import json_ready
from interp.errors import InterpError
from tasks.noise import snr_order


N_EXAMPLE_IDS = 5






@dataclass
class Accuracy:
    """Accuracy of one system on one set of items, with a Wilson interval."""

    n: int
    """Items with known correctness."""
    n_correct: int
    accuracy: float
    ci_low: float
    ci_high: float


@dataclass
class SystemAccuracy:
    """Accuracy of one system over all its items of one task and SNR condition (paired or not)."""

    system: str
    task: str | None
    snr_db: float | None
    n_items: int
    n_unparsed: int
    accuracy: Accuracy | None
    """None when no item's correctness is known (no `correct` and no `label`)."""


@dataclass
class PairCoverage:
    """Which items two systems share; the unshared ones are left out of every statistic."""

    system_a: str
    system_b: str
    n_paired: int
    n_only_a: int
    n_only_b: int
    examples_only_a: list[dict]
    """Up to five {id, snr_db} answered by A alone."""
    examples_only_b: list[dict]


@dataclass
class PairComparison:
    """Two systems on the items they share of one task and SNR condition."""

    system_a: str
    system_b: str
    task: str | None
    snr_db: float | None
    n: int
    """Paired items."""
    accuracy_a: Accuracy | None
    accuracy_b: Accuracy | None
    agreement: float
    """Raw agreement: fraction of items given the same answer."""
    kappa: float
    """Cohen's kappa on the per-item answers; NaN when undefined."""
    kappa_ci_low: float
    kappa_ci_high: float
    kappa_undefined_reason: str | None
    kappa_resamples_undefined: int
    """Bootstrap resamples on which kappa was undefined (left out of the interval)."""
    error_overlap: float | None
    """Conditional error overlap P(same wrong answer | both wrong); NaN when none both wrong."""
    n_both_wrong: int | None
    n_same_wrong: int | None
    mcnemar_a_only_correct: int | None
    """Discordant items A got right and B got wrong."""
    mcnemar_b_only_correct: int | None
    mcnemar_p: float | None
    """Exact McNemar p on correctness; None when correctness is not known for every item."""
    mcnemar_q: float | None
    """Benjamini-Hochberg adjusted p across all comparisons in the report."""
    note: str | None = None


@dataclass
class Report:
    """Everything `interp compare` found; `to_dict()` gives the report.json content."""

    systems: list[dict]
    """[{name, files, n_items}] in the order first seen."""
    coverage: list[PairCoverage]
    comparisons: list[PairComparison]
    accuracy: list[SystemAccuracy]
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Confounds found in the inputs, e.g. systems decoded with different settings."""

    def to_dict(self) -> dict:
        return json_ready(asdict(self))


# ---------------------------------------------------------------------------- loading














# ---------------------------------------------------------------------------- statistics


def compare_files(
    paths: Sequence[str | os.PathLike],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    accuracy_only: Collection[str] = (),
) -> Report:
    """Read predictions files and compare every pair of systems in them."""
    if not paths:
        raise InterpError("no predictions files given; pass two or more JSON Lines files")
    files = [(str(p), read_predictions(p)) for p in paths]
    return compare_systems(group_systems(files), n_resamples, confidence, seed, accuracy_only)


def compare_systems(
    systems: Sequence[SystemPredictions],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    accuracy_only: Collection[str] = (),
) -> Report:
    """Every pair of systems, per task and SNR condition, on the items both answered.

    Tasks in `accuracy_only` (open-ended ones such as TriviaQA, where answers are free text)
    get per-system accuracy but no pairwise statistics.
    """
    if n_resamples < 1:
        raise InterpError(f"--resamples must be at least 1, got {n_resamples}")
    if len(systems) < 2:
        names = ", ".join(f"'{s.name}' ({', '.join(s.files)})" for s in systems) or "none"
        raise InterpError(
            f"need at least two systems to compare, found {names}; give each file a distinct 'system' field or file name"
        )
    accuracy_only = set(accuracy_only)
    coverage: list[PairCoverage] = []
    comparisons: list[PairComparison] = []
    for a, b in itertools.combinations(systems, 2):
        shared = a.items.keys() & b.items.keys()
        only_a = sorted(a.items.keys() - shared, key=_key_order)
        only_b = sorted(b.items.keys() - shared, key=_key_order)
        if not shared:
            raise InterpError(
                f"systems '{a.name}' ({', '.join(a.files)}) and '{b.name}' ({', '.join(b.files)}) share no items; "
                "items are matched on (id, snr_db), so check that both files answer the same manifest"
            )
        if len(shared) < 2:
            raise InterpError(
                f"systems '{a.name}' and '{b.name}' share only one item ('{next(iter(shared))[0]}'); agreement "
                "statistics and their intervals need at least two: answer more items"
            )
        coverage.append(
            PairCoverage(
                a.name, b.name, len(shared), len(only_a), len(only_b),
                [_key_dict(k) for k in only_a[:N_EXAMPLE_IDS]],
                [_key_dict(k) for k in only_b[:N_EXAMPLE_IDS]],
            )
        )
        cells: dict[tuple, list[ItemKey]] = defaultdict(list)
        for key in shared:
            cells[(a.items[key].task, key[1])].append(key)
        for task, snr in sorted(cells, key=_cell_order):
            if task in accuracy_only:
                continue
            keys = sorted(cells[(task, snr)], key=_key_order)
            comparisons.append(
                _compare_cell(a, b, task, snr, keys, n_resamples, confidence, _cell_seed(seed, a.name, b.name, task, snr))
            )

    q = benjamini_hochberg([np.nan if c.mcnemar_p is None else c.mcnemar_p for c in comparisons])
    for c, qi in zip(comparisons, q):
        c.mcnemar_q = None if np.isnan(qi) else float(qi)

    return Report(
        warnings=decoding_warnings(systems),
        systems=[{"name": s.name, "files": list(s.files), "n_items": len(s.items)} for s in systems],
        coverage=coverage,
        comparisons=comparisons,
        accuracy=[acc for s in systems for acc in _system_accuracy(s, confidence)],
        settings={
            "n_resamples": n_resamples,
            "confidence": confidence,
            "seed": seed,
            "bootstrap": "paired percentile bootstrap over items",
            "multiple_testing": "Benjamini-Hochberg over every comparison with a McNemar p-value",
            "n_tests": int(np.sum(~np.isnan(q))),
            "accuracy_only_tasks": sorted(accuracy_only),
            "answers": "stripped and case-folded; 'unparsed' is its own answer and always wrong",
        },
    )


def _decodings(s: SystemPredictions) -> list[dict]:
    seen = sorted({p.decoding for p in s.items.values() if p.decoding is not None})
    return [json.loads(d) for d in seen]


def decoding_warnings(systems: Sequence[SystemPredictions]) -> list[str]:
    """One line per system decoded inconsistently and per pair decoded differently."""
    from interp.decoding import differences

    def show(diff: dict) -> str:
        return "; ".join(f"{k} {va!r} vs {vb!r}" for k, (va, vb) in diff.items())

    out = []
    recorded = {s.name: _decodings(s) for s in systems}
    for name, decs in recorded.items():
        if len(decs) > 1:
            out.append(f"'{name}' rows were decoded with different settings ({show(differences(decs[0], decs[1]))})")
    for a, b in itertools.combinations(systems, 2):
        da, db = recorded[a.name], recorded[b.name]
        if len(da) == 1 and len(db) == 1:
            diff = differences(da[0], db[0])
            if diff:
                out.append(f"'{a.name}' and '{b.name}' were decoded differently: {show(diff)}")
    return out


def _compare_cell(a, b, task, snr, keys, n_resamples, confidence, seed) -> PairComparison:
    pa = [a.items[k].prediction for k in keys]
    pb = [b.items[k].prediction for k in keys]
    ci = bootstrap_kappa_ci(pa, pb, n_resamples=n_resamples, confidence=confidence, seed=seed)
    ca = [a.items[k].correct for k in keys]
    cb = [b.items[k].correct for k in keys]
    n_unknown = sum(x is None or y is None for x, y in zip(ca, cb))
    stats = dict(
        accuracy_a=None, accuracy_b=None, error_overlap=None, n_both_wrong=None, n_same_wrong=None,
        mcnemar_a_only_correct=None, mcnemar_b_only_correct=None, mcnemar_p=None, note=None,
    )
    if n_unknown:
        # Correctness-based statistics on a subset would not describe the same items as
        # kappa, so they are left out rather than computed on whatever is scored.
        stats["note"] = f"correctness unknown for {n_unknown} of {len(keys)} items (no 'correct' or 'label'): accuracy, error overlap and McNemar left out"
    else:
        overlap, n_both_wrong = error_overlap_given_correct(pa, pb, ca, cb)
        a_only, b_only = mcnemar_discordant(ca, cb)
        stats.update(
            accuracy_a=_accuracy(sum(ca), len(ca), confidence),
            accuracy_b=_accuracy(sum(cb), len(cb), confidence),
            error_overlap=overlap,
            n_both_wrong=n_both_wrong,
            n_same_wrong=sum(x == y and not u and not v for x, y, u, v in zip(pa, pb, ca, cb)),
            mcnemar_a_only_correct=a_only,
            mcnemar_b_only_correct=b_only,
            mcnemar_p=mcnemar_exact(ca, cb),
        )
    return PairComparison(
        system_a=a.name, system_b=b.name, task=task, snr_db=snr, n=len(keys),
        agreement=raw_agreement(pa, pb),
        kappa=cohen_kappa(pa, pb),
        kappa_ci_low=ci.low, kappa_ci_high=ci.high,
        kappa_undefined_reason=kappa_undefined_reason(pa, pb),
        kappa_resamples_undefined=ci.n_undefined,
        mcnemar_q=None,
        **stats,
    )


def _accuracy(k: int, n: int, confidence: float) -> Accuracy:
    low, high = wilson_interval(int(k), n, confidence)
    return Accuracy(n=n, n_correct=int(k), accuracy=k / n if n else float("nan"), ci_low=low, ci_high=high)


def _system_accuracy(s: SystemPredictions, confidence: float) -> list[SystemAccuracy]:
    cells: dict[tuple, list[Prediction]] = defaultdict(list)
    for p in s.items.values():
        cells[(p.task, p.snr_db)].append(p)
    out = []
    for task, snr in sorted(cells, key=_cell_order):
        rows = cells[(task, snr)]
        scored = [p.correct for p in rows if p.correct is not None]
        out.append(
            SystemAccuracy(
                system=s.name, task=task, snr_db=snr, n_items=len(rows),
                n_unparsed=sum(p.prediction == UNPARSED for p in rows),
                accuracy=_accuracy(sum(scored), len(scored), confidence) if scored else None,
            )
        )
    return out


def _cell_seed(seed: int, a: str, b: str, task, snr) -> list[int]:
    # Seeded by the comparison's identity, not its position, so adding a third file to the
    # command does not change the interval reported for an existing pair.
    tag = zlib.crc32(f"{a}\0{b}\0{task}\0{snr}".encode())
    return [int(seed), tag]


def _cell_order(cell: tuple) -> tuple:
    task, snr = cell
    return (task is None, task or "", snr_order(snr))


def _key_order(key: ItemKey) -> tuple:
    return (key[0], snr_order(key[1]))


def _key_dict(key: ItemKey) -> dict:
    return {"id": key[0], "snr_db": key[1]}
