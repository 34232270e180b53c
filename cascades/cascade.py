"""ASR -> LLM cascades with matched backbones.

The ASR stage is Whisper (through the `whisper` adapter: its processor, batched, English
transcription forced, long audio in 30 s windows). The LLM stage is a causal LM checkpoint,
or `self:SPEECH_MODEL`: the speech LLM's own decoder run on text (with any speech-only change,
such as Phi-4-MM's speech LoRA, switched off), which is the exactly matched backbone. A cascade
is labelled matched to a speech LLM only when its LLM's backbone config (width, depth, heads,
vocabulary) equals the speech LLM's (`check_matched`): Qwen2-Audio's LLM, for one, is not
Qwen2-7B-Instruct, so the study's "matched" Qwen2 cascade is not. Transcripts can also come
from the manifest (`gold`, the oracle cascade) or from another manifest (e.g. a logit-lens
layer's text: the implicit cascade).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from interp.audio import load_audio
from interp.errors import InterpError


@dataclass(frozen=True)
class MatchedPair:
    """A speech LLM and the cascade the study matched with it."""

    name: str
    speech_llm: str
    asr: str
    llm: str  #: the text LLM the study used
    backbone_equal: bool | None = None  #: whether `llm` has the speech LLM's backbone config (None: not a pair)
    note: str = ""


MATCHED_PAIRS = (
    MatchedPair("qwen2-audio", "Qwen/Qwen2-Audio-7B-Instruct", "openai/whisper-large-v3", "Qwen/Qwen2-7B-Instruct",
                False, "NOT its backbone: Qwen2-Audio's LLM is 4096 wide, 32 layers, vocab 156032; Qwen2-7B-Instruct "
                "is 3584, 28, 152064. Use --llm self:QWEN2_AUDIO_PATH for the matched cascade"),
    MatchedPair("ultravox", "fixie-ai/ultravox-v0_6-llama-3_1-8b", "openai/whisper-large-v3",
                "meta-llama/Llama-3.1-8B-Instruct", True, "Llama is frozen in Ultravox: self: is the same weights"),
    MatchedPair("phi4-mm", "microsoft/Phi-4-multimodal-instruct", "openai/whisper-large-v3",
                "microsoft/Phi-4-mini-instruct", True,
                "same config; the base decoder is Phi-4-mini (frozen under the LoRAs): self: runs it with the speech "
                "LoRA off"),
    MatchedPair("cascade-s", "", "openai/whisper-large-v3", "Qwen/Qwen2.5-7B-Instruct", None, "general strong cascade"),
    MatchedPair("cascade-w", "", "openai/whisper-small", "Qwen/Qwen2.5-7B-Instruct", None, "general weak cascade"),
)

#: config fields that fix a decoder's shape; equal on both sides of a matched pair
BACKBONE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "intermediate_size", "vocab_size")


def backbone_config(config) -> dict:
    """The shape of a model's text decoder (its text sub-config for a speech LLM)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {k: getattr(text, k, None) for k in BACKBONE_FIELDS}


def speech_backbone_config(path: str | Path) -> dict:
    """Backbone shape of a speech-LLM checkpoint folder, read from its config alone."""
    from transformers import AutoConfig

    from interp.models import detect_family

    detect_family(path)  # a clear error for a folder that is no supported speech LLM
    try:
        return backbone_config(AutoConfig.from_pretrained(str(path)))
    except (OSError, ValueError, KeyError) as e:
        raise InterpError(f"cannot read the LLM backbone config of {path}: {str(e).splitlines()[0]}") from None


def check_matched(speech: dict, llm: dict, speech_name: str, llm_name: str) -> None:
    """Refuse to call a cascade matched when its LLM's backbone differs from the speech LLM's."""
    diff = [f"{k} {llm.get(k)} vs {speech.get(k)}" for k in BACKBONE_FIELDS if llm.get(k) != speech.get(k)]
    if diff:
        raise InterpError(f"{llm_name} is not {speech_name}'s backbone ({'; '.join(diff)}); a matched cascade needs "
                          f"the same LLM: use --llm self:{speech_name}")


def transcribe(asr_path: str | Path, rows: Sequence[dict], batch_size: int = 8, device: str = "cpu",
               on_items_done: Callable[[int], None] | None = None, dtype="auto") -> dict[str, str]:
    """Whisper transcripts of every item's audio, keyed by id, Whisper run in `dtype`."""
    from interp.models import detect_family, load_model

    cls = detect_family(asr_path)
    if cls.family != "whisper":
        raise InterpError(f"--asr {asr_path} is a {cls.family} checkpoint, not Whisper; give a local Whisper checkpoint folder")
    whisper = load_model(asr_path, dtype=dtype, device=device)
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
