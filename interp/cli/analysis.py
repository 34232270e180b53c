"""`interp probe` (layer-wise linear probes over a store) and `interp lens` (the logit lens)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli.app import AUDIO_MODEL, DEVICE, DEVICE_MAP, MAX_MEMORY, MODEL_DTYPE, TEXT_MODEL, app
from interp.cli.display import StageBars, fmt, note, out_console, paths
from interp.errors import InterpError


@app.command("probe")
def probe_cmd(
    store: Path = typer.Argument(..., help="activation store (.h5) written by `interp trace`"),
    target: str = typer.Option(..., "--target", help="an item field (label, speaker, snr_db, ...) or energy | pitch | ctc | chars"),
    layers: str = typer.Option("all", help="'all' or layers like embed,0,8,-1 (must be in the store)"),
    positions: Optional[str] = typer.Option(None, help="audio | all | last | audio-mean (default: audio-mean for item fields "
                                                       "and chars, audio for energy, pitch and ctc)"),
    folds: int = typer.Option(5, help="outer cross-validation folds, grouped by item"),
    kind: str = typer.Option("auto", help="auto | classification | regression (for item fields)"),
    seed: int = typer.Option(0, help="seed of the folds, the shuffled control and the CTC head"),
    max_positions: Optional[int] = typer.Option(None, help="at most N evenly spaced positions per item (position-level targets)"),
    device: str = typer.Option("cpu", help="torch device of the CTC head"),
    jobs: int = typer.Option(0, "--jobs", min=0, help="ctc: layers trained at once, each in a worker process on one "
                                                    "thread (0: one per CPU core when the sweep is large)"),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON results (default: <store>_probe_<target>.json beside the store)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of metric vs layer (default: the --out path with .png)"),
):
    """Fit a linear probe per layer for TARGET, with majority and shuffled-label baselines on the same folds."""
    from rich.table import Table

    from interp.analysis.plots import write_probe_plot
    from interp.analysis.probing import ProbeConfig
    from interp.analysis.sweep import plan_probe, run_probe
    from interp.atomic import write_json
    from interp.store import ActivationStore

    if max_positions is not None and max_positions < 1:
        raise InterpError(f"--max-positions must be at least 1 (got {max_positions}); leave it out to keep every position")
    config = ProbeConfig(folds=folds, seed=seed, max_positions=max_positions, device=device, ctc_jobs=jobs)
    with ActivationStore(store) as st:
        plan = plan_probe(st, target, layers=layers, positions=positions, kind=kind, config=config)
        with StageBars() as progress:
            result = run_probe(plan, progress=progress, keep_probes=False)
    out = out or store.with_name(f"{store.stem}_probe_{target}").with_suffix(".json")
    plot = plot or out.with_suffix(".png")
    write_json(out, result.to_dict())
    write_probe_plot(result, plot)

    table = Table(title=f"probe '{target}': {result.metric} by layer ({result.kind}, {result.positions}, "
                        f"{result.folds}-fold grouped CV)")
    for col in ("layer", result.metric, result.baseline_name, "shuffled control", "selectivity", "items", "positions"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for s in result.layers:
        table.add_row(s.layer, fmt(s.score, s.spread), fmt(s.baseline), fmt(s.control, s.control_spread),
                      fmt(s.selectivity), str(s.n_items), str(s.n_positions))
    out_console().print(table)
    for n in result.notes:
        note(f"note: {n}")
    paths("results", out, f"plot: {plot}")


@app.command("lens")
def lens_cmd(
    model: Path = typer.Argument(..., help="local checkpoint folder"),
    data: Optional[Path] = typer.Option(None, "--data", help="manifest to run through the model (live lens)"),
    store: Optional[Path] = typer.Option(None, "--store", help="activation store of this model (lens from stored residuals)"),
    layers: str = typer.Option("all", help="'all' or layers like embed,0,8,-1"),
    positions: Optional[str] = typer.Option(None, help="audio | all | text | last (default: audio; all for Whisper's decoder)"),
    top_k: int = typer.Option(5, "--top-k", help="tokens kept per position"),
    batch_size: int = typer.Option(4, help="items per forward pass (live)"),
    limit: Optional[int] = typer.Option(None, help="only the first N manifest items (live)"),
    prompt: Optional[str] = typer.Option(None, help="instruction sent with the audio (live; default: the item's task prompt)"),
    device: str = DEVICE,
    model_dtype: str = MODEL_DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY,
    out: Optional[Path] = typer.Option(None, "--out", help="JSON Lines, one line per item and layer (default: lens.jsonl beside the input)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="heatmap PNG; the precision curve goes to <stem>_precision.png"),
    plot_item: Optional[str] = typer.Option(None, "--plot-item", help="item id for the heatmap (default: the first)"),
    emit_text: Optional[str] = typer.Option(None, "--emit-text", help="LAYER whose lens text becomes the transcript of --emit-manifest"),
    emit_manifest: Optional[Path] = typer.Option(None, "--emit-manifest", help="manifest to write with LAYER's lens text as transcripts"),
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Logit lens: each layer's residual through the model's final norm and unembedding, with bag-of-tokens scores."""
    from rich.markup import escape
    from rich.table import Table

    from interp.analysis.lens import TokenForms, check_store_model, lens_live, lens_store
    from interp.analysis.lens_outputs import emit_manifest as write_emit, layers_with_emit, write_lens
    from interp.analysis.plots import write_lens_plots
    from interp.models import load_model
    from interp.models.base import parse_max_memory
    from interp.store import ActivationStore

    if (data is None) == (store is None):
        raise InterpError("give exactly one of --data MANIFEST (live run) or --store STORE (stored residuals)")
    if (emit_text is None) != (emit_manifest is None):
        raise InterpError("--emit-text LAYER and --emit-manifest PATH go together; give both")
    source = data or store
    if data is not None:
        from interp.manifest import read_manifest

        rows = read_manifest(data, limit=limit)
        ids = [str(r["id"]) for r in rows]
    else:
        with ActivationStore(store) as st:
            ids = [str(i) for i in st.ids]
    if plot_item is not None and plot_item not in ids:
        raise InterpError(f"--plot-item '{plot_item}' is not an item of {source.name} (e.g. {', '.join(ids[:3])}); "
                          "give one of its ids")
    adapter = load_model(model, dtype=model_dtype, device=device, audio_model=audio_model, text_model=text_model,
                         device_map=device_map, max_memory=parse_max_memory(max_memory))
    layers, emit_text = layers_with_emit(layers, emit_text, adapter.n_layers)
    with StageBars() as progress:
        if data is not None:
            from tasks import speech_prompt

            result = lens_live(adapter, rows, layers=layers, positions=positions, top_k=top_k, batch_size=batch_size,
                               prompt=prompt or speech_prompt, progress=progress)
        else:
            with ActivationStore(store) as st:
                check_store_model(st, adapter)
                result = lens_store(adapter, st, layers=layers, positions=positions, top_k=top_k, progress=progress)
    out = out or source.with_name(f"{source.stem}_lens.jsonl")
    plot = plot or out.with_suffix(".png")
    forms = TokenForms(adapter.tokenizer)
    write_lens(result, out, adapter.tokenizer)
    plots = write_lens_plots(result, forms, plot, plot_item)
    emitted = write_emit(result, emit_text, emit_manifest) if emit_text is not None else None

    table = Table(title=f"logit lens: bag-of-tokens vs transcript ({result.family}, {result.positions} positions)")
    for col in ("layer", "precision", "recall", "items", f"lens text of item {result.items[0].id}"):
        table.add_column(col, justify="left" if col in ("layer",) or col.startswith("lens") else "right")
    for s in result.summary():
        text = result.items[0].text[s["layer"]]
        table.add_row(s["layer"], fmt(s["precision"]), fmt(s["recall"]), str(s["n_items"]),
                      escape(text if len(text) <= 60 else text[:59] + "…"))
    out_console().print(table)
    paths("lens", out, "plots: " + ", ".join(map(str, plots)))
    if emitted:
        paths(f"manifest with layer {emit_text}'s lens text", emitted)
