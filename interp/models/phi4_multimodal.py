"""Phi-4-Multimodal (`Phi4MultimodalForCausalLM`): a Conformer speech encoder whose output is
projected (two linears) into a Phi-4-mini decoder at the positions of `<|audio|>` placeholders.

Layout (transformers 5): `model.embed_tokens`, `model.layers[i]`, `model.norm`, `lm_head`; audio
enters in `model.embed_tokens_extend.audio_embed` (encoder blocks at `.encoder.encoders`), which
overwrites the embeddings at every position whose id is `config.audio_config.audio_token_id`
(`Phi4MultimodalAudioEmbedding.forward`, `index_put` at `input_ids == audio_token_id`).

One audio position = 80 ms: the feature extractor's hop is 160 samples (10 ms at 16 kHz,
`Phi4MultimodalFeatureExtractor(hop_length=160)`), the encoder's `NemoConvSubsampling` reduces
time by `audio_config.time_reduction` = 8 (three stride-2 convs), and the speech projector keeps
every encoder frame (`downsample_rate` 1). The processor expands one `<|audio|>` into
`audio_embed_sizes[i]` copies (`Phi4MultimodalProcessor.replace_audio_token`), with
`audio_embed_sizes = ceil(((n_samples - 400) // 160 + 1) / 8)` (`_compute_audio_embed_size`).

Real checkpoints: the config must be the transformers layout (`model_type` "phi4_multimodal"),
which on the hub is the converted revision `refs/pr/70` of microsoft/Phi-4-multimodal-instruct;
its main branch is the original remote-code layout ("phi4mm"), a different class that
transformers 5 cannot build, and loading it stops with one line saying how to get the converted
revision. Speech is served with a speech LoRA on the decoder (r 320, alpha 640, on every block's
`qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj`), shipped in the checkpoint's `speech-lora/`
folder. transformers 5 does not apply it by itself (the model code has no LoRA), and its
documented recipe (`model.load_adapter(..., adapter_kwargs={"subfolder": "speech-lora"})`) needs
peft >= 0.22; `load` applies it with `interp.models.lora` instead (peft's LoRA math, unmerged), so
residuals are those of the model that answers speech prompts. The LoRA wraps the projections
inside each block; the block, norm and head paths below do not change. `text_only()` switches
the LoRA off: the decoder is then Phi-4-mini, the backbone a matched cascade runs on text.

The full `Phi4MultimodalProcessor` also carries an image processor that needs torchvision; only
its audio half is used here (its feature extractor, its tokenizer and its placeholder rule).

Padding is not neutral for this family: the Conformer adds its boolean padding mask to the
relative-position bias (`attention_mask = hs_mask.unsqueeze(1) + relative_attention_bias`, so a
padded frame gets +0 instead of -inf and is attended), and the subsampling convs see the padded
frames. A shorter item in a padded batch therefore gets slightly different audio embeddings than
alone (max |diff| ~4e-3 at the embeddings of the tiny checkpoint), so the adapter caps batches
at one item (`max_batch_size = 1`): `interp trace` and `interp run` then give every item the
activations it has alone.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from interp.errors import InterpError, warn
from interp.models.base import AudioSpan, Batch, SpeechLM, frame_times, spans_from_mask
from interp.models.lora import LoraAdapter, apply_lora

SPEECH_LORA = "speech-lora"
REMOTE_CODE_HINT = ("{path} is the original remote-code Phi-4-multimodal layout (model_type 'phi4mm'), which "
                    "transformers 5 has no class for; use the converted revision: "
                    "hf download microsoft/Phi-4-multimodal-instruct --revision refs/pr/70 --local-dir DIR")


class Phi4AudioProcessor:
    """The audio half of `Phi4MultimodalProcessor`: its feature extractor and tokenizer."""

    def __init__(self, audio_processor, tokenizer):
        self.audio_processor = audio_processor  #: Phi4MultimodalFeatureExtractor
        self.tokenizer = tokenizer  #: the checkpoint's tokenizer, with `audio_token`

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        from transformers import AutoTokenizer, Phi4MultimodalFeatureExtractor

        return cls(Phi4MultimodalFeatureExtractor.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path)))

    def save_pretrained(self, out):
        self.audio_processor.save_pretrained(out)
        self.tokenizer.save_pretrained(out)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


class Phi4Multimodal(SpeechLM):
    family = "phi4-mm"
    description = "Phi-4-multimodal-instruct: Conformer speech encoder -> 2 linears -> Phi-4-mini (+ speech LoRA)"
    model_types = ("phi4_multimodal",)
    unsupported_model_types = {"phi4mm": REMOTE_CODE_HINT}
    layers_path = "model.layers"
    norm_path = "model.norm"
    unembed_path = "lm_head"
    embed_path = "model.embed_tokens"
    encoder_layers_path = "model.embed_tokens_extend.audio_embed.encoder.encoders"
    projector_path = "model.embed_tokens_extend.audio_embed.down_proj_for_speech"  # up -> GELU -> down: the speech projector
    encoder_seconds_per_frame = 0.08  # encoder blocks run after the 8x time reduction
    seconds_per_audio_position = 0.08
    max_batch_size = 1  # padding leaks into the Conformer's activations (see the module docstring)
    # The Conformer has no fixed window (audio is not cut into 30 s pieces); the model card's
    # longest use is speech summarisation of recordings up to 30 minutes.
    max_audio_seconds = 1800.0
    speech_lora: LoraAdapter | None = None  #: the applied speech LoRA (None when the folder has none)

    @classmethod
    def model_class(cls):
        from transformers import Phi4MultimodalForCausalLM

        return Phi4MultimodalForCausalLM

    @classmethod
    def processor_class(cls):
        return Phi4AudioProcessor

    @classmethod
    def load(cls, path, dtype=None, device: str = "cpu", device_map=None, max_memory=None):
        adapter = super().load(path, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory)
        lora_dir = Path(path) / SPEECH_LORA
        if (lora_dir / "adapter_config.json").is_file():
            adapter.speech_lora = apply_lora(adapter.model, lora_dir, name="speech")
        else:
            warn(f"{path} has no {SPEECH_LORA}/ folder: Phi-4-multimodal runs without its speech LoRA")
        return adapter

    def text_only(self):
        """The decoder with the speech LoRA off: Phi-4-mini, as a cascade's text LLM runs it."""
        return self.speech_lora.disabled() if self.speech_lora is not None else contextlib.nullcontext()

    def describe(self) -> dict:
        return super().describe() | {"speech_lora": self.speech_lora.describe() if self.speech_lora else None}

    @property
    def audio_token(self) -> str:
        tok = self.tokenizer
        want = self.model.config.audio_config.audio_token_id
        token = getattr(tok, "audio_token", None) or tok.convert_ids_to_tokens(want)
        if tok.convert_tokens_to_ids(token) != want:
            raise InterpError(f"the tokenizer's audio token {token!r} is not id {want} (config.audio_config.audio_token_id)")
        return token

    def prompt_text(self, instruction: str) -> str:
        # The model card's format: <|user|><|audio|>{instruction}<|end|><|assistant|>.
        messages = [{"role": "user", "content": self.audio_token + instruction}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prepare(self, waveforms, instructions, padding_side="right") -> Batch:
        waveforms, durations, truncated = self.truncate(waveforms)
        feats = self.processor.audio_processor([np.asarray(w, dtype=np.float32) for w in waveforms],
                                               sampling_rate=self.sampling_rate, return_tensors="pt")
        counts = [int(n) for n in feats["audio_embed_sizes"]]
        token = self.audio_token
        # Phi4MultimodalProcessor.replace_audio_token: one placeholder -> audio_embed_sizes[i] copies.
        texts = [self.prompt_text(t).replace(token, token * n, 1) for t, n in zip(instructions, counts)]
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)  # as the processor calls it
        ids = enc["input_ids"]
        spans = spans_from_mask(ids == self.model.config.audio_config.audio_token_id, counts,
                                self.seconds_per_audio_position, durations)
        inputs = dict(enc) | dict(feats)
        batch = Batch(inputs, ids, enc["attention_mask"], spans, durations, truncated)
        return batch.to(self.device, self.dtype)

    def encoder_inputs(self, batch: Batch):
        # Phi4MultimodalAudioModel.forward(hidden_states, mask); its blocks see one frame per
        # decoder audio position, padded to the longest item.
        spans = []
        for span, d in zip(batch.audio, batch.durations):
            n = len(span.positions)
            start, end = frame_times(n, self.encoder_seconds_per_frame, min(d, self.max_audio_seconds))
            spans.append(AudioSpan(np.arange(n, dtype=np.int64), start, end))
        return {"hidden_states": batch.inputs["audio_input_features"],
                "mask": batch.inputs.get("audio_attention_mask")}, spans
