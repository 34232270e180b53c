"""The `interp` command line: a thin Typer layer that parses arguments, calls library
functions, and prints. Errors the user can fix exit with one line, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from interp.errors import InterpError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mechanistic interpretability for speech LLMs.")
console = Console(stderr=True)

# ---- models / trace / demo: see below ----
# ---- data (tasks): commands are added after this line ----
# ---- run / cascade / compare: commands are added after this line ----


@app.command("compare")
def compare_cmd(
    preds: List[Path] = typer.Argument(..., help="Predictions JSON Lines files ('id' and 'prediction' per line; optional 'system', 'task', 'snr_db', 'label', 'correct')."),
    out: Path = typer.Option(..., "--out", help="Report folder: report.json, report.md and PNG plots."),
    resamples: int = typer.Option(10000, "--resamples", min=1, help="Bootstrap resamples for the kappa interval."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    accuracy_only: List[str] = typer.Option([], "--accuracy-only", help="Task with free-text answers (e.g. triviaqa): accuracy only, no agreement statistics. Repeatable."),
) -> None:
    """Agreement of systems' per-item answers: kappa, error overlap, McNemar, per task and SNR."""
    from rich.markup import escape
    from rich.table import Table

    from cascades.compare import (
        compare_files,
        format_float,
        format_kappa,
        format_overlap,
        format_p,
        format_snr,
        format_task,
        write_report,
    )
    from cascades.plots import write_plots

    report = compare_files(preds, n_resamples=resamples, seed=seed, accuracy_only=accuracy_only)
    plots = write_plots(report, out)
    paths = write_report(report, out, plots)

    for cov in report.coverage:
        if cov.n_only_a or cov.n_only_b:
            a, b = escape(cov.system_a), escape(cov.system_b)
            ex_a = escape(", ".join(k["id"] for k in cov.examples_only_a))
            ex_b = escape(", ".join(k["id"] for k in cov.examples_only_b))
            console.print(
                f"[yellow]left out:[/] {a} vs {b}: {cov.n_only_a} items only in {a}"
                + (f" (e.g. {ex_a})" if ex_a else "")
                + f", {cov.n_only_b} only in {b}"
                + (f" (e.g. {ex_b})" if ex_b else "")
                + f"; {cov.n_paired} paired",
                highlight=False,
            )
    table = Table(title="Agreement per system pair, task and SNR")
    for col in ("system pair", "task", "snr", "n", "acc A", "acc B", "kappa [95% CI]", "agreement", "error overlap", "McNemar p", "q"):
        table.add_column(col, justify="left" if col in ("system pair", "task") else "right")
    for c in report.comparisons:
        table.add_row(
            escape(f"{c.system_a} vs {c.system_b}"), escape(format_task(c.task)), format_snr(c.snr_db), str(c.n),
            format_float(c.accuracy_a.accuracy if c.accuracy_a else None),
            format_float(c.accuracy_b.accuracy if c.accuracy_b else None),
            format_kappa(c), format_float(c.agreement), format_overlap(c), format_p(c.mcnemar_p), format_p(c.mcnemar_q),
        )
    # Piped output has no terminal width to respect; let the table keep its natural width
    # instead of squeezing every cell to an ellipsis at Rich's default of 80 columns.
    (console if console.is_terminal else Console(stderr=True, width=240)).print(table)
    for c in report.comparisons:
        if c.kappa_undefined_reason or c.note:
            why = "; ".join(x for x in (c.kappa_undefined_reason, c.note) if x)
            where = f"{c.system_a} vs {c.system_b}, {format_task(c.task)}, {format_snr(c.snr_db)}"
            console.print(f"[dim]{escape(where)}: {escape(why)}[/]", highlight=False)
    console.print(escape(f"report: {paths['markdown']}  {paths['json']}"), highlight=False)
    for p in plots:
        console.print(escape(f"plot: {p}"), highlight=False)
# ---- probe / lens: commands are added after this line ----
# ---- erase: commands are added after this line ----


def main() -> None:
    try:
        app()
    except InterpError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
