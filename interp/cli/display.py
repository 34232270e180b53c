"""What the command line shows: rich progress bars implementing `interp.progress`, tables, numbers."""

from __future__ import annotations

import time
from typing import Optional

from rich.console import Console

#: messages, warnings, progress and errors go to stderr; tables of results to stdout
console = Console(stderr=True)


def out_console() -> Console:
    return Console()


def wide(con: Console = console) -> Console:
    """`con`, or a 240-column one when output is piped (a table keeps its natural width instead
    of squeezing every cell to an ellipsis at rich's default of 80 columns)."""
    return con if con.is_terminal else Console(stderr=con.stderr, width=240)


def progress_bar(unit: str = "items"):
    """A rich progress bar with a rate (items/s, layers/s, ...) and ETA, on stderr."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return f"{speed:.2f} {unit}/s" if speed else f"-- {unit}/s"

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(""),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)


class LazyBar:
    """A progress bar that appears only once work starts, so early errors print alone."""

    def __init__(self, description: str, total: int | None, unit: str = "items"):
        self.description, self.total, self.unit, self.bar, self.task = description, total, unit, None, None

    def advance(self, n: int = 1) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.unit)
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


class StageBars:
    """`interp.progress` as rich bars: one LazyBar per stage; starting a stage closes the
    previous bar (rich shows one live display at a time)."""

    def __init__(self):
        self.current: Optional[LazyBar] = None

    def __call__(self, description: str, total: int | None = None, unit: str = "items"):
        if self.current is not None:
            self.current.__exit__(None)
        self.current = LazyBar(description, total, unit)
        return self.current.advance

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.current is not None:
            self.current.__exit__(exc_type)


class StageSpinners:
    """`interp.progress` for stages whose length is unknown (a download, a conversion): a
    spinner while the stage runs and a line with its time when it ends."""

    def __init__(self):
        self.status, self.description, self.t0 = None, "", 0.0

    def _close(self, done: bool) -> None:
        if self.status is not None:
            self.status.stop()
            if done:
                console.print(f"{self.description}: done in {time.perf_counter() - self.t0:.1f} s", highlight=False)
            self.status = None

    def __call__(self, description: str, total: int | None = 1, unit: str = "items"):
        self._close(done=False)
        self.description, self.t0 = description, time.perf_counter()
        self.status = console.status(description)
        self.status.start()
        return lambda n=1: self._close(done=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close(done=False)


def fmt(value, spread=None, digits: int = 3) -> str:
    """A number for a table ('-' where undefined), with its spread."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def print_accuracy_rows(rows: list) -> None:
    """Accuracy per system/task/SNR with Wilson intervals and the unparsed count."""
    from rich.table import Table

    table = Table("system", "task", "snr_db", "n", "accuracy [95% CI]", "unparsed")
    for r in rows:
        table.add_row(r["system"], r["task"], "clean" if r["snr_db"] is None else f"{r['snr_db']:g}", str(r["n"]),
                      f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]", str(r["unparsed"]))
    out_console().print(table)


def note(message: str, style: str = "dim") -> None:
    """One line of the library's notes, escaped."""
    from rich.markup import escape

    console.print(f"[{style}]{escape(message)}[/]", highlight=False, soft_wrap=True)


def paths(label: str, *items) -> None:
    from rich.markup import escape

    console.print(escape(f"{label}: " + "  ".join(str(p) for p in items)), highlight=False, soft_wrap=True)
