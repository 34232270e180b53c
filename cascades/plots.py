"""Figures for a compare report: kappa per task, and accuracy against SNR.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through
pyplot, so importing this module neither needs a display nor changes the backend of a
notebook that uses it. Each PNG is written whole or not at all (interp.atomic).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cascades.compare import Report
from cascades.report import format_task
from tasks.noise import format_snr
from interp.atomic import atomic_path

KAPPA_PNG = "kappa_by_task.png"
ACCURACY_PNG = "accuracy_vs_snr.png"


def write_plots(report: Report, out_dir: str | os.PathLike) -> list[Path]:
    """Write the report's figures into `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    fig = kappa_figure(report)
    if fig is not None:
        written.append(_save(fig, out_dir / KAPPA_PNG))
    fig = accuracy_figure(report)
    if fig is not None:
        written.append(_save(fig, out_dir / ACCURACY_PNG))
    return written


def kappa_figure(report: Report) -> Figure | None:
    """Grouped bars: one group per task, one bar per system pair, the bootstrap interval as
    error bars; one panel per SNR condition (clean first). None when nothing was compared."""
    comps = report.comparisons
    if not comps:
        return None
    tasks = list(dict.fromkeys(c.task for c in comps))
    pairs = list(dict.fromkeys((c.system_a, c.system_b) for c in comps))
    snrs = list(dict.fromkeys(c.snr_db for c in comps))
    by_cell = {(c.task, c.snr_db, c.system_a, c.system_b): c for c in comps}
    colors = _colors(len(pairs))
    width = 0.8 / len(pairs)

    fig = Figure(figsize=(max(6.0, 1.0 + len(tasks) * max(1.2, 0.35 * len(pairs))), 3.2 * len(snrs) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(snrs), 1, squeeze=False, sharex=True)[:, 0]
    lows = [v for c in comps for v in (c.kappa, c.kappa_ci_low) if not math.isnan(v)] + [0.0]
    for ax, snr in zip(axes, snrs):
        for j, pair in enumerate(pairs):
            x = np.arange(len(tasks)) - 0.4 + width * (j + 0.5)
            for xi, task in zip(x, tasks):
                c = by_cell.get((task, snr) + pair)
                if c is None:
                    continue
                if math.isnan(c.kappa):
                    ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                    continue
                # A percentile interval need not contain the point estimate; clip so the
                # error bar never has negative length.
                err = [[max(0.0, c.kappa - c.kappa_ci_low)], [max(0.0, c.kappa_ci_high - c.kappa)]] if not math.isnan(c.kappa_ci_low) else None
                ax.bar(xi, c.kappa, width=width * 0.95, color=colors[j], yerr=err, capsize=2,
                       error_kw={"elinewidth": 0.8}, label=f"{pair[0]} vs {pair[1]}")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_ylim(min(lows) - 0.05, 1.05)
        ax.set_ylabel("Cohen's kappa")
        ax.set_title(format_snr(snr), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(np.arange(len(tasks)), [format_task(t) for t in tasks])
    axes[-1].set_xlim(-0.5, len(tasks) - 0.5)
    handles, labels = _unique_legend(axes)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=8)
    conf = report.settings.get("confidence", 0.95)
    fig.suptitle(f"Kappa per task ({conf * 100:g}% bootstrap interval)", fontsize=11)
    return fig


def accuracy_figure(report: Report) -> Figure | None:
    """Accuracy against SNR: one panel per task, one line per system, Wilson intervals as
    error bars; clean audio sits at the right of the SNR axis, labelled "clean". None when no
    system's correctness is known."""
    rows = [a for a in report.accuracy if a.accuracy is not None]
    if not rows:
        return None
    tasks = list(dict.fromkeys(a.task for a in rows))
    systems = list(dict.fromkeys(a.system for a in rows))
    colors = _colors(len(systems))
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes, tasks):
        cells = [a for a in rows if a.task == task]
        noisy = sorted({a.snr_db for a in cells if a.snr_db is not None})
        # Clean is not an SNR value: put it one gap to the right of the mildest noise,
        # far enough that it does not read as a point on the same scale.
        gap = max(5.0, 0.25 * (noisy[-1] - noisy[0])) if noisy else 1.0
        clean_x = (noisy[-1] + gap) if noisy else 0.0
        for s, system in enumerate(systems):
            pts = sorted(((clean_x if a.snr_db is None else a.snr_db), a) for a in cells if a.system == system)
            if not pts:
                continue
            # Dodge systems sideways a little so their intervals do not hide each other.
            x = np.array([p[0] for p in pts]) + (s - (len(systems) - 1) / 2) * 0.04 * gap
            y = np.array([p[1].accuracy.accuracy for p in pts])
            err = np.array([[max(0.0, p[1].accuracy.accuracy - p[1].accuracy.ci_low) for p in pts],
                            [max(0.0, p[1].accuracy.ci_high - p[1].accuracy.accuracy) for p in pts]])
            is_clean = np.array([p[1].snr_db is None for p in pts])
            ax.errorbar(x, y, yerr=err, color=colors[s], marker="o", markersize=4, capsize=2,
                        linestyle="none", label=system)
            ax.plot(x[~is_clean], y[~is_clean], color=colors[s], linewidth=1.2)
            if is_clean.any() and (~is_clean).any():
                # Dotted: the step from the mildest noise to clean audio is not on the dB scale.
                last = np.flatnonzero(~is_clean)[-1]
                ax.plot([x[last], x[is_clean][0]], [y[last], y[is_clean][0]], color=colors[s], linewidth=1.0, linestyle=":")
        ticks = noisy + ([clean_x] if any(a.snr_db is None for a in cells) else [])
        ax.set_xticks(ticks, [f"{v:g}" for v in noisy] + (["clean"] if len(ticks) > len(noisy) else []))
        ax.set_xlim(ticks[0] - gap / 2, ticks[-1] + gap / 2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel("accuracy")
        ax.set_title(format_task(task), fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = _unique_legend(axes[: len(tasks)])
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    conf = report.settings.get("confidence", 0.95)
    fig.suptitle(f"Accuracy against SNR ({conf * 100:g}% Wilson interval)", fontsize=11)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return path


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _unique_legend(axes) -> tuple[list, list]:
    seen: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    return list(seen.values()), list(seen)
