"""`interp run`, `interp cascade` and `interp compare`: behaviour, and how alike systems answer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from interp.cli.app import AUDIO_MODEL, DEVICE, DEVICE_MAP, MAX_MEMORY, MODEL_DTYPE, TEXT_MODEL, app
from interp.cli.shards import SHARD, Sharding
from interp.cli.display import StageBars, console, note, paths, print_accuracy_rows, wide
from interp.errors import InterpError


def _print_accuracy(preds: list) -> None:
    from cascades.agreement import accuracy_table

    print_accuracy_rows(accuracy_table(preds))


@app.command("run")
def run_cmd(
    model: Path = typer.Argument(..., help="local speech-LLM checkpoint folder"),
    data: Path = typer.Option(..., "--data", help="manifest with task, label and audio per item"),
    out: Path = typer.Option(..., "--out", help="predictions file to write (.jsonl)"),
    batch_size: int = typer.Option(8, help="items per generate call"),
    max_new_tokens: int = typer.Option(32, help="greedy decoding budget per answer"),
    system: Optional[str] = typer.Option(None, help="name of the system in the predictions (default: model folder name)"),
    device: str = DEVICE,
    model_dtype: str = MODEL_DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY,
    resume: bool = typer.Option(False, "--resume", help="answer only the items not yet in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing predictions file"),
    limit: Optional[int] = typer.Option(None, help="only the first N items"),
    shard: Optional[str] = SHARD,
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Answer every item with a speech LLM (greedy) and score it."""
    from cascades.merge import merge_predictions
    from cascades.predictions import PredictionsFile, pending
    from cascades.runner import answer_speech, speech_input_fingerprints
    from interp.fingerprint import model_fingerprint
    from interp.manifest import read_manifest
    from interp.models import detect_family, load_model
    from interp.models.base import parse_max_memory
    from tasks import check_task_rows

    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    rows = read_manifest(data, limit=limit)
    sharding = Sharding(shard, out, device, resume, overwrite, device_map)
    info, rows = sharding.select(rows, batch_size)
    check_task_rows(rows)
    detect_family(model)
    # checked before the model loads: a resume by another model, or for other inputs, fails at once
    with PredictionsFile(sharding.target, resume=resume, overwrite=overwrite, model_fingerprint=model_fingerprint(model),
                         input_fingerprints=speech_input_fingerprints(rows), shard=info) as preds:
        todo = pending(rows, preds.done_keys())
        adapter = load_model(model, dtype=model_dtype, device=sharding.device, audio_model=audio_model,
                             text_model=text_model, device_map=device_map, max_memory=parse_max_memory(max_memory))
        with StageBars() as progress:
            answer_speech(adapter, todo, system=system or model.name, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, on_batch=preds.add, progress=progress)
    _print_accuracy(preds.rows)
    console.print(f"predictions: [bold]{sharding.target}[/]")
    sharding.finish(merge_predictions)


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
    device: str = DEVICE,
    model_dtype: str = typer.Option("auto", help="dtype of the ASR and LLM models: auto (float32 on CPU, bfloat16 on CUDA, as for speech LLMs) | float32 | bfloat16 | float16"),
    matched_to: Optional[Path] = typer.Option(None, "--matched-to", help="speech-LLM checkpoint this cascade is matched with; refused unless the LLM's backbone config equals its own"),
    raw_prompt: bool = typer.Option(False, "--raw-prompt", help="prompt an LLM whose tokenizer has no chat format with the bare text (base models only)"),
    resume: bool = typer.Option(False, "--resume", help="answer only the items not yet in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing predictions file"),
    limit: Optional[int] = typer.Option(None, help="only the first N items"),
    list_matched: bool = typer.Option(False, "--list-matched", help="show the study's matched speech-LLM / cascade pairs"),
    shard: Optional[str] = SHARD,
    audio_model: Optional[Path] = AUDIO_MODEL,
    text_model: Optional[Path] = TEXT_MODEL,
):
    """Answer every item with an ASR -> LLM cascade (Whisper, then a text LLM)."""
    if list_matched:
        return _list_matched()
    from cascades.cascade import Cascade
    from cascades.merge import merge_predictions
    from cascades.predictions import PredictionsFile, pending
    from cascades.runner import answer_text
    from interp.manifest import read_manifest
    from tasks import check_task_rows

    if data is None or out is None or llm is None:
        raise InterpError("interp cascade needs --data, --out and --llm (or --list-matched)")
    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    rows = read_manifest(data, limit=limit, require_audio=transcripts is None)
    sharding = Sharding(shard, out, device, resume, overwrite)
    info, rows = sharding.select(rows, batch_size)
    check_task_rows(rows)
    plan = Cascade.plan(rows, llm, asr=asr, transcripts=transcripts, matched_to=matched_to)
    with PredictionsFile(sharding.target, resume=resume, overwrite=overwrite, model_fingerprint=plan.fingerprint(),
                         input_fingerprints=plan.input_fingerprints(), shard=info) as preds:
        todo = pending(rows, preds.done_keys())
        text_llm, extra = plan.load_llm(sharding.device, model_dtype, raw_prompt, audio_model, text_model)
        with StageBars() as progress:
            texts, asr_info = plan.texts(todo, batch_size, sharding.device, model_dtype, progress=progress)
            if asr_info.get("wer") is not None:
                console.print(f"ASR word error rate against the manifest transcripts: [bold]{asr_info['wer']:.3f}[/] "
                              f"over {asr_info['wer_items']} items")
            extra.update({k: v for k, v in asr_info.items() if k == "asr_dtype"})
            answer_text(text_llm, todo, texts, system=system or plan.system_name(text_llm.name), batch_size=batch_size,
                        max_new_tokens=max_new_tokens, on_batch=preds.add, extra=extra, progress=progress)
    _print_accuracy(preds.rows)
    console.print(f"predictions: [bold]{sharding.target}[/]")
    sharding.finish(merge_predictions)


def _list_matched() -> None:
    from rich.console import Console
    from rich.table import Table

    from cascades.cascade import MATCHED_PAIRS

    table = Table("name", "speech LLM", "ASR", "LLM the study used", "same backbone", "note")
    for p in MATCHED_PAIRS:
        same = "-" if p.backbone_equal is None else ("yes" if p.backbone_equal else "[red]NO[/]")
        table.add_row(p.name, p.speech_llm or "-", p.asr, p.llm, same, p.note)
    Console(width=240).print(table)
    console.print("`--llm self:SPEECH_MODEL` always runs the speech LLM's own backbone: the exactly matched cascade.")


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

    from cascades.compare import compare_files
    from cascades.plots import write_plots
    from cascades.report import coverage_lines, format_snr, format_task, table_rows, write_report

    report = compare_files(preds, n_resamples=resamples, seed=seed, accuracy_only=accuracy_only)
    plots = write_plots(report, out)
    written = write_report(report, out, plots)
    for w in report.warnings:
        note(f"warning: {w}", "yellow")
    for line in coverage_lines(report):
        note(f"left out: {line}", "yellow")
    table = Table(title="Agreement per system pair, task and SNR")
    for col in ("system pair", "task", "snr", "n", "acc A", "acc B", "kappa [95% CI]", "agreement", "error overlap",
                "McNemar p", "q"):
        table.add_column(col, justify="left" if col in ("system pair", "task") else "right")
    for row in table_rows(report):
        table.add_row(*map(escape, row))
    wide().print(table)
    for c in report.comparisons:
        if c.kappa_undefined_reason or c.note:
            why = "; ".join(x for x in (c.kappa_undefined_reason, c.note) if x)
            note(f"{c.system_a} vs {c.system_b}, {format_task(c.task)}, {format_snr(c.snr_db)}: {why}")
    paths("report", written["markdown"], written["json"])
    for p in plots:
        paths("plot", p)
