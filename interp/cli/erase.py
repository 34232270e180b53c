"""`interp erase`: LEACE erasure at several layers during generation (the study's Table 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli.app import AUDIO_MODEL, DEVICE, DEVICE_MAP, MAX_MEMORY, MODEL_DTYPE, TEXT_MODEL, app
from interp.cli.display import StageBars, console, note, paths, wide
from interp.cli.shards import SHARD, Sharding
from interp.errors import InterpError


@app.command("erase")
def erase_cmd(
    model: Path = typer.Argument(..., help="local checkpoint folder"),
    data: Path = typer.Option(..., "--data", help="manifest of the items to answer (JSON Lines with id, audio, task, label)"),
    fit_store: Path = typer.Option(..., "--fit-store", help="activation store of MODEL to fit the erasers on (`interp trace`)"),
    concept: str = typer.Option(..., "--concept", help="item field (e.g. label), chars, ctc, energy, pitch, or a '+' of them"),
    layers: str = typer.Option(..., "--layers", help="block indices to erase at, all at once, e.g. 0,4,8,-1"),
    positions: str = typer.Option("audio", "--positions", help="store rows to fit on: audio | all"),
    affine: bool = typer.Option(False, "--affine/--no-affine", help="re-centre erased states on the fitting mean (off: the paper's choice for generation)"),
    controls: str = typer.Option("random", "--controls", help="comma-separated controls: random (matched-rank random subspace), acoustic (erase energy+pitch); '' for none"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: erase-CONCEPT); erasers found in it are reused"),
    batch_size: int = typer.Option(8, "--batch-size", help="items per generation batch"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="greedy tokens generated per answer"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="answer only the first N items of the manifest"),
    holdout: float = typer.Option(0.25, "--holdout", help="fraction of the store's items kept out of the fit, for re-probing"),
    seed: int = typer.Option(0, "--seed", help="seed of the fit/held-out split and of the random control"),
    refit: bool = typer.Option(False, "--refit", help="fit the erasers again even if --out holds some"),
    shard: Optional[str] = SHARD,
    device: str = DEVICE,
    model_dtype: str = MODEL_DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY,
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Erase a concept with LEACE at several layers during generation: task accuracy for the
    baseline, the concept erased and its controls (Table 7), and a fresh probe's held-out score."""
    from rich.markup import escape
    from rich.table import Table

    from interp.experiments.erase import erase_experiment
    from interp.experiments.erase_merge import merge_erase
    from interp.experiments.erase_report import reprobe_lines, table7, write_erase_report
    from interp.locks import OutputLock
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.models.base import parse_max_memory
    from interp.store import ActivationStore

    names = [c.strip() for c in controls.split(",") if c.strip()]
    rows = read_manifest(data, limit=limit)
    out = out or Path(f"erase-{concept.replace('+', '_')}")
    # a shard writes its own folder (under a launcher, OUT's rank folder; rank 0 merges them into OUT)
    sharding = Sharding(shard, out, device, resume=True, overwrite=False, device_map=device_map)
    info, rows = sharding.select(rows, batch_size)
    if info is not None and not rows:
        raise InterpError(f"shard {info.label} holds no items (the manifest has {info.manifest_items} items in batches "
                          f"of {batch_size}); use fewer shards than batches")
    target = sharding.target
    for folder in {out, target}:  # under a launcher: the rank's folder and the merged one
        if folder.exists() and not folder.is_dir():
            raise InterpError(f"--out {folder} is a file; give a folder for the erasers, predictions and report")
    with OutputLock(target), ActivationStore(fit_store) as store, StageBars() as progress:
        adapter = load_model(model, dtype=model_dtype, device=sharding.device, audio_model=audio_model,
                             text_model=text_model, device_map=device_map, max_memory=parse_max_memory(max_memory))
        result = erase_experiment(adapter, rows, store, concept, layers, target, positions=positions, affine=affine,
                                  controls=names, batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed,
                                  holdout=holdout, refit=refit, shard=info, progress=progress)
        written = write_erase_report(result, target)
    header, body = table7(result)
    table = Table(title=f"accuracy (%) with '{escape(result.concept)}' erased at layers {','.join(map(str, result.layers))}")
    for col in header:
        table.add_column(escape(col), justify="left" if col == "condition" else "right")
    for r in body:
        table.add_row(*map(escape, r))
    wide(console).print(table)
    ranks = result.erasers[result.conditions[1]]["ranks"]
    console.print(f"erased rank per layer: {', '.join(f'{k}: {v}' for k, v in ranks.items())}", highlight=False)
    for line in reprobe_lines(result):
        note(line, "default")
    for n in result.notes:
        note(n)
    paths("report", written["markdown"], written["json"], written["plot"])
    sharding.finish(merge_erase)
