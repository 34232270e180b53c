"""Figures of the analysis results: probe curves, logit-lens heatmaps and bag-of-tokens curves.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot,
so importing this module neither needs a display nor changes a notebook's backend. Each
PNG is written whole or not at all (interp.atomic).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interp.atomic import atomic_path

METRIC_LABEL = {"accuracy": "accuracy", "r2": "R$^2$", "decodability": "decodability = max(0, 1 - CER)"}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` as a PNG, atomically."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for some tokens' scripts
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    return path


def probe_figure(result) -> Figure:
    """Metric against layer for a `ProbeResult`, with the majority/mean baseline and the
    shuffled-label control; error bars are the standard deviation across folds."""
    layers = [s.layer for s in result.layers]
    x = np.arange(len(layers))
    fig = Figure(figsize=(max(5.0, 0.35 * len(layers) + 2.5), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    get = lambda key: np.array([getattr(s, key) for s in result.layers], dtype=float)  # noqa: E731
    ax.errorbar(x, get("score"), yerr=get("spread"), marker="o", capsize=3, label=f"probe ({result.metric})")
    ax.errorbar(x, get("control"), yerr=get("control_spread"), marker="s", capsize=3, linestyle="--",
                color="tab:gray", label="shuffled-label control")
    ax.errorbar(x, get("baseline"), yerr=get("baseline_spread"), linestyle=":", color="tab:red", capsize=2,
                label=result.baseline_name)
    ax.set_xticks(x, layers, rotation=90 if len(layers) > 12 else 0)
    ax.set_xlabel("layer")
    ax.set_ylabel(METRIC_LABEL.get(result.metric, result.metric))
    if result.metric in ("accuracy", "decodability"):
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"probe '{result.target}' ({result.positions}, {result.folds}-fold grouped CV, "
                 f"{result.n_items} items)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def write_probe_plot(result, path: str | os.PathLike) -> Path:
    return save_figure(probe_figure(result), path)


def _cell_text(s: str, width: int = 6) -> str:
    s = s.replace("\n", "⏎").replace("\t", " ")
    s = s.strip() or "␣"
    return s if len(s) <= width else s[: width - 1] + "…"


def lens_heatmap_figure(result, forms, item_id: str | None = None, max_positions: int = 48) -> Figure:
    """Layers x positions for one item (the first, or `item_id`): the top-1 token in each cell,
    coloured by its probability. The scored positions (audio ones) are shown, the first `max_positions`."""
    from interp.errors import InterpError

    items = result.items
    if item_id is not None:
        items = [it for it in items if it.id == str(item_id)]
        if not items:
            raise InterpError(f"--plot-item '{item_id}' is not among the lens items")
    item = items[0]
    cols = np.flatnonzero(item.scored)[:max_positions]
    layers = result.layers
    probs = np.array([item.top_probs[layer][cols, 0] for layer in layers])
    fig = Figure(figsize=(max(6.0, 0.55 * len(cols) + 2.0), max(3.0, 0.4 * len(layers) + 1.6)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower")
    fontsize = 7 if len(cols) <= 32 else 5
    for r, layer in enumerate(layers):
        for c, col in enumerate(cols):
            tok = _cell_text(forms.text(item.top_ids[layer][col, 0]))
            ax.text(c, r, tok, ha="center", va="center", fontsize=fontsize, parse_math=False,
                    color="black" if probs[r, c] > 0.6 else "white")
    ax.set_yticks(np.arange(len(layers)), layers)
    ticks = np.arange(0, len(cols), max(1, len(cols) // 12))
    times = item.time_start[cols]
    labels = [f"{times[t]:.2f}s" if np.isfinite(times[t]) else str(item.index[cols[t]]) for t in ticks]
    ax.set_xticks(ticks, labels, rotation=45, fontsize=7)
    ax.set_xlabel("audio position (start time)" if item.is_audio.any() else "decoder position")
    ax.set_ylabel("layer")
    shown = "" if len(cols) == item.scored.sum() else f", first {len(cols)} of {int(item.scored.sum())} positions"
    ax.set_title(f"logit lens, item {item.id}{shown}", fontsize=9, loc="left")
    fig.colorbar(im, ax=ax, label="top-1 probability", shrink=0.8)
    return fig


def lens_precision_figure(result) -> Figure:
    """Bag-of-tokens precision (and recall) of the lens text against the transcript, by layer."""
    layers = result.layers
    x = np.arange(len(layers))
    fig = Figure(figsize=(max(5.0, 0.35 * len(layers) + 2.5), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    prec = [result.precision.get(layer, math.nan) for layer in layers]
    rec = [result.recall.get(layer, math.nan) for layer in layers]
    ax.plot(x, prec, marker="o", label="bag-of-tokens precision")
    ax.plot(x, rec, marker="s", linestyle="--", label="bag-of-tokens recall")
    ax.set_xticks(x, layers, rotation=90 if len(layers) > 12 else 0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction (mean over items)")
    ax.set_title(f"logit lens vs transcript ({result.family}, {len(result.items)} items)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_lens_plots(result, forms, path: str | os.PathLike, item_id: str | None = None) -> list[Path]:
    """The heatmap at `path` and the precision curve beside it (`<stem>_precision.png`)."""
    path = Path(path)
    heat = save_figure(lens_heatmap_figure(result, forms, item_id), path)
    curve = save_figure(lens_precision_figure(result), path.with_name(f"{path.stem}_precision.png"))
    return [heat, curve]
