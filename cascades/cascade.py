"""ASR -> LLM cascades with matched backbones.

The ASR stage is Whisper (`cascades.asr`: English transcription, long audio in 30 s windows). The LLM stage is a causal LM checkpoint,
or `self:SPEECH_MODEL`: the speech LLM's own decoder run on text (with any speech-only change,
such as Phi-4-MM's speech LoRA, switched off), which is the exactly matched backbone. A cascade
is labelled matched to a speech LLM only when its LLM's backbone config (width, depth, heads,
vocabulary) equals the speech LLM's (`check_matched`): Qwen2-Audio's LLM, for one, is not
Qwen2-7B-Instruct, so the study's "matched" Qwen2 cascade is not. Transcripts can also come
from the manifest (`gold`, the oracle cascade) or from another manifest (e.g. a logit-lens
layer's text: the implicit cascade).

`Cascade` is one cascade run as the command line describes it: its transcripts' source, its
LLM, the fingerprint that names the system in predictions files, and each item's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from interp.errors import InterpError
from interp.progress import Progress


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


@dataclass
class Cascade:
    """One ASR -> LLM cascade over a manifest, checked before anything loads (`Cascade.plan`).

    `transcripts` is None (Whisper at `asr` transcribes), "gold" (the manifest's transcripts)
    or the path of a manifest whose transcripts are read (the implicit cascade of a lens layer).
    """

    rows: list[dict]
    llm: str  #: a causal-LM folder, or "self:SPEECH_MODEL"
    asr: Path | None
    transcripts: str | None
    given: dict[str, str] | None  #: id -> transcript, when not from ASR
    source: str  #: what the transcripts come from, as named in the system name
    matched_to: Path | None = None

    @property
    def llm_path(self) -> Path:
        return Path(self.llm[5:]) if self.is_self else Path(self.llm)

    @property
    def is_self(self) -> bool:
        return self.llm.startswith("self:")

    @classmethod
    def plan(cls, rows: Sequence[dict], llm: str, asr: str | Path | None = None, transcripts: str | None = None,
             matched_to: str | Path | None = None) -> "Cascade":
        """Check the arguments and read given transcripts; every bad-input error is raised here."""
        from cascades.textllm import check_text_llm
        from interp.models import detect_family

        if transcripts is None and asr is None:
            raise InterpError("give --asr WHISPER_PATH, or --transcripts gold|MANIFEST to skip ASR")
        plan = cls(list(rows), llm, Path(asr) if asr is not None else None, transcripts, None, "",
                   Path(matched_to) if matched_to is not None else None)
        if plan.is_self:
            if detect_family(plan.llm_path).family == "whisper":
                raise InterpError(f"--llm {llm} is Whisper, which has no text LLM to answer with; give a speech LLM "
                                  "after self:, or a causal-LM checkpoint")
        else:
            check_text_llm(plan.llm_path)
        if transcripts is None and detect_family(asr).family != "whisper":
            raise InterpError(f"--asr {asr} is a {detect_family(asr).family} checkpoint, not Whisper; give a local "
                              "Whisper checkpoint folder")
        if transcripts == "gold":
            plan.given, plan.source = gold_transcripts(rows), "gold"
        elif transcripts:
            plan.given, plan.source = transcripts_from_manifest(transcripts, rows), Path(transcripts).stem
        else:
            plan.source = plan.asr.name
        return plan

    def fingerprint(self) -> str:
        """The system's identity: its ASR (or its transcripts' source) and its LLM."""
        import hashlib
        import json

        from interp.fingerprint import model_fingerprint

        asr = (model_fingerprint(self.asr) if self.given is None
               else f"transcripts:{self.transcripts if self.transcripts == 'gold' else 'file'}")
        llm = ("self:" if self.is_self else "") + model_fingerprint(self.llm_path)
        return hashlib.sha256(json.dumps([asr, llm]).encode()).hexdigest()[:16]

    def input_fingerprints(self) -> dict[tuple, str]:
        """Each item's input: its audio for ASR, else the transcript the LLM reads, with the task's text prompt."""
        from interp.fingerprint import input_fingerprint
        from tasks import get_task

        return {(str(r["id"]), r.get("snr_db")): input_fingerprint(
            r.get("audio") if self.given is None else None,
            get_task(r["task"]).text_prompt(r, "" if self.given is None else self.given[str(r["id"])]))
            for r in self.rows}

    def load_llm(self, device: str = "auto", dtype="auto", raw_prompt: bool = False, audio_model=None,
                 text_model=None):
        """(the text LLM, fields every prediction records): `self:` runs the speech LLM's own
        decoder; a matched cascade's backbone is checked against its speech LLM's."""
        from cascades.textllm import TextLLM
        from interp.models import load_model
        from interp.models.base import resolve_device, resolve_dtype

        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        extra = {}
        if self.is_self:
            speech = load_model(self.llm_path, dtype=dtype, device=device, audio_model=audio_model,
                                text_model=text_model)
            text_llm = TextLLM.from_speech_model(speech, raw_prompt=raw_prompt)
            if self.matched_to is not None and self.matched_to.resolve() != self.llm_path.resolve():
                check_matched(speech_backbone_config(self.matched_to), speech_backbone_config(self.llm_path),
                              self.matched_to.name, self.llm)
            extra["matched_to"] = (self.matched_to or self.llm_path).name
        else:
            speech_config = speech_backbone_config(self.matched_to) if self.matched_to is not None else None
            text_llm = TextLLM.from_path(self.llm, device=device, dtype=dtype, raw_prompt=raw_prompt)
            if speech_config is not None:
                check_matched(speech_config, backbone_config(text_llm.model.config), self.matched_to.name,
                              text_llm.name)
                extra["matched_to"] = self.matched_to.name
        text_llm.check_chat_format()  # no chat format and no --raw-prompt: stop before any work
        return text_llm, extra

    def texts(self, rows: Sequence[dict], batch_size: int = 8, device: str = "auto", dtype="auto",
              progress: Progress | None = None) -> tuple[dict[str, str], dict]:
        """(id -> transcript the LLM reads, what to record): given transcripts, or Whisper's, with
        the ASR dtype and its word error rate against the manifest's transcripts where it has them."""
        from cascades.asr import asr_word_error_rate, transcribe
        from interp.models.base import dtype_name, resolve_device, resolve_dtype

        if self.given is not None:
            return {str(r["id"]): self.given[str(r["id"])] for r in rows}, {}
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        texts = transcribe(self.asr, rows, batch_size=batch_size, device=device, dtype=dtype, progress=progress)
        wer, n = asr_word_error_rate(rows, texts)
        return texts, {"asr_dtype": dtype_name(dtype), "wer": wer, "wer_items": n}

    def system_name(self, llm_name: str) -> str:
        return f"cascade:{self.source}->{llm_name}"
