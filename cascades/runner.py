"""Behavioural runs: answer items with a speech LLM (audio + instruction) or with a text LLM
(transcript + the same instruction), parse and score each answer, and keep predictions.

Both sides use the task's prompt templates, parser and scorer from `tasks`, the same greedy
decoding (`interp.decoding.GREEDY`, overriding whatever a checkpoint's generation_config ships),
and write one JSON line per item:
`id, task, system, snr_db, output, prediction, label, correct, n_generated_tokens, seconds,
decoding` (cascades add `transcript`), where `decoding` is the decoding that actually ran,
model dtype included. Speech runs go through `interp.run`, so interventions (erasure, ablation,
steering) apply to a behavioural run with no second code path. A text LLM is always prompted in
its own chat format (its tokenizer's chat template, or mistral-common's instruct format for a
tekken tokenizer); a tokenizer with neither is an error unless a raw prompt is asked for.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from interp.audio import load_audio
from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.progress import Progress, stage

if TYPE_CHECKING:
    from cascades.textllm import TextLLM


def _task(row: dict):
    from tasks import get_task

    name = row.get("task")
    if not name:
        raise InterpError(f"item '{row['id']}' has no 'task'; behavioural runs need the task of every item")
    return get_task(name)


def _prediction(row: dict, system: str, output: str, n_tokens: int, seconds: float, **extra) -> dict:
    task = _task(row)
    pred = task.parse(output, row)
    label = row.get("label")
    if task.kind == "open":
        label = label if label is not None else (row.get("answers") or [None])[0]
    return {"id": str(row["id"]), "task": task.name, "system": system, "snr_db": row.get("snr_db"),
            "output": output, "prediction": pred, "label": label, "correct": bool(task.is_correct(pred, row)),
            "n_generated_tokens": int(n_tokens), "seconds": round(seconds, 4), **extra}


def count_new_tokens(ids: torch.Tensor, stop_ids: set[int]) -> list[int]:
    counts = []
    for row in ids.tolist():
        n = 0
        for t in row:
            n += 1
            if t in stop_ids:
                break
        counts.append(n)
    return counts


def stop_ids(tokenizer, model) -> set[int]:
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    for e in (eos if isinstance(eos, (list, tuple)) else [eos]):
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def answer_speech(adapter: SpeechLM, rows: Sequence[dict], *, system: str, interventions=(), batch_size: int = 8,
                  max_new_tokens: int = 32, on_batch: Callable[[list[dict]], None] | None = None,
                  progress: Progress | None = None) -> list[dict]:
    """Greedy answers of a speech LLM to each item's speech prompt, parsed and scored; `on_batch`
    receives each batch's predictions as they are made (e.g. `PredictionsFile.add`)."""
    from interp.forward import run

    advance = stage(progress, f"answering: {system}", len(rows))
    tok = adapter.tokenizer
    stop = stop_ids(tok, adapter.model)
    batch_size = adapter.batch_size(batch_size)
    preds = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        t0 = time.perf_counter()
        batch = adapter.prepare([load_audio(r["audio"], adapter.sampling_rate) for r in chunk],
                                [_task(r).speech_prompt(r) for r in chunk], padding_side="left")
        result = run(adapter, batch, interventions, generate=True, max_new_tokens=max_new_tokens)
        seconds = (time.perf_counter() - t0) / len(chunk)
        texts = tok.batch_decode(result.new_tokens, skip_special_tokens=True)
        out = [_prediction(r, system, t.strip(), n, seconds, decoding=result.decoding)
               for r, t, n in zip(chunk, texts, count_new_tokens(result.new_tokens, stop))]
        preds.extend(out)
        if on_batch:
            on_batch(out)
        advance(len(chunk))
    return preds


def answer_text(llm: "TextLLM", rows: Sequence[dict], transcripts: dict[str, str], *, system: str, batch_size: int = 8,
                max_new_tokens: int = 32, on_batch: Callable[[list[dict]], None] | None = None,
                extra: dict | None = None, progress: Progress | None = None) -> list[dict]:
    """Greedy answers of a text LLM to each item's text prompt built on its transcript
    (`extra`: fields added to every prediction, e.g. what the cascade is matched to)."""
    advance = stage(progress, f"answering: {system}", len(rows))
    preds = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        t0 = time.perf_counter()
        answers, decoding = llm.generate([_task(r).text_prompt(r, transcripts[str(r["id"])]) for r in chunk],
                                         max_new_tokens)
        seconds = (time.perf_counter() - t0) / len(chunk)
        out = [_prediction(r, system, text, n, seconds, transcript=transcripts[str(r["id"])], decoding=decoding,
                           **(extra or {}))
               for r, (text, n) in zip(chunk, answers)]
        preds.extend(out)
        if on_batch:
            on_batch(out)
        advance(len(chunk))
    return preds


def speech_input_fingerprints(rows: Sequence[dict]) -> dict[tuple, str]:
    """Each item's input to a speech run, keyed by (id, snr_db): its audio and its task's speech prompt."""
    from interp.fingerprint import input_fingerprint

    return {(str(r["id"]), r.get("snr_db")): input_fingerprint(r["audio"], _task(r).speech_prompt(r)) for r in rows}
