"""`interp trace` (record residuals into a store) and `interp demo` (everything, end to end)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from interp.cli.app import AUDIO_MODEL, DEVICE, DEVICE_MAP, MAX_MEMORY, MODEL_DTYPE, TEXT_MODEL, app
from interp.cli.shards import SHARD, Sharding
from interp.cli.display import StageBars, console, out_console, print_accuracy_rows
from interp.errors import InterpError


@app.command("demo")
def demo_cmd(out: Path = typer.Option(Path("interp-demo"), "--out", help="folder for everything the demo writes"),
             n_sentences: int = typer.Option(6, "--n-sentences", min=2,
                                             help="held-out sentences, each spoken low and high (4 items each)"),
             cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder of the real models "
                                                  "(default: $INTERP_CACHE, else ~/.cache/interp)")):
    """Run the study end to end on real pretrained models (Whisper tiny.en, SmolLM2-135M and the model
    organisms built from them) and held-out synthesised speech."""
    from rich.table import Table

    from interp.experiments.demo import describe, run_demo

    with StageBars() as stages:
        outputs = run_demo(out, progress=stages, n_sentences=n_sentences, cache=cache)
    print_accuracy_rows(outputs["accuracy"])
    table = Table("output", "where", title="interp demo")
    for what, where in describe(outputs):
        table.add_row(what, where)
    out_console().print(table)
    console.print("ground truth: the 'cascade' organism was built to answer as its LLM answers the transcript, the "
                  "'acoustic' one to hear the voice's pitch as well (docs/organisms.md)", highlight=False)
    console.print(f"everything is in [bold]{out.resolve()}[/] (summary: {out / 'summary.json'})")


@app.command("trace")
def trace_cmd(
    model: Path = typer.Argument(..., help="local checkpoint folder"),
    data: Path = typer.Option(..., "--data", help="manifest (JSON Lines: id, audio, ...)"),
    out: Path = typer.Option(..., "--out", help="activation store to write (.h5)"),
    layers: str = typer.Option("all", help="'all' or block indices like 0,4,8 (add 'embed' for the input of block 0)"),
    positions: str = typer.Option("audio", help="all | audio | text | last | audio-mean"),
    dtype: str = typer.Option("float16", help="stored dtype: float16 | float32"),
    batch_size: int = typer.Option(8, help="items per forward pass"),
    device: str = DEVICE,
    model_dtype: str = MODEL_DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY,
    component: str = typer.Option("decoder", help="decoder (LLM residual stream) | encoder (audio encoder layers)"),
    resume: bool = typer.Option(False, "--resume", help="complete an interrupted store"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store"),
    limit: Optional[int] = typer.Option(None, help="trace only the first N items"),
    prompt: Optional[str] = typer.Option(None, help="instruction sent with the audio (default: the item's task prompt)"),
    shard: Optional[str] = SHARD,
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Record residual activations of MODEL over a manifest into an HDF5 store."""
    from interp.locks import OutputLock
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.models.base import parse_max_memory
    from interp.store.merge import merge_stores
    from interp.trace import trace
    from tasks import speech_prompt

    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    rows = read_manifest(data, limit=limit)
    if out.is_dir():
        raise InterpError(f"{out} is a folder; give a file path for the store, e.g. {out / 'acts.h5'}")
    sharding = Sharding(shard, out, device, resume, overwrite, device_map)
    with OutputLock(sharding.target):  # before loading the model, so a second writer fails at once
        adapter = load_model(model, dtype=model_dtype, device=sharding.device, audio_model=audio_model,
                             text_model=text_model, device_map=device_map, max_memory=parse_max_memory(max_memory))
        with StageBars() as progress:
            summary = trace(adapter, rows, sharding.target, layers=layers, positions=positions, dtype=dtype,
                            batch_size=batch_size, resume=resume, overwrite=overwrite, prompt=prompt or speech_prompt,
                            component=component, command=" ".join(["interp"] + sys.argv[1:]), shard=sharding.shard,
                            progress=progress)
    console.print(f"traced {summary.n_new} new item(s); store [bold]{summary.path}[/] holds {summary.n_items} items, "
                  f"{summary.n_rows} positions, layers {','.join(summary.layers)}")
    if summary.truncated:
        console.print(f"[yellow]warning:[/] {len(summary.truncated)} item(s) longer than the encoder window were "
                      f"truncated to {adapter.max_audio_seconds:g} s (e.g. {summary.truncated[0]}); the store marks them")
    if summary.non_finite:
        console.print(f"[yellow]warning:[/] {summary.non_finite} non-finite values in the store (float16 overflow?); "
                      "trace with --dtype float32")
    sharding.finish(merge_stores)
