"""`interp organisms`: model organisms, speech LLMs built from real pretrained parts whose
mechanism is known by construction (list, get, build, heldout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from interp.cli.app import app
from interp.cli.display import LazyBar, StageBars, StageSpinners, console, out_console

organisms_app = typer.Typer(no_args_is_help=True, help="Model organisms: speech LLMs built from real pretrained parts "
                            "whose mechanism is known by construction (cascade, acoustic).")
app.add_typer(organisms_app, name="organisms")


@organisms_app.command("list")
def organisms_list() -> None:
    """The organisms, their recipes and whether trained weights ship with the package."""
    from rich.table import Table

    from interp.organisms.recipe import RECIPES
    from interp.organisms.ship import WEIGHTS_DIR, PROJECTOR_FILE

    table = Table("organism", "what is built in", "pitch question answered from", "shipped weights")
    for r in RECIPES.values():
        shipped = (WEIGHTS_DIR / r.name / PROJECTOR_FILE).is_file()
        table.add_row(r.name, r.description, "the transcript (teacher)" if r.pitch_target == "teacher" else "the voice",
                      "yes" if shipped else "no")
    out_console().print(table)


@organisms_app.command("get")
def organisms_get(name: str = typer.Argument(..., help="organism: cascade | acoustic"),
                  out: Optional[Path] = typer.Option(None, "--out", help="folder to write (default: the cache's organisms/NAME)"),
                  cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default: $INTERP_CACHE, else ~/.cache/interp)"),
                  force: bool = typer.Option(False, "--force", help="write the folder again even if it is there")):
    """Materialise a shipped organism as an Ultravox checkpoint folder (no training) and print its path."""
    from interp.organisms.ship import get_organism

    with StageSpinners() as stages:
        advance = stages(f"organism {name}")
        path = get_organism(name, out=out, cache=cache, force=force)
        advance()
    typer.echo(str(path))


@organisms_app.command("build")
def organisms_build(name: str = typer.Argument(..., help="organism: cascade | acoustic"),
                    out: Path = typer.Option(..., "--out", help="checkpoint folder to write"),
                    work: Optional[Path] = typer.Option(None, "--work", help="folder caching the data and warm start, shared by builds"),
                    cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder of the base models"),
                    kd_steps: Optional[int] = typer.Option(None, "--kd-steps", min=0, help="distillation steps (default: the recipe's)"),
                    ctc_steps: Optional[int] = typer.Option(None, "--ctc-steps", min=0, help="warm-start steps (default: the recipe's)"),
                    audio_model: Optional[Path] = typer.Option(None, "--audio-model", help="local Whisper folder to use instead "
                                                               "of whisper-tiny.en (its encoder is the audio tower)"),
                    text_model: Optional[Path] = typer.Option(None, "--text-model", help="local Llama-class causal LM folder "
                                                              "(with a chat template) instead of SmolLM2-135M-Instruct"),
                    audio_model_id: Optional[str] = typer.Option(None, "--audio-model-id", help="hub id the saved config names "
                                                                 "the audio model by (default: the folder's path)"),
                    text_model_id: Optional[str] = typer.Option(None, "--text-model-id", help="hub id the saved config names "
                                                                "the LLM by (default: the folder's path)")):
    """Train an organism's projector from its recipe (the frozen base models come from `interp models get`,
    or from local folders: any Whisper, any Llama-class LLM)."""
    from interp.errors import InterpError
    from interp.organisms.build import build_organism
    from interp.organisms.recipe import get_recipe

    recipe = get_recipe(name)
    for folder, option in ((audio_model, "--audio-model"), (text_model, "--text-model")):
        if folder is not None and not folder.is_dir():
            raise InterpError(f"{option} {folder} is not a folder; give a local checkpoint folder")
    changes = {k: v for k, v in (("kd_steps", kd_steps), ("ctc_steps", ctc_steps)) if v is not None}
    if audio_model is not None:
        changes |= {"audio_model": str(audio_model.resolve()),
                    "audio_model_id": audio_model_id or str(audio_model.resolve())}
    if text_model is not None:
        changes |= {"text_model": str(text_model.resolve()), "text_model_id": text_model_id or str(text_model.resolve())}
    if changes:
        recipe = recipe.replace(**changes)
    with StageBars() as stages:
        result = build_organism(recipe, out, work=work, cache=cache, progress=stages)
    minutes = {k: round(v / 60, 1) for k, v in result.seconds.items() if isinstance(v, float)}
    console.print(f"built '{name}' in {minutes.get('total', 0)} min ({json.dumps(minutes)}); loss curve: "
                  f"{result.path / 'loss.png'}", highlight=False, soft_wrap=True)
    typer.echo(str(result.path))


@organisms_app.command("heldout")
def organisms_heldout(out: Path = typer.Option(..., "--out", help="folder for the audio and manifests"),
                      n: int = typer.Option(60, "--n", min=1, help="held-out sentences (each spoken low and high)"),
                      organism: str = typer.Option("cascade", "--organism", help="recipe whose training sentences are excluded")):
    """Speak held-out items of the organisms' tasks (sentiment, pitch); write manifests per task."""
    from interp.organisms.evaluation import write_heldout
    from interp.organisms.recipe import get_recipe

    with LazyBar("speak", 2 * n, "clips") as bar:
        path = write_heldout(get_recipe(organism), out, n=n, on_item=lambda _: bar.advance())
    console.print(f"manifests: {path} (both tasks), {path.parent / 'sentiment.jsonl'}, {path.parent / 'pitch.jsonl'}",
                  highlight=False, soft_wrap=True)
