"""The report of `interp erase`: the paper's Table 7 layout, markdown, JSON and a figure.

Rows are conditions (baseline, the concept erased, its controls), columns tasks (and noise
conditions), cells accuracy in % with a Wilson 95% interval; beside it the erased rank per
layer and a fresh probe's held-out score per layer on original and erased activations.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interp.analysis.leace import _layer_list
from interp.analysis.plots import METRIC_LABEL, save_figure
from interp.errors import InterpError
from interp.experiments.erase import EraseResult
from tasks.noise import snr_order


def _column_key(row: dict) -> tuple:
    return (row["task"], row.get("snr_db"))


def column_title(task: str, snr) -> str:
    try:
        from tasks import get_task

        title = get_task(task).title
    except (ImportError, InterpError, KeyError):
        title = task
    return title if snr is None else f"{title} @ {snr:g} dB"


def accuracy_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{100 * row['accuracy']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def table7(result: EraseResult) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 7 layout: one row per condition, one column per task (accuracy %,
    Wilson 95% interval). Returns (header, rows)."""
    columns = sorted({_column_key(r) for r in result.accuracy}, key=lambda k: (k[0], snr_order(k[1])))
    cell = {(r["system"], _column_key(r)): r for r in result.accuracy}
    n = {k: max((r["n"] for r in result.accuracy if _column_key(r) == k), default=0) for k in columns}
    header = ["condition"] + [f"{column_title(*k)} (n={n[k]})" for k in columns]
    body = [[cond] + [accuracy_cell(cell.get((cond, k))) for k in columns] for cond in result.conditions]
    return header, body


def markdown_report(result: EraseResult) -> str:
    def table(header, body):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])

    name = Path(result.model["path"]).name
    parts = [f"# Erasure of '{result.concept}' in {name}", "",
             f"LEACE at layers {_layer_list(result.layers)}, fitted on {result.positions} positions of "
             f"`{Path(result.store).name}` ({result.fit_items} items), affine {'on' if result.affine else 'off'}, "
             "applied at every position of the prompt and of each generated token.", "",
             "## Accuracy (%) with Wilson 95% intervals", "", table(*table7(result)), "",
             "## Erased rank per layer", ""]
    header = ["eraser"] + [str(l) for l in result.layers]
    parts.append(table(header, [[c] + [str(e["ranks"].get(str(l), "-")) for l in result.layers]
                                for c, e in result.erasers.items()]))
    rp = result.reprobe
    if rp is not None:
        names = list(rp.layers[0].erased) if rp.layers else []
        parts += ["", f"## Fresh probe on held-out activations ({rp.metric}; {rp.n_items} items, {rp.n_rows} positions, "
                      f"{rp.folds}-fold grouped CV)", ""]
        fmt = (lambda v: f"{100 * v:.1f}") if rp.metric == "accuracy" else (lambda v: f"{v:.3f}")
        body = [[str(l.layer), fmt(l.original)] + [fmt(l.erased[k]) for k in names] + [fmt(l.baseline)] for l in rp.layers]
        parts.append(table(["layer", "original"] + names + [rp.baseline_name], body))
    if result.notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(parts) + "\n"


def write_erase_report(result: EraseResult, out) -> dict[str, Path]:
    """out/erase.json, out/erase.md and out/erase.png."""
    from interp.atomic import write_json, write_text

    out = Path(out)
    paths = {"json": out / "erase.json", "markdown": out / "erase.md", "plot": out / "erase.png"}
    write_json(paths["json"], result.to_dict())
    write_text(paths["markdown"], markdown_report(result))
    write_erase_plot(result, paths["plot"])
    return paths


def erase_figure(result) -> Figure:
    """An `interp erase` result: task accuracy per condition with Wilson 95% intervals (left),
    and a fresh probe's held-out score per layer on original and erased activations (right)."""
    has_probe = result.reprobe is not None and bool(result.reprobe.layers)
    fig = Figure(figsize=(10.0 if has_probe else 5.5, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_probe else 1, squeeze=False)[0]
    ax = axes[0]
    columns = sorted({(r["task"], r.get("snr_db")) for r in result.accuracy}, key=lambda k: (k[0], snr_order(k[1])))
    cell = {(r["system"], (r["task"], r.get("snr_db"))): r for r in result.accuracy}
    width = 0.8 / max(1, len(result.conditions))
    x = np.arange(len(columns))
    for k, cond in enumerate(result.conditions):
        rows = [cell.get((cond, c)) for c in columns]
        acc = np.array([100 * r["accuracy"] if r else np.nan for r in rows])
        lo = np.array([max(0.0, 100 * (r["accuracy"] - r["ci_low"])) if r else 0 for r in rows])
        hi = np.array([max(0.0, 100 * (r["ci_high"] - r["accuracy"])) if r else 0 for r in rows])
        ax.bar(x + (k - (len(result.conditions) - 1) / 2) * width, acc, width, yerr=[lo, hi], capsize=3, label=cond)
    ax.set_xticks(x, [column_title(t, s) for t, s in columns])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"'{result.concept}' erased at layers {','.join(map(str, result.layers))}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="best")
    if has_probe:
        rp = result.reprobe
        ax = axes[1]
        layers = [l.layer for l in rp.layers]
        xs = np.arange(len(layers))
        ax.plot(xs, [l.original for l in rp.layers], marker="o", label="original")
        for name in rp.layers[0].erased:
            ax.plot(xs, [l.erased[name] for l in rp.layers], marker="s", linestyle="--", label=name)
        ax.plot(xs, [l.baseline for l in rp.layers], linestyle=":", color="tab:red", label=rp.baseline_name)
        ax.set_xticks(xs, layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(METRIC_LABEL.get(rp.metric, rp.metric))
        if rp.metric == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"fresh probe on held-out activations ({rp.n_items} items)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return fig


def write_erase_plot(result, path: str | os.PathLike) -> Path:
    return save_figure(erase_figure(result), path)


def reprobe_lines(result: EraseResult) -> list[str]:
    """One line per layer: a fresh probe's held-out score on original and erased activations."""
    rp = result.reprobe
    if rp is None:
        return []
    fmt = (lambda v: f"{100 * v:.1f}") if rp.metric == "accuracy" else (lambda v: f"{v:.3f}")
    return [f"layer {l.layer}: fresh probe {rp.metric} original {fmt(l.original)}, "
            + ", ".join(f"{k} {fmt(v)}" for k, v in l.erased.items()) + f", {rp.baseline_name} {fmt(l.baseline)}"
            for l in rp.layers]
