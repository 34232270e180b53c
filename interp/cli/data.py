"""`interp data`: load released datasets, synthesise speech, add noise, list tasks and voices."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from interp.cli.app import data_app
from interp.cli.display import StageBars, console
from interp.errors import InterpError


def _number_list(text: Optional[str], what: str) -> Optional[List[int]]:
    """'150,175' -> [150, 175]; None stays None."""
    if text is None:
        return None
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise InterpError(f"{what} must be comma-separated whole numbers, e.g. 150,175; got {text!r}") from None


def _name_list(text: Optional[str]) -> Optional[List[str]]:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


@data_app.command("tasks")
def data_tasks() -> None:
    """The six tasks: labels, text-sufficiency and the shipped sample file."""
    from rich.table import Table

    from tasks import TASKS, sample_path

    table = Table(title="Tasks")
    for col in ("task", "name", "labels", "text-sufficient", "sample"):
        table.add_column(col)
    for t in TASKS.values():
        table.add_row(t.name, t.title, ", ".join(t.labels) or "(open answer)", "yes" if t.text_sufficient else "no",
                      str(sample_path(t.name)))
    console.print(table)


@data_app.command("load")
def data_load(
    task: str = typer.Option(..., "--task", help="triviaqa, agnews, sst2, csqa, meld or mustard."),
    input: Path = typer.Option(..., "--input", help="Dataset file in its released format (e.g. AG News test.csv, MELD dev_sent_emo.csv, sarcasm_data.json)."),
    out: Path = typer.Option(..., "--out", help="Manifest (JSON Lines) to write."),
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Folder of MELD/MUStARD clips (dia{D}_utt{U}.mp4|wav, {key}.mp4|wav)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Read at most N items."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Drop items whose clip is missing instead of stopping."),
) -> None:
    """Read a dataset file into a manifest; MP4 clips are converted to WAV with ffmpeg."""
    from tasks import get_task, load_dataset
    from tasks.datasets import write_dataset

    spec = get_task(task)
    if not spec.text_sufficient and audio_dir is None:
        raise InterpError(f"{spec.title} is natural speech: pass --audio-dir with its clips (or use `interp data synth` for a TTS version)")
    rows = load_dataset(spec.name, input, audio_dir, limit, missing_audio="keep" if skip_missing else "error")
    kept = [r for r in rows if r.get("audio") or spec.text_sufficient]
    if not kept:
        raise InterpError(f"none of the {len(rows)} items has its clip in {audio_dir}; check --audio-dir")
    with StageBars() as progress:
        path = write_dataset(kept, out, progress=progress)
    console.print(f"wrote {len(kept)} {spec.name} items to {path}", highlight=False)
    if len(kept) < len(rows):
        console.print(f"[yellow]skipped {len(rows) - len(kept)} items whose clip is missing[/]", highlight=False)
    if spec.text_sufficient:
        console.print(f"next: interp data synth --task {spec.name} --input {path} --out DIR", highlight=False)


@data_app.command("synth")
def data_synth(
    input: Path = typer.Option(..., "--input", help="Dataset file in its released format, or a manifest with text."),
    out: Path = typer.Option(..., "--out", help="Output folder: audio/*.wav and manifest.jsonl."),
    task: Optional[str] = typer.Option(None, "--task", help="Task of the input (needed unless the input is a manifest with 'task')."),
    voice: Optional[str] = typer.Option(None, "--voice", help="Voice or comma-separated voices drawn per item, e.g. en-us,en-gb-x-rp,en-us+f4."),
    rate: Optional[str] = typer.Option(None, "--rate", help="Speaking rate(s) in words per minute drawn per item, e.g. 150,175."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Speak at most N items."),
    seed: int = typer.Option(0, "--seed", help="Seed of the voice/rate draw."),
    backend: str = typer.Option("espeak", "--backend", help="TTS backend: espeak (default, offline) or piper."),
    renditions: int = typer.Option(1, "--renditions", min=1, help="Renditions per item, each with its own voice and rate."),
) -> None:
    """Speak a task's items with offline TTS: 16 kHz mono WAVs and a manifest."""
    from tasks.datasets import read_items
    from tasks.synth import synthesize

    rates = _number_list(rate, "--rate")
    rows = read_items(task, input, limit)
    with StageBars() as progress:
        path = synthesize(rows, out, task=task, backend=backend, voices=_name_list(voice), rates=rates, seed=seed,
                          renditions=renditions, progress=progress)
    console.print(f"wrote {len(rows) * renditions} utterances and {path}", highlight=False)


@data_app.command("noise")
def data_noise(
    data: Path = typer.Option(..., "--data", help="Clean manifest."),
    snr: str = typer.Option(..., "--snr", help="Comma-separated SNRs in dB, e.g. 20,10,5,0 (write --snr=-5,0 for a leading minus)."),
    out: Path = typer.Option(..., "--out", help="Output folder: snr{X}/audio/*.wav and snr{X}/manifest.jsonl per SNR."),
    noise: str = typer.Option("babble", "--noise", help="babble (other items overlapped), white, or a folder of noise WAVs (e.g. MUSAN)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise draw (the same noise at every SNR)."),
    talkers: int = typer.Option(6, "--talkers", min=1, help="Babble: utterances overlapped per item."),
) -> None:
    """Mix noise into every item at exact SNRs; one manifest per condition."""
    from tasks.noise import add_noise, parse_snrs

    snrs = parse_snrs(snr)
    with StageBars() as progress:
        paths = add_noise(data, snrs, noise, out, seed=seed, talkers=talkers, progress=progress)
    for value, path in paths.items():
        console.print(f"SNR {value:g} dB: {path}", highlight=False)


@data_app.command("voices")
def data_voices(
    backend: str = typer.Option("espeak", "--backend", help="TTS backend."),
    lang: str = typer.Option("en", "--lang", help="Show voices whose language starts with this."),
) -> None:
    """Voices a TTS backend offers (espeak: one per language or accent, plus variants added with '+')."""
    from tasks.tts import get_backend

    tts = get_backend(backend)
    names = [v for v in tts.voices() if v.lower().startswith(lang.lower())]
    console.print("voices: " + (", ".join(names) or "(none listed)"), highlight=False)
    if hasattr(tts, "variants"):
        console.print("variants (append as +NAME, e.g. en-us+f4): " + ", ".join(tts.variants()), highlight=False)


@data_app.command("templates")
def data_templates(
    out: Optional[Path] = typer.Option(None, "--out", help="Write the default prompt templates here (JSON) to edit; else print them."),
) -> None:
    """The default prompt templates: one instruction per task, framed for a speech LLM and for a cascade."""
    import json

    from interp.atomic import write_json
    from tasks import load_templates

    templates = load_templates()
    if out is None:
        typer.echo(json.dumps(templates, indent=2))
    else:
        write_json(out, templates)
        console.print(f"wrote {out}; pass it where prompts are built (tasks.get_task(name, templates=PATH))", highlight=False)
