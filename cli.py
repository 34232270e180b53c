"""The `interp` command line: a thin Typer layer that parses arguments, calls library
functions, and prints. Errors the user can fix exit with one line, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from interp.errors import InterpError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability for speech LLMs.")
console = Console(stderr=True)

# ---- models / trace / demo ----
models_app = typer.Typer(help="Supported model families and tiny test checkpoints.", invoke_without_command=True)
app.add_typer(models_app, name="models")


def progress_bar():
    """A rich progress bar with items/s and ETA, on stderr."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return f"{speed:.2f} items/s" if speed else "-- items/s"

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(""),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)


class LazyBar:
    """A progress bar that appears only once work starts, so early errors print alone."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.bar, self.task = description, total, None, None

    def advance(self, n: int = 1) -> None:
        if self.bar is None:
            self.bar = progress_bar()
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        self.bar.advance(self.task, n)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.bar is not None:
            if exc_type is not None:  # leave the error line alone on screen
                self.bar.live.transient = True
            self.bar.stop()


@models_app.callback()
def models_list(ctx: typer.Context):
    """List the supported model families."""
    if ctx.invoked_subcommand:
        return
    from rich.table import Table

    from interp.models import families

    table = Table("family", "class", "time per audio position", "layers", "description")
    for name, cls in families().items():
        table.add_row(name, cls.model_class().__name__, f"{cls.seconds_per_audio_position * 1000:g} ms",
                      cls.layers_path, cls.description)
    Console().print(table)


@models_app.command("make-tiny")
def models_make_tiny(family: str = typer.Argument(..., help="model family, see `interp models`"),
                     out: Path = typer.Option(..., "--out", help="folder to write the checkpoint to"),
                     seed: int = typer.Option(0, help="seed for the random weights")):
    """Write a tiny random checkpoint of FAMILY's real class that loads offline."""
    from interp.models import get_family

    cls = get_family(family)
    path = cls.make_tiny(out, seed=seed)
    console.print(f"wrote tiny {family} checkpoint to [bold]{path}[/]")


@app.command("trace")
def trace_cmd(
    model: Path = typer.Argument(..., help="local checkpoint folder"),
    data: Path = typer.Option(..., "--data", help="manifest (JSON Lines: id, audio, ...)"),
    out: Path = typer.Option(..., "--out", help="activation store to write (.h5)"),
    layers: str = typer.Option("all", help="'all' or block indices like 0,4,8 (add 'embed' for the input of block 0)"),
    positions: str = typer.Option("audio", help="all | audio | text | last | audio-mean"),
    dtype: str = typer.Option("float16", help="stored dtype: float16 | float32"),
    batch_size: int = typer.Option(8, help="items per forward pass"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    model_dtype: str = typer.Option("auto", help="dtype to run the model in: auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16"),
    component: str = typer.Option("decoder", help="decoder (LLM residual stream) | encoder (audio encoder layers)"),
    resume: bool = typer.Option(False, "--resume", help="complete an interrupted store"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store"),
    limit: Optional[int] = typer.Option(None, help="trace only the first N items"),
    prompt: Optional[str] = typer.Option(None, help="instruction sent with the audio (default: the item's task prompt)"),
):
    """Record residual activations of MODEL over a manifest into an HDF5 store."""
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.trace import trace

    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    rows = read_manifest(data, limit=limit)
    adapter = load_model(model, dtype=_model_dtype(model_dtype, device), device=device)
    with LazyBar("trace", len(rows)) as bar:
        summary = trace(adapter, rows, out, layers=layers, positions=positions, dtype=dtype, batch_size=batch_size,
                        resume=resume, overwrite=overwrite, prompt=prompt, component=component,
                        command=" ".join(["interp"] + sys.argv[1:]), on_items_done=bar.advance)
    console.print(f"traced {summary.n_new} new item(s); store [bold]{summary.path}[/] holds {summary.n_items} items, "
                  f"{summary.n_rows} positions, layers {','.join(summary.layers)}")
    if summary.non_finite:
        console.print(f"[yellow]warning:[/] {summary.non_finite} non-finite values in the store (float16 overflow?); "
                      "trace with --dtype float32")


def _model_dtype(choice: str, device: str) -> Optional[str]:
    if choice != "auto":
        return choice
    import torch

    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "bfloat16" if on_cuda else "float32"


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
                soft_wrap=True,
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
            console.print(f"[dim]{escape(where)}: {escape(why)}[/]", highlight=False, soft_wrap=True)
    console.print(escape(f"report: {paths['markdown']}  {paths['json']}"), highlight=False, soft_wrap=True)
    for p in plots:
        console.print(escape(f"plot: {p}"), highlight=False, soft_wrap=True)
# ---- probe / lens: commands are added after this line ----
# ---- erase: commands are added after this line ----


def main() -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        app()
    except InterpError as e:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
