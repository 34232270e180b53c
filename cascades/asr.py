"""Speech recognition with Whisper: the ASR stage of cascades, and its word error rate.

English transcription through the Whisper adapter (`interp.models.whisper`): the checkpoint's
own prompt and `generate_kwargs` (English forced on multilingual checkpoints, nothing forced on
English-only `*.en` ones, whose `generate` refuses a language); audio longer than 30 s is cut
into consecutive 30 s windows whose transcripts are joined with spaces; windows go through in
batches. Decoding is the checkpoint's own `generate`, as a cascade's ASR stage runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from interp.audio import load_audio
from interp.errors import InterpError
from interp.progress import Progress, stage


def transcribe_waveforms(whisper, waveforms: Sequence[np.ndarray], batch_size: int = 8,
                         max_new_tokens: int | None = None) -> list[str]:
    """English transcripts of 16 kHz mono waveforms with a loaded Whisper adapter, one per input."""
    window = int(whisper.max_audio_seconds * whisper.sampling_rate)
    windows, owner = [], []
    for i, w in enumerate(waveforms):
        w = np.asarray(w, dtype=np.float32)
        for start in range(0, max(len(w), 1), window):
            windows.append(w[start:start + window])
            owner.append(i)
    texts: list[list[str]] = [[] for _ in waveforms]
    kwargs = whisper.generate_kwargs()
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    for b in range(0, len(windows), batch_size):
        feats = whisper.features(windows[b:b + batch_size]).to(whisper.device, whisper.dtype)
        with torch.no_grad():
            out = whisper.model.generate(feats, **kwargs)
        out = getattr(out, "sequences", out)
        for i, text in zip(owner[b:b + batch_size], whisper.tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[i].append(text.strip())
    return [" ".join(t for t in parts if t) for parts in texts]


def load_asr(asr_path: str | Path, device: str = "cpu", dtype="auto"):
    """The Whisper adapter of `asr_path`; refuses a checkpoint of another family."""
    from interp.models import detect_family, load_model

    cls = detect_family(asr_path)
    if cls.family != "whisper":
        raise InterpError(f"--asr {asr_path} is a {cls.family} checkpoint, not Whisper; give a local Whisper checkpoint folder")
    return load_model(asr_path, dtype=dtype, device=device)


def transcribe(asr_path: str | Path, rows: Sequence[dict], batch_size: int = 8, device: str = "cpu",
               dtype="auto", progress: Progress | None = None) -> dict[str, str]:
    """Whisper transcripts of every item's audio, keyed by id, Whisper run in `dtype`."""
    whisper = load_asr(asr_path, device, dtype)
    advance = stage(progress, "asr", len(rows))
    out: dict[str, str] = {}
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        texts = transcribe_waveforms(whisper, [load_audio(r["audio"], whisper.sampling_rate) for r in chunk],
                                     batch_size=batch_size)
        out.update({str(r["id"]): t.strip() for r, t in zip(chunk, texts)})
        advance(len(chunk))
    return out


def asr_word_error_rate(rows: Sequence[dict], transcripts: dict[str, str]) -> tuple[float | None, int]:
    """(WER of `transcripts` against the manifest's own transcripts, items scored); None when
    no item has a transcript."""
    from interp.text import word_error_rate

    refs = [(str(r["transcript"]), transcripts[str(r["id"])]) for r in rows if r.get("transcript")]
    if not refs:
        return None, 0
    return word_error_rate([a for a, _ in refs], [b for _, b in refs]), len(refs)
