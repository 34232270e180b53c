"""The adapter contract: what the toolkit needs to know about one speech-LLM family.

An adapter is thin. It loads a checkpoint from a local path with the family's own classes,
turns (waveform, prompt) pairs into model inputs with the family's own processor, and
declares where things are: the decoder layers whose outputs form the residual stream, the
final norm, the unembedding, the audio encoder's layers, and which residual positions hold
audio and which seconds of the waveform each of them covers. Everything else (tracing,
stores, probes, lens, erasure) is written once, against this contract.

Module locations are dotted attribute paths from the loaded model (as in TransformerLens'
architecture adapters), so the same path serves the raw module (`model.get_submodule`) and
its nnsight envoy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from interp.errors import InterpError


@dataclass
class AudioSpan:
    """Where one item's audio sits in the residual stream and what time it covers."""

    positions: np.ndarray  #: int64 sequence positions (in the padded batch) holding audio
    time_start: np.ndarray  #: float64 seconds at which each audio position's window starts
    time_end: np.ndarray  #: float64 seconds at which it ends (clipped to the audio's end)
    #: audio placeholder positions past the audio's end (a fixed window's padding): neither audio nor text
    padding: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class Batch:
    """Model inputs for a batch plus the bookkeeping needed to read positions back."""

    inputs: dict[str, Any]  #: keyword arguments of the model's forward
    token_ids: torch.Tensor  #: (batch, seq) id at each position; audio positions hold the placeholder id
    attention_mask: torch.Tensor  #: (batch, seq) 1 for real positions, 0 for padding
    audio: list[AudioSpan]  #: one per item
    durations: list[float]  #: seconds of audio per item (before any truncation)
    truncated: list[bool] = field(default_factory=list)  #: audio cut at the encoder window

    def __len__(self) -> int:
        return len(self.audio)

    def to(self, device, dtype=None) -> "Batch":
        def move(v):
            if isinstance(v, torch.Tensor):
                if dtype is not None and v.is_floating_point():
                    return v.to(device=device, dtype=dtype)
                return v.to(device)
            return v

        self.inputs = {k: move(v) for k, v in self.inputs.items()}
        return self


def frame_times(n: int, seconds_per_position: float, duration: float, offset: float = 0.0):
    """Start/end seconds of `n` consecutive windows of `seconds_per_position`, clipped to `duration`."""
    start = offset + np.arange(n, dtype=np.float64) * seconds_per_position
    end = np.minimum(start + seconds_per_position, duration)
    return start, np.maximum(end, start)


class SpeechLM:
    """Base class of model-family adapters. Subclasses set the class attributes and `prepare`."""

    family: ClassVar[str]  #: short name used on the command line
    description: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()  #: config.model_type values this adapter serves
    #: model_type values of other layouts of the same model that cannot load -> one-line fix ({path} filled in)
    unsupported_model_types: ClassVar[dict[str, str]] = {}
    layers_path: ClassVar[str]  #: decoder blocks (an nn.ModuleList)
    norm_path: ClassVar[str]  #: final norm applied before the unembedding
    unembed_path: ClassVar[str]  #: the unembedding (lm_head)
    embed_path: ClassVar[str]  #: the token embedding of the decoder
    encoder_layers_path: ClassVar[str | None] = None  #: audio encoder blocks
    attn_name: ClassVar[str | None] = "self_attn"  #: a decoder block's self-attention, relative to the block
    mlp_name: ClassVar[str | None] = "mlp"  #: a decoder block's MLP, relative to the block
    projector_path: ClassVar[str | None] = None  #: the audio projector (interp.sites: projector.hook_out)
    encoder_seconds_per_frame: ClassVar[float] = 0.02
    seconds_per_audio_position: ClassVar[float]  #: audio time per decoder audio position
    sampling_rate: ClassVar[int] = 16000
    max_audio_seconds: ClassVar[float | None] = 30.0  #: the family's longest audio; longer is truncated (with a warning)
    trust_remote_code: ClassVar[bool] = False
    #: its checkpoints may name base weights by hub id; `load` then takes `audio_model` / `text_model` folders
    names_base_models: ClassVar[bool] = False

    max_batch_size: ClassVar[int | None] = None  #: set where padding changes a family's activations
    audio_in_decoder: ClassVar[bool] = True  #: False where audio reaches the decoder only by cross-attention

    def batch_size(self, requested: int) -> int:
        """The batch size to use: `requested`, capped where padded batches are not exact."""
        return min(requested, self.max_batch_size) if self.max_batch_size else requested

    def __init__(self, model: torch.nn.Module, processor: Any, path: str | Path):
        self.model = model
        self.processor = processor
        self.path = str(path)

    # ---- loading -------------------------------------------------------------------

    @classmethod
    def model_class(cls):
        raise NotImplementedError

    @classmethod
    def processor_class(cls):
        from transformers import AutoProcessor

        return AutoProcessor

    @classmethod
    def load(cls, path: str | Path, dtype: str | torch.dtype | None = None, device: str = "cpu", device_map=None,
             max_memory: dict | None = None):
        """Load model and processor from a local checkpoint folder: onto `device`, or spread over
        devices by `device_map` (Accelerate's: "auto", "balanced", "sequential" or a dict), each
        device holding at most its `max_memory` entry."""
        torch_dtype = resolve_dtype(dtype, device)
        kwargs = dict(dtype=torch_dtype)
        if cls.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if device_map is not None:
            kwargs["device_map"] = device_map
            if max_memory:
                kwargs["max_memory"] = max_memory
        model = cls.model_class().from_pretrained(str(path), **kwargs).eval()
        if device_map is None:
            model.to(device)
        proc_kwargs = {"trust_remote_code": True} if cls.trust_remote_code else {}
        processor = cls.processor_class().from_pretrained(str(path), **proc_kwargs)
        return cls(model, processor, path)

    # ---- where things are ------------------------------------------------------------

    def module(self, path: str) -> torch.nn.Module:
        return self.model.get_submodule(path)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.module(self.layers_path)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def final_norm(self) -> torch.nn.Module:
        return self.module(self.norm_path)

    @property
    def unembed(self) -> torch.nn.Module:
        return self.module(self.unembed_path)

    @property
    def encoder_layers(self) -> torch.nn.ModuleList:
        if self.encoder_layers_path is None:
            raise InterpError(f"{self.family} exposes no audio encoder layers; use --component decoder")
        return self.module(self.encoder_layers_path)

    @property
    def d_model(self) -> int:
        return int(self.unembed.in_features)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @cached_property
    def nnsight(self):
        """The model wrapped for nnsight tracing (made once, shared by all tools)."""
        from nnsight import NNsight

        return NNsight(self.model)

    def envoy(self, path: str):
        """The nnsight envoy of the module at a dotted path (nnsight's own lookup)."""
        return self.nnsight.get(path)

    def fingerprint(self) -> str:
        """The checkpoint's identity: its config without runtime keys (dtype, attention
        implementation) plus a sampled hash of its identifying weights as stored on disk
        (`interp.fingerprint`). The same folder run in another dtype has the same fingerprint;
        the dtype is recorded apart (`runtime_dtype`)."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        from interp.fingerprint import model_fingerprint

        return model_fingerprint(self.path, self.model)

    @property
    def runtime_dtype(self) -> str:
        """The dtype the model runs in, as a name ('bfloat16', 'float32', ...)."""
        return str(self.dtype).replace("torch.", "")

    def text_only(self):
        """Context in which the decoder runs as the text LLM it is matched with (a cascade's
        backbone); families whose speech path changes the decoder (a speech LoRA) undo it here."""
        return contextlib.nullcontext()

    # ---- inputs ----------------------------------------------------------------------

    def prompt_text(self, instruction: str) -> str:
        """The full prompt string holding one audio placeholder and the instruction."""
        conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def prepare(self, waveforms: Sequence[np.ndarray], instructions: Sequence[str], padding_side: str = "right") -> Batch:
        """Turn 16 kHz mono waveforms and instructions into a Batch on the model's device."""
        raise NotImplementedError

    def generate_kwargs(self) -> dict:
        """Keyword arguments that every `generate` call of this family needs (none by default)."""
        return {}

    def generated(self, tokens: torch.Tensor, batch: Batch, streamed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequences, new tokens) of a generation: prompt + new ids, and the new ids alone, from
        what `generate` returned (`streamed=False`) or what a streamer saw (`streamed=True`: the
        prompt, then one column per step). Decoder-only `generate` returns the prompt and the new
        tokens, the same as its streamer sees."""
        return tokens, tokens[:, batch.token_ids.shape[1]:]

    def encoder_inputs(self, batch: Batch) -> tuple[dict[str, Any], list[AudioSpan]]:
        """Keyword arguments for the audio encoder alone and each item's encoder frames."""
        raise InterpError(f"{self.family} does not support --component encoder yet")

    def truncate(self, waveforms: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[float], list[bool]]:
        durations = [len(w) / self.sampling_rate for w in waveforms]
        if self.max_audio_seconds is None:
            return list(waveforms), durations, [False] * len(waveforms)
        limit = int(self.max_audio_seconds * self.sampling_rate)
        return [w[:limit] for w in waveforms], durations, [len(w) > limit for w in waveforms]

    def describe(self) -> dict:
        return {
            "family": self.family,
            "path": self.path,
            "model_class": type(self.model).__name__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "layers": self.layers_path,
            "final_norm": self.norm_path,
            "unembed": self.unembed_path,
            "encoder_layers": self.encoder_layers_path,
            "seconds_per_audio_position": self.seconds_per_audio_position,
        }


class EncoderProjectorDecoder(SpeechLM):
    """The common native layout (Qwen2-Audio, Voxtral, Audio Flamingo 3): `model.audio_tower`
    (a Whisper-style encoder) -> `model.multi_modal_projector` -> `model.language_model` (the
    decoder) and a top-level `lm_head`; audio embeddings replace placeholder tokens.

    `prepare` is written once here: the family's processor builds the inputs
    (`processor_inputs`), and each item gets as many audio positions as the model's own
    encoder computes from its real mel frames (`_get_feat_extract_output_lengths` of the audio
    tower, over the processor's feature mask `feature_mask_key`)."""

    layers_path = "model.language_model.layers"
    norm_path = "model.language_model.norm"
    unembed_path = "lm_head"
    embed_path = "model.language_model.embed_tokens"
    encoder_layers_path = "model.audio_tower.layers"
    audio_tower_path: ClassVar[str] = "model.audio_tower"
    projector_path = "model.multi_modal_projector"
    encoder_seconds_per_frame = 0.02
    feature_mask_key: ClassVar[str] = "feature_attention_mask"  #: the processor's mask of real mel frames

    def processor_inputs(self, prompts: list[str], waveforms: list[np.ndarray], padding_side: str) -> dict:
        """The family's processor on prompts and float32 waveforms, as PyTorch tensors."""
        raise NotImplementedError

    def audio_lengths(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder frames after the conv, audio positions) per item, from the model's own formula."""
        tower = self.module(self.audio_tower_path)
        return tower._get_feat_extract_output_lengths(inputs[self.feature_mask_key].sum(-1))

    def prepare(self, waveforms, instructions, padding_side: str = "right") -> Batch:
        waveforms, durations, truncated = self.truncate(waveforms)
        inputs = dict(self.processor_inputs([self.prompt_text(t) for t in instructions],
                                            [np.asarray(w, dtype=np.float32) for w in waveforms], padding_side))
        counts = [int(n) for n in self.audio_lengths(inputs)[1]]
        if len(counts) != len(waveforms):
            raise InterpError(f"{self.family}: expected one 30 s window per item, got {len(counts)} for {len(waveforms)}")
        ids = inputs["input_ids"]
        spans = spans_from_mask(ids == self.model.config.audio_token_id, counts, self.seconds_per_audio_position,
                                durations)
        return Batch(inputs, ids, inputs["attention_mask"], spans, durations, truncated).to(self.device, self.dtype)

    def encoder_frames(self, batch: Batch) -> list[AudioSpan]:
        """Each item's encoder frames of real audio (frames of the window's padding are not recorded)."""
        conv, _ = self.audio_lengths(batch.inputs)
        spans = []
        for n, d in zip(conv.tolist(), batch.durations):
            start, end = frame_times(int(n), self.encoder_seconds_per_frame, min(d, self.max_audio_seconds))
            spans.append(AudioSpan(np.arange(int(n), dtype=np.int64), start, end))
        return spans


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """The one device rule: "auto" (or None) is cuda when a CUDA device is visible, else cpu;
    a cuda device asked for where none is visible is an error."""
    device = "auto" if device is None else str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InterpError("--device cuda asked for but no CUDA device is visible; use --device cpu")
    return device


def parse_max_memory(spec: str | None) -> dict | None:
    """`--max-memory`: '0=70GiB,1=70GiB,cpu=200GiB' (device = cap), or '70GiB' for every visible
    GPU, as Accelerate's `max_memory` ({0: "70GiB", "cpu": "200GiB"}); None when not given."""
    import re

    if spec is None or not str(spec).strip():
        return None
    size = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", re.IGNORECASE)
    out: dict = {}
    for part in str(spec).split(","):
        device, _, cap = part.strip().rpartition("=")
        cap = cap.strip()
        if not size.fullmatch(cap):
            raise InterpError(f"--max-memory: '{cap}' is not a size; give e.g. 0=70GiB,1=70GiB,cpu=200GiB or 70GiB")
        device = device.strip()
        if not device:
            n = torch.cuda.device_count()
            if not n:
                raise InterpError("--max-memory 70GiB caps every GPU, and none is visible; name the devices, e.g. cpu=64GiB")
            out.update({i: cap for i in range(n)})
        elif device.isdigit():
            out[int(device)] = cap
        elif device in ("cpu", "disk", "mps"):
            out[device] = cap
        else:
            raise InterpError(f"--max-memory: unknown device '{device}'; use GPU indices (0, 1, ...), cpu or disk")
    return out


def resolve_dtype(choice: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """The one dtype rule of every loader (speech LLMs, Whisper, text LLMs): an explicit choice is
    kept; "auto" (or None) is bfloat16 on CUDA and float32 elsewhere."""
    if choice is None or choice == "auto":
        device = str(device)
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        return torch.bfloat16 if on_cuda else torch.float32
    return _as_dtype(choice)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
             "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise InterpError(f"unknown dtype '{dtype}'; use one of float32, float16, bfloat16")
    return table[dtype]


def spans_from_mask(is_audio: torch.Tensor, counts: Sequence[int], seconds_per_position: float,
                    durations: Sequence[float]) -> list[AudioSpan]:
    """Audio spans from a (batch, seq) placeholder mask; checks each item has `counts[i]` of them."""
    spans = []
    for i, n in enumerate(counts):
        pos = torch.nonzero(is_audio[i]).flatten().cpu().numpy().astype(np.int64)
        if len(pos) != n:
            raise RuntimeError(f"item {i}: {len(pos)} audio placeholders in the prompt but {n} audio embeddings")
        start, end = frame_times(n, seconds_per_position, durations[i])
        spans.append(AudioSpan(pos, start, end))
    return spans
