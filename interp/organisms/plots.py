"""The build's loss curve as a PNG: one panel per stage, raw losses and a moving average."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interp.analysis.plots import save_figure

STAGES = (("ctc", "warm start: CTC through the LLM's embeddings"), ("kd", "distillation through the frozen LLM"))


def plot_curve(rows: list[dict], path: str | Path, title: str = "", window: int = 20) -> Path:
    stages = [(s, label) for s, label in STAGES if any(r["stage"] == s for r in rows)]
    fig = Figure(figsize=(5.0 * max(1, len(stages)), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    for k, (stage, label) in enumerate(stages):
        ax = fig.add_subplot(1, len(stages), k + 1)
        own = [r for r in rows if r["stage"] == stage]
        y = np.array([r["loss"] for r in own], dtype=float)
        x = np.arange(1, len(y) + 1)
        if stage == "kd" and any("instruction" in r for r in own):
            for name in sorted({r["instruction"] for r in own}):
                keep = np.array([r["instruction"] == name for r in own])
                ax.plot(x[keep], y[keep], ".", ms=2.5, alpha=0.5, label=name)
            ax.legend(fontsize=8, markerscale=3)
        else:
            ax.plot(x, y, ".", ms=2.5, alpha=0.4, color="tab:gray")
        smooth = np.array([y[max(0, i - window + 1):i + 1].mean() for i in range(len(y))])
        ax.plot(x, smooth, color="black", lw=1.2, label=f"mean of last {window}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
