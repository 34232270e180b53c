"""ASR -> LLM cascades with matched backbones.

The ASR stage is Whisper (through the `whisper` adapter: its processor, batched, English
transcription forced, long audio in 30 s windows). The LLM stage is a causal LM checkpoint,
or `self:SPEECH_MODEL`: the speech LLM's own decoder run on text, which is the exactly
matched backbone. Transcripts can also come from the manifest (`gold`, the oracle cascade)
or from another manifest (e.g. a logit-lens layer's text: the implicit cascade).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from interp.audio import load_audio
from interp.errors import InterpError


@dataclass(frozen=True)
class MatchedPair:
    """A speech LLM and the cascade that shares its LLM backbone, as in the study."""

    name: str
    speech_llm: str
    asr: str
    llm: str
    note: str = ""


MATCHED_PAIRS = (
    MatchedPair("qwen2-audio", "Qwen/Qwen2-Audio-7B-Instruct", "openai/whisper-large-v3", "Qwen/Qwen2-7B-Instruct"),
    MatchedPair("ultravox", "fixie-ai/ultravox-v0_6-llama-3_1-8b", "openai/whisper-large-v3",
                "meta-llama/Llama-3.1-8B-Instruct", "Llama is frozen in Ultravox: self: is the same weights"),
    MatchedPair("phi4-mm", "microsoft/Phi-4-multimodal-instruct", "openai/whisper-large-v3",
                "microsoft/Phi-4-mini-instruct"),
    MatchedPair("cascade-s", "", "openai/whisper-large-v3", "Qwen/Qwen2.5-7B-Instruct", "general strong cascade"),
    MatchedPair("cascade-w", "", "openai/whisper-small", "Qwen/Qwen2.5-7B-Instruct", "general weak cascade"),
)


def transcribe(asr_path: str | Path, rows: Sequence[dict], batch_size: int = 8, device: str = "cpu",
               on_items_done: Callable[[int], None] | None = None) -> dict[str, str]:
    """Whisper transcripts of every item's audio, keyed by id."""
    from interp.models import detect_family, load_model

    cls = detect_family(asr_path)
    if cls.family != "whisper":
        raise InterpError(f"--asr {asr_path} is a {cls.family} checkpoint, not Whisper; give a local Whisper checkpoint folder")
    whisper = load_model(asr_path, device=device)
    out: dict[str, str] = {}
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        texts = whisper.transcribe([load_audio(r["audio"], whisper.sampling_rate) for r in chunk], batch_size=batch_size)
        out.update({str(r["id"]): t.strip() for r, t in zip(chunk, texts)})
        if on_items_done:
            on_items_done(len(chunk))
    return out


def gold_transcripts(rows: Sequence[dict]) -> dict[str, str]:
    missing = [r["id"] for r in rows if not r.get("transcript")]
    if missing:
        raise InterpError(f"--transcripts gold needs a 'transcript' for every item; '{missing[0]}' has none")
    return {str(r["id"]): str(r["transcript"]) for r in rows}


def transcripts_from_manifest(path: str | Path, rows: Sequence[dict]) -> dict[str, str]:
    """Transcripts taken from another manifest (matched on id), e.g. `interp lens --emit-manifest`."""
    from interp.manifest import read_manifest

    other = {r["id"]: r.get("transcript") for r in read_manifest(path, require_audio=False)}
    missing = [r["id"] for r in rows if other.get(str(r["id"])) is None]
    if missing:
        raise InterpError(f"{path} has no transcript for item '{missing[0]}' ({len(missing)} missing); "
                          f"give a manifest covering every item")
    return {str(r["id"]): str(other[str(r["id"])]) for r in rows}
