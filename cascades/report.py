"""The compare report for people: formatted numbers, report.md, and the rows the CLI prints.

report.json is `Report.to_dict()`; report.md shows the same numbers as tables
(`render_markdown`); `write_report` writes both, each whole or not at all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

from cascades.compare import Accuracy, PairComparison, Report
from interp.atomic import write_json, write_text
from tasks.noise import format_snr


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


def coverage_lines(report: Report) -> list[str]:
    """One line per system pair with items only one of them answered (left out of its statistics)."""
    lines = []
    for cov in report.coverage:
        if cov.n_only_a or cov.n_only_b:
            a, b = cov.system_a, cov.system_b
            ex_a = ", ".join(k["id"] for k in cov.examples_only_a)
            ex_b = ", ".join(k["id"] for k in cov.examples_only_b)
            lines.append(f"{a} vs {b}: {cov.n_only_a} items only in {a}" + (f" (e.g. {ex_a})" if ex_a else "")
                         + f", {cov.n_only_b} only in {b}" + (f" (e.g. {ex_b})" if ex_b else "") + f"; {cov.n_paired} paired")
    return lines


def table_rows(report: Report) -> list[list[str]]:
    """The agreement table: pair, task, snr, n, acc A, acc B, kappa [CI], agreement, error overlap, McNemar p, q."""
    return [[f"{c.system_a} vs {c.system_b}", format_task(c.task), format_snr(c.snr_db), str(c.n),
             format_float(c.accuracy_a.accuracy if c.accuracy_a else None),
             format_float(c.accuracy_b.accuracy if c.accuracy_b else None),
             format_kappa(c), format_float(c.agreement), format_overlap(c), format_p(c.mcnemar_p), format_p(c.mcnemar_q)]
            for c in report.comparisons]
