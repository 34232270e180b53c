"""Voxtral (`VoxtralForConditionalGeneration`): a Whisper-large-style encoder, a projector that
stacks 4 encoder frames (`audio_config.intermediate_size` = 4 x d_model) through two linears, and
a Llama/Mistral decoder. Each `[AUDIO]` placeholder (`config.audio_token_id`, 24 in the released
tekken vocabulary, hard-coded in `VoxtralProcessor`) is replaced by one audio embedding.

One audio position = 80 ms: mel frames are 10 ms, the encoder's stride-2 conv makes 20 ms
frames (1500 per 30 s window; the encoder's `avg_pooler` is defined but never called), and
`VoxtralModel.get_audio_features` reshapes them to (-1, intermediate_size), i.e. 4 frames per
position: 375 positions per 30 s window. Audio is always padded to whole 30 s windows
(`VoxtralProcessor` pads to a multiple of 480000 samples and mistral-common asks for 375
`[AUDIO]` tokens per window), so of a 3 s clip's 375 positions about 337 hold the encoding of
padding. Those are not audio: an item's audio span is its first ceil(samples / 1280) positions
(each starts before the audio's end), and the rest are the span's `padding`, which is neither
audio nor text (pooling, probes, the lens and erasure see real audio only). Voxtral takes long
audio in several windows; the model card gives 40 minutes for understanding, which is the
family's `max_audio_seconds`.

Prompts: the real checkpoints' tokenizer is mistral-common's (`MistralCommonBackend`), which
alone knows how to expand audio into `[BEGIN_AUDIO][AUDIO]...`: `prepare` then goes through
`VoxtralProcessor.apply_chat_template` with the audio as base64 WAV (needs `mistral-common`).
A `VoxtralProcessor` built on a plain fast tokenizer (the tiny checkpoints here) cannot expand
audio, so `prepare` does the same expansion itself: the tokenizer's chat template gives
`<s>[INST][BEGIN_AUDIO][AUDIO]{instruction}[/INST]` and `[AUDIO]` is repeated 375 times per
window; features come from the processor's own windowing (`_retrieve_input_features`).
"""

from __future__ import annotations

import math

import numpy as np

from interp.errors import InterpError
from interp.models.base import AudioSpan, Batch, EncoderProjectorDecoder, frame_times, spans_from_mask

WINDOW_SECONDS = 30.0
POSITIONS_PER_WINDOW = 375  # 3000 mel frames -> 1500 encoder frames -> 375 stacks of 4
SAMPLES_PER_POSITION = 1280  # 80 ms at 16 kHz


class Voxtral(EncoderProjectorDecoder):
    family = "voxtral"
    description = "Voxtral-Mini-3B / Small-24B: Whisper-style encoder -> 4-frame stacking MLP -> Mistral decoder"
    model_types = ("voxtral",)
    seconds_per_audio_position = 0.08
    max_audio_seconds = 2400.0  # 40 min: the model card's limit for audio understanding (32k context)

    @classmethod
    def model_class(cls):
        from transformers import VoxtralForConditionalGeneration

        return VoxtralForConditionalGeneration

    @property
    def _mistral_common(self) -> bool:
        return type(self.tokenizer).__name__ == "MistralCommonBackend"

    def prompt_text(self, instruction: str) -> str:
        if self._mistral_common:
            raise InterpError("Voxtral's mistral-common tokenizer builds the prompt from the audio itself; use prepare()")
        conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": instruction}]}]
        return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def _windows(self, waveforms) -> list[int]:
        return [max(1, math.ceil(len(w) / (WINDOW_SECONDS * self.sampling_rate))) for w in waveforms]

    def prepare(self, waveforms, instructions, padding_side="right") -> Batch:
        waveforms, durations, truncated = self.truncate(waveforms)
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        self.tokenizer.padding_side = padding_side
        if self._mistral_common:
            inputs = self.processor.apply_chat_template(
                [[{"role": "user", "content": [{"type": "audio", "base64": _wav_base64(w, self.sampling_rate)},
                                               {"type": "text", "text": t}]}] for w, t in zip(waveforms, instructions)],
                tokenize=True, return_dict=True, return_tensors="pt")
            inputs = dict(inputs)
        else:
            token = self.processor.audio_token
            texts = [self.prompt_text(t).replace(token, token * (POSITIONS_PER_WINDOW * k), 1)
                     for t, k in zip(instructions, self._windows(waveforms))]
            inputs = dict(self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))
            audio_kwargs = dict(self.processor.audio_kwargs)
            audio_kwargs.pop("return_tensors", None)
            max_positions = audio_kwargs.pop("max_source_positions")
            inputs["input_features"] = self.processor._retrieve_input_features(waveforms, max_positions,
                                                                               return_tensors="pt", **audio_kwargs)
        counts = [POSITIONS_PER_WINDOW * k for k in self._windows(waveforms)]
        ids = inputs["input_ids"]
        is_audio = ids == self.model.config.audio_token_id
        spans = []
        for span, w in zip(spans_from_mask(is_audio, counts, self.seconds_per_audio_position, durations), waveforms):
            n = min(len(span.positions), math.ceil(len(w) / SAMPLES_PER_POSITION))
            start, end = frame_times(n, self.seconds_per_audio_position, len(w) / self.sampling_rate)
            spans.append(AudioSpan(span.positions[:n], start, end, padding=span.positions[n:]))
        batch = Batch(inputs, ids, inputs["attention_mask"], spans, durations, truncated)
        return batch.to(self.device, self.dtype)

    def encoder_inputs(self, batch: Batch):
        feats = batch.inputs["input_features"]
        if feats.shape[0] != len(batch):
            raise InterpError("--component encoder needs one 30 s window per item; keep audio at most 30 s")
        spans = []
        for d in batch.durations:
            d = min(d, WINDOW_SECONDS)
            n = min(feats.shape[-1] // 2, int(np.ceil(d / self.encoder_seconds_per_frame)))
            start, end = frame_times(n, self.encoder_seconds_per_frame, d)
            spans.append(AudioSpan(np.arange(n, dtype=np.int64), start, end))
        return {"input_features": feats}, spans


def _wav_base64(waveform: np.ndarray, sampling_rate: int) -> str:
    import base64
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, waveform, sampling_rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode("ascii")
