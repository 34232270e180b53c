"""Compare systems item by item from their predictions files: the paper's behavioural half.

A predictions file is JSON Lines with at least `id` and `prediction` per line, so answers
of systems this toolkit cannot run (an API model) take part the same way as those written
by `interp run` and `interp cascade`. Optional fields: `system` (default: the file's stem),
`task`, `snr_db` (null or missing = clean), `label`, `correct`.

Design:
- An item is keyed by (id, snr_db): one file may hold clean and noisy versions of an item.
  Rows of the same `system` from several files are merged (a clean run and a noisy run of
  one model written separately), and a (system, id, snr_db) seen twice is an error.
- Answers are normalised (stripped, case-folded; empty = "unparsed") so that "World" and
  "world" are one answer. Correctness is the file's `correct` when given, otherwise
  answer == label; "unparsed" is always wrong.
- Only items both systems answered are paired; the rest are counted and listed in the
  report, never silently dropped or matched by position.
- For every pair of systems, per task and SNR condition: accuracy (Wilson), raw agreement,
  Cohen's kappa (paired bootstrap interval), conditional error overlap, McNemar exact p,
  and Benjamini-Hochberg q across all comparisons in the report.
- Rows written by `interp run` / `interp cascade` carry the decoding that ran (`decoding`:
  strategy, penalties, token budget, model dtype). Two systems decoded differently are not a
  clean comparison, so the report warns, naming the settings that differ; a system whose own
  rows disagree is warned about too. Files without `decoding` (e.g. an API model's) are not.

The library returns a `Report`; the CLI prints it and `write_report` saves it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Sequence

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
from interp.atomic import write_json, write_text
from interp.errors import InterpError

ItemKey = tuple  # (id: str, snr_db: float | None)

N_EXAMPLE_IDS = 5


@dataclass(frozen=True)
class Prediction:
    """One system's answer to one item, normalised."""

    system: str
    """System name: the line's `system`, else the file's stem."""
    id: str
    """Item id, as a string."""
    snr_db: float | None
    """Noise condition in dB; None for clean audio."""
    task: str | None
    """Task name, if the file gives one."""
    prediction: str
    """Answer, stripped and case-folded; "unparsed" when the system gave no usable answer."""
    label: str | None
    """Gold answer, normalised like `prediction`, if given."""
    correct: bool | None
    """The file's `correct`, else prediction == label; None when neither is known."""
    source: str
    """Where it was read, as "file:line", for error messages."""
    decoding: str | None = None
    """The row's `decoding` settings as canonical JSON, if it records them."""
    model_fingerprint: str | None = None
    """The answering system's fingerprint, where the file records one (`interp run`, `interp cascade`)."""

    @property
    def key(self) -> ItemKey:
        return (self.id, self.snr_db)


@dataclass
class SystemPredictions:
    """All answers of one system, merged over the files that name it."""

    name: str
    files: list[str]
    items: dict[ItemKey, Prediction]


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
        return _json_safe(asdict(self))


# ---------------------------------------------------------------------------- loading


def read_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Read and validate one predictions file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"predictions file not found: {path}; pass JSON Lines with 'id' and 'prediction' per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InterpError(f"{path} is not UTF-8 text; re-save it as UTF-8 JSON Lines") from None
    rows: list[Prediction] = []
    first_named: bool | None = None  # whether the file's first row names its system
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InterpError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise InterpError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        named = row.get("system") not in (None, "")
        if first_named is not None and named != first_named:
            # A line without `system` in a file that names systems would silently become a
            # system called after the file; make the author say which it is.
            with_, without = (rows[0].source, where) if not named else (where, rows[0].source)
            raise InterpError(
                f"{without}: no 'system' field, but {with_} has one; give every line of a file a 'system' or none"
            )
        first_named = named if first_named is None else first_named
        rows.append(_parse_row(row, where, default_system=path.stem))
    if not rows:
        raise InterpError(f"{path} has no predictions; each line needs 'id' and 'prediction'")
    return rows


def _parse_row(row: dict, where: str, default_system: str) -> Prediction:
    for key in ("id", "prediction"):
        # An empty prediction is an answer (unparsed); an empty id names no item.
        if row.get(key) is None or (key == "id" and row[key] == ""):
            raise InterpError(f"{where}: missing required field '{key}'; every line needs 'id' and 'prediction'")
    item_id = row["id"]
    if isinstance(item_id, (dict, list, bool)):
        raise InterpError(f"{where}: 'id' must be a string or number, got {type(item_id).__name__}")
    prediction = _normalise_answer(row["prediction"], "prediction", where)
    label = None if row.get("label") is None else _normalise_answer(row["label"], "label", where)
    correct = row.get("correct")
    if correct is not None:
        if isinstance(correct, bool) or correct in (0, 1):
            correct = bool(correct)
        else:
            raise InterpError(f"{where}: 'correct' must be true or false, got {correct!r}")
    elif label is not None:
        correct = prediction == label
    if prediction == UNPARSED and correct is not None:
        correct = False  # an answer that could not be parsed is never right
    task = row.get("task")
    if task is not None and not isinstance(task, str):
        raise InterpError(f"{where}: 'task' must be a string, got {task!r}")
    system = row.get("system")
    if system is None or system == "":
        system = default_system
    decoding = row.get("decoding")
    if decoding is not None and not isinstance(decoding, dict):
        raise InterpError(f"{where}: 'decoding' must be a JSON object of decoding settings, got {decoding!r}")
    return Prediction(
        system=str(system),
        id=str(item_id),
        snr_db=_parse_snr(row.get("snr_db"), where),
        task=task or None,
        prediction=prediction,
        label=label,
        correct=correct,
        source=where,
        decoding=None if decoding is None else json.dumps(decoding, sort_keys=True),
        model_fingerprint=str(row["model_fingerprint"]) if row.get("model_fingerprint") else None,
    )


def _normalise_answer(value, name: str, where: str) -> str:
    if isinstance(value, (dict, list)):
        raise InterpError(f"{where}: '{name}' must be a string or number, got a JSON {type(value).__name__}")
    text = str(value).strip().casefold()
    return text or UNPARSED


def _parse_snr(value, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().casefold() in ("", "clean")):
        return None
    if isinstance(value, bool):
        raise InterpError(f"{where}: 'snr_db' must be a number in dB or null for clean, got {value!r}")
    try:
        snr = float(value)
    except (TypeError, ValueError):
        raise InterpError(f"{where}: 'snr_db' must be a number in dB or null for clean, got {value!r}") from None
    if not math.isfinite(snr):
        raise InterpError(f"{where}: 'snr_db' must be finite (use null for clean audio), got {value!r}")
    return snr + 0.0  # -0.0 and 0.0 are one condition


def group_systems(files: Sequence[tuple[str, list[Prediction]]]) -> list[SystemPredictions]:
    """Merge rows by system across files; reject duplicates and task conflicts.

    `files` is [(path, rows)] in the order given by the user; systems keep that order.
    """
    systems: dict[str, SystemPredictions] = {}
    task_of: dict[str, Prediction] = {}
    model_of: dict[str, Prediction] = {}
    for path, rows in files:
        for p in rows:
            if p.model_fingerprint:
                seen_model = model_of.setdefault(p.system, p)
                if seen_model.model_fingerprint != p.model_fingerprint:
                    # e.g. two checkpoint folders both named `model`: one name, two models
                    raise InterpError(
                        f"system '{p.system}' answered with two different models ({seen_model.source}: fingerprint "
                        f"{seen_model.model_fingerprint}; {p.source}: {p.model_fingerprint}); give each run its own "
                        "name (interp run --system NAME)"
                    )
            sys_ = systems.setdefault(p.system, SystemPredictions(p.system, [], {}))
            if str(path) not in sys_.files:
                sys_.files.append(str(path))
            first = sys_.items.get(p.key)
            if first is not None:
                raise InterpError(
                    f"{p.source}: duplicate id '{p.id}' at {format_snr(p.snr_db)} for system '{p.system}' "
                    f"(first at {first.source}); each (id, snr_db) may appear once per system"
                )
            sys_.items[p.key] = p
            if p.task is not None:
                seen = task_of.setdefault(p.id, p)
                if seen.task != p.task:
                    raise InterpError(
                        f"{p.source}: id '{p.id}' has task '{p.task}' but task '{seen.task}' at {seen.source}; "
                        "the same id must be the same item in every file"
                    )
    # Rows that leave `task` out take the task another file gives for the same id.
    for sys_ in systems.values():
        for key, p in sys_.items.items():
            if p.task is None and p.id in task_of:
                sys_.items[key] = _replace_task(p, task_of[p.id].task)
    return list(systems.values())


def _replace_task(p: Prediction, task: str) -> Prediction:
    d = asdict(p)
    d["task"] = task
    return Prediction(**d)


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


def _snr_order(snr: float | None) -> tuple:
    # Clean first, then from the mildest noise to the harshest, as tables read.
    return (0, 0.0) if snr is None else (1, -snr)


def _cell_order(cell: tuple) -> tuple:
    task, snr = cell
    return (task is None, task or "", _snr_order(snr))


def _key_order(key: ItemKey) -> tuple:
    return (key[0], _snr_order(key[1]))


def _key_dict(key: ItemKey) -> dict:
    return {"id": key[0], "snr_db": key[1]}


# ---------------------------------------------------------------------------- output


def format_snr(snr: float | None) -> str:
    return "clean" if snr is None else f"{snr:g} dB"


def format_task(task: str | None) -> str:
    return "(no task)" if task is None else task


def format_float(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def format_kappa(c: PairComparison) -> str:
    if math.isnan(c.kappa):
        return "undefined"
    return f"{c.kappa:.3f} [{format_float(c.kappa_ci_low)}, {format_float(c.kappa_ci_high)}]"


def format_accuracy(acc: Accuracy | None) -> str:
    if acc is None:
        return "n/a"
    return f"{acc.accuracy:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}]"


def format_overlap(c: PairComparison) -> str:
    if c.n_both_wrong is None:
        return "n/a"
    if c.n_both_wrong == 0:
        return "n/a (0 both wrong)"
    return f"{c.error_overlap:.3f} ({c.n_same_wrong}/{c.n_both_wrong})"


def render_markdown(report: Report, plots: Iterable[str | os.PathLike] = ()) -> str:
    """report.md: the same numbers as report.json, as tables a person reads."""
    s = report.settings
    lines = ["# Behavioural comparison", ""]
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {_md(w)}" for w in report.warnings] + [""]
    lines += ["## Systems", "", "| system | items | files |", "|---|---|---|"]
    for sys_ in report.systems:
        lines.append(f"| {_md(sys_['name'])} | {sys_['n_items']} | {_md(', '.join(sys_['files']))} |")
    lines += ["", "## Paired items", "",
              "Items are matched on (id, snr_db). Items answered by one system only are left out of that pair's statistics.", "",
              "| A | B | paired | only A | only B | examples only A | examples only B |", "|---|---|---|---|---|---|---|"]
    for cov in report.coverage:
        lines.append(
            f"| {_md(cov.system_a)} | {_md(cov.system_b)} | {cov.n_paired} | {cov.n_only_a} | {cov.n_only_b} | "
            f"{_md(_examples(cov.examples_only_a))} | {_md(_examples(cov.examples_only_b))} |"
        )
    pct = f"{s.get('confidence', 0.95) * 100:g}%"
    lines += ["", "## Agreement", "",
              f"Kappa interval: {pct} paired percentile bootstrap, {s.get('n_resamples')} resamples, seed {s.get('seed')}. "
              f"Accuracy interval: {pct} Wilson. Error overlap: P(same wrong answer | both wrong) (same/both wrong). "
              f"McNemar: exact two-sided test on correctness; q: Benjamini-Hochberg over all {s.get('n_tests')} tests in this report.", "",
              "| A | B | task | snr | n | acc A | acc B | kappa [CI] | agreement | error overlap | McNemar p | q |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report.comparisons:
        lines.append(
            f"| {_md(c.system_a)} | {_md(c.system_b)} | {_md(format_task(c.task))} | {format_snr(c.snr_db)} | {c.n} | "
            f"{format_accuracy(c.accuracy_a)} | {format_accuracy(c.accuracy_b)} | {format_kappa(c)} | "
            f"{format_float(c.agreement)} | {format_overlap(c)} | {format_p(c.mcnemar_p)} | {format_p(c.mcnemar_q)} |"
        )
    notes = [c for c in report.comparisons if c.note or c.kappa_undefined_reason]
    if notes:
        lines += ["", "Notes:", ""]
        for c in notes:
            why = "; ".join(x for x in (c.kappa_undefined_reason and f"kappa undefined: {c.kappa_undefined_reason}", c.note) if x)
            lines.append(f"- {_md(c.system_a)} vs {_md(c.system_b)}, {_md(format_task(c.task))}, {format_snr(c.snr_db)}: {_md(why)}")
    lines += ["", "## Accuracy per system", "", "All items of each system, paired or not.", "",
              "| system | task | snr | items | unparsed | accuracy [CI] |", "|---|---|---|---|---|---|"]
    for acc in report.accuracy:
        lines.append(
            f"| {_md(acc.system)} | {_md(format_task(acc.task))} | {format_snr(acc.snr_db)} | {acc.n_items} | "
            f"{acc.n_unparsed} | {format_accuracy(acc.accuracy)} |"
        )
    plots = [Path(p).name for p in plots]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out_dir: str | os.PathLike, plots: Iterable[str | os.PathLike] = ()) -> dict[str, Path]:
    """Write report.json and report.md into `out_dir`, each whole or not at all.

    `plots` are image files already in `out_dir` that report.md should show.
    """
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    write_json(paths["json"], report.to_dict())
    write_text(paths["markdown"], render_markdown(report, plots))
    return paths


def _examples(keys: list[dict]) -> str:
    return ", ".join(k["id"] if k["snr_db"] is None else f"{k['id']}@{k['snr_db']:g}dB" for k in keys) or "-"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _json_safe(obj):
    # JSON has no NaN; null is what readers of report.json can parse.
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj
