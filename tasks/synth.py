"""Speak a task's items: text rows in, 16 kHz mono WAVs and a manifest out.

Each item is checked (known task, non-empty text, unique id) and the backend, voices and
rates are validated before any file is written; the output folder then fills through a
staging folder, so a failure leaves neither a manifest nor stray audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from interp.errors import InterpError
from interp.progress import Progress
from interp.progress import stage as start_stage
from tasks.task import get_task
from tasks.tts import SAMPLE_RATE, TTSBackend, draw_voices, get_backend


def synthesize(rows: Sequence[dict], out_dir: str | Path, *, task: str | None = None,
               backend: str | TTSBackend = "espeak", voices: Sequence[str] | None = None,
               rates: Sequence[int] | None = None, seed: int = 0, renditions: int = 1,
               progress: Progress | None = None) -> Path:
    """Write out_dir/audio/*.wav and out_dir/manifest.jsonl for `rows`; returns the manifest path.

    Each item is spoken `renditions` times with a (voice, rate) drawn per rendition from
    `voices` x `rates` (ids get a '~vK' suffix when renditions > 1). The spoken text is
    the task's `spoken_text` (for CommonsenseQA, the question and its options) and becomes
    the row's `transcript`.
    """
    from interp.audio import check_waveform, write_wav
    from interp.manifest import write_manifest
    from tasks.outputs import audio_names, staged_output

    if not rows:
        raise InterpError("nothing to synthesise: no items; check the input file and --limit")
    if renditions < 1:
        raise InterpError(f"renditions must be at least 1, got {renditions}")
    tts = get_backend(backend)
    voices = list(voices) if voices else [tts.default_voice]
    rates = [int(r) for r in rates] if rates else [tts.default_rate]
    for rate in rates:
        tts.check_rate(rate)
    for voice in voices:
        tts.check_voice(voice)

    plan = []
    seen: set[str] = set()
    for row in rows:
        name = row.get("task") or task
        if name is None:
            raise InterpError(f"item {row.get('id')} has no 'task'; pass --task")
        text = get_task(name).spoken_text(row)
        for k, voice in enumerate(draw_voices(row["id"], voices, rates, seed, renditions)):
            item_id = row["id"] if renditions == 1 else f"{row['id']}~v{k + 1}"
            if item_id in seen:
                raise InterpError(f"item id {item_id} appears twice; ids must be unique")
            seen.add(item_id)
            plan.append((item_id, row, get_task(name).name, text, voice))

    names = audio_names([p[0] for p in plan])
    out_rows = []
    advance = start_stage(progress, "synthesising", len(plan))
    with staged_output(out_dir) as stage:
        for item_id, row, name, text, voice in plan:
            wav = tts.synthesize(text, voice.name, voice.rate)
            try:
                check_waveform(wav, f"for item {item_id}")
            except InterpError:
                raise InterpError(f"TTS produced no speech for item {item_id} (text {text[:60]!r}); fix or remove its text") from None
            path = stage / "audio" / names[item_id]
            write_wav(path, wav, SAMPLE_RATE)
            out_rows.append({**row, "id": item_id, "audio": str(path), "task": name, "transcript": text,
                             "duration_s": round(wav.size / SAMPLE_RATE, 3), "tts_backend": getattr(tts, "name", str(backend)),
                             "tts_voice": voice.name, "tts_rate": voice.rate,
                             **({"source_id": row["id"]} if renditions > 1 else {})})
            advance(1)
        write_manifest(stage / "manifest.jsonl", out_rows, staged=(stage, out_dir))
    return Path(out_dir) / "manifest.jsonl"


def speak(text: str, voice: str | None = None, rate: int | None = None, backend: str = "espeak") -> np.ndarray:
    """One text as a 16 kHz mono float32 waveform (a convenience over `get_backend(...).synthesize`)."""
    return get_backend(backend).synthesize(text, voice, rate)
