"""Text LLMs answering prompts: a causal-LM checkpoint, or a speech LLM's own backbone on text.

A text LLM is always prompted in its own chat format (its tokenizer's chat template, or
mistral-common's instruct format for a tekken tokenizer); a tokenizer with neither is an error
unless a raw prompt is asked for. Decoding is the same greedy decoding as the speech side
(`interp.decoding.GREEDY`), and `generate` returns the settings that ran.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch

from interp.errors import InterpError
from interp.models.base import SpeechLM

def check_text_llm(path: str | Path) -> None:
    """Refuse an LLM path that is not a causal text LM checkpoint, before anything loads."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InterpError(f"LLM path {path} is not a checkpoint folder (no config.json); give a local causal-LM checkpoint or self:SPEECH_MODEL")
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8-sig")).get("model_type", "")
    except (ValueError, AttributeError):
        raise InterpError(f"{path / 'config.json'} is not valid JSON; the checkpoint is damaged") from None
    from interp.models import families

    for cls in families().values():
        if model_type in cls.model_types:
            if cls.family == "whisper":
                raise InterpError(f"--llm {path} is a Whisper (speech recognition) checkpoint, not a text LLM; give it "
                                  "as --asr, and a causal-LM checkpoint or self:SPEECH_MODEL as --llm")
            raise InterpError(f"--llm {path} is a {cls.family} speech LLM; to run its own language model on text, "
                              f"pass --llm self:{path}")


@dataclass
class TextLLM:
    """A text LLM answering prompts: a causal LM checkpoint, or a speech LLM's own backbone."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    raw_prompt: bool = False  #: send the bare text when the tokenizer has no chat format
    #: context the model runs in (a speech LLM's `text_only`: e.g. Phi-4-MM's speech LoRA off)
    context: Callable[[], ContextManager] = field(default=contextlib.nullcontext)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", dtype="auto", raw_prompt: bool = False) -> "TextLLM":
        """Load a causal-LM folder in `dtype` (`interp.models.base.resolve_dtype`'s rule for "auto")."""
        from interp.models.base import resolve_dtype

        path = Path(path)
        check_text_llm(path)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # transformers will build an empty tokenizer for a folder without tokenizer files
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                           "tekken.json")
        if not any((path / f).is_file() for f in tokenizer_files):
            raise InterpError(f"LLM checkpoint {path} has no tokenizer files; save its tokenizer into the folder")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, TypeError):
            raise InterpError(f"LLM checkpoint {path} has no tokenizer files; save its tokenizer into the folder") from None
        except ImportError as e:
            raise InterpError(f"LLM checkpoint {path} needs {str(e).splitlines()[0]}; "
                              "for a tekken.json tokenizer: pip install 'interp[voxtral]'") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype, device)).eval().to(device)
        except (OSError, ValueError) as e:
            raise InterpError(f"cannot load {path} as a causal LM: {str(e).splitlines()[0]}") from None
        return cls(model, tokenizer, path.name, raw_prompt=raw_prompt)

    @classmethod
    def from_speech_model(cls, adapter: SpeechLM, raw_prompt: bool = False) -> "TextLLM":
        """The speech LLM run on text only: its language model is the exactly matched backbone."""
        return cls(adapter.model, adapter.tokenizer, f"self:{Path(adapter.path).name}", raw_prompt=raw_prompt,
                   context=adapter.text_only)

    @property
    def chat_format(self) -> str | None:
        """"chat_template", "mistral-common", or None when the tokenizer knows no chat format."""
        if type(self.tokenizer).__name__ == "MistralCommonBackend":
            return "mistral-common"  # builds Mistral's instruct format itself, from tekken.json
        if getattr(self.tokenizer, "chat_template", None):
            return "chat_template"
        return None

    def prompt(self, text: str) -> str:
        """The prompt string sent for `text` (for display; `encode` builds the ids)."""
        if self.chat_format is None:
            self.check_chat_format()
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=False)

    def check_chat_format(self) -> None:
        """Stop unless the prompt will be in the model's chat format or a raw prompt was asked for."""
        if self.chat_format is None and not self.raw_prompt:
            raise InterpError(f"the tokenizer of {self.name} has no chat format (no chat_template, not mistral-common); "
                              "an instruct model prompted with a raw string answers differently. Add its chat template "
                              "to the checkpoint (or install mistral-common for tekken.json), or pass --raw-prompt "
                              "for a base model")

    def encode(self, texts: Sequence[str]) -> dict:
        """Left-padded input ids of the prompts, built in the model's own chat format."""
        tok = self.tokenizer
        tok.padding_side = "left"
        if self.chat_format is None:
            self.check_chat_format()
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            return dict(tok(list(texts), return_tensors="pt", padding=True))
        if self.chat_format == "chat_template" and tok.pad_token is None:
            tok.pad_token = tok.eos_token
        conversations = [[{"role": "user", "content": t}] for t in texts]
        return dict(tok.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            padding=True, return_tensors="pt"))

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> tuple[list[tuple[str, int]], dict]:
        """Greedy answers (text, generated token count) and the decoding settings that ran."""
        from cascades.runner import count_new_tokens, stop_ids
        from interp.decoding import decoding_settings, greedy_kwargs

        tok = self.tokenizer
        enc = self.encode(prompts)
        enc = {k: v.to(next(self.model.parameters()).device) for k, v in enc.items()}
        kwargs = greedy_kwargs(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        with torch.no_grad(), self.context():
            seq = self.model.generate(**enc, **kwargs)
        new = seq[:, enc["input_ids"].shape[1]:].cpu()
        texts = tok.batch_decode(new, skip_special_tokens=True)
        answers = [(t.strip(), n) for t, n in zip(texts, count_new_tokens(new, stop_ids(tok, self.model)))]
        return answers, decoding_settings(self.model, kwargs)
