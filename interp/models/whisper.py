"""Whisper (`WhisperForConditionalGeneration`): the paper's control model for probing and the
ASR stage of every cascade.

Whisper's audio lives in its encoder: 30 s windows of log-mel frames (10 ms hop; 80 mel
bins in most checkpoints, 128 in large-v3, read from the checkpoint's feature extractor),
a stride-2 convolution, so 1500 encoder frames of 20 ms. Probing uses the encoder
(`encoder_layers_path`, via `encoder_inputs`; its `embed` is the input of encoder layer 0).

The decoder is a text LM attending to the encoder through cross-attention, so the base
contract's decoder residual stream holds no audio positions: `prepare` gives the
checkpoint's own transcription prompt as `decoder_input_ids`, every AudioSpan is empty, and
the decoder layers, final norm and `proj_out` give a decoder-side logit lens. The prompt is
read from the generation config, as `generate` builds it: multilingual checkpoints take
`<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`; English-only ones (`*.en`,
`is_multilingual` false) have no language or task tokens and take
`<|startoftranscript|><|notimestamps|>` (given the multilingual prompt, tiny.en predicts
end-of-text at once).

Transcription (the ASR of cascades) is `cascades.asr`: English, forced through
`generate_kwargs` (`language="en", task="transcribe"`) on multilingual checkpoints, whose
`generate` refuses those arguments on English-only ones. Whisper's `generate` returns only the
new tokens, without the end-of-text token; `generated` gives `interp.run` the same from what a
streamer saw.
"""

from __future__ import annotations


import numpy as np
import torch

from interp.models.base import AudioSpan, Batch, SpeechLM, frame_times

#: The prompt of multilingual checkpoints, used where a generation config does not say.
PROMPT_TOKENS = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
#: openai-whisper's rule where a generation config lacks `is_multilingual`.
MULTILINGUAL_VOCAB = 51865


class Whisper(SpeechLM):
    family = "whisper"
    description = "Whisper (control model for encoder probing; ASR of cascades)"
    model_types = ("whisper",)
    audio_in_decoder = False  # an encoder-decoder: the decoder residual holds text positions only
    layers_path = "model.decoder.layers"
    norm_path = "model.decoder.layer_norm"
    unembed_path = "proj_out"
    embed_path = "model.decoder.embed_tokens"
    encoder_layers_path = "model.encoder.layers"
    mlp_name = "fc2"  # Whisper's blocks have no MLP module: fc1 -> activation -> fc2, whose output is the MLP's
    encoder_seconds_per_frame = 0.02
    seconds_per_audio_position = 0.02  # encoder frames; the decoder stream holds no audio
    max_audio_seconds = 30.0

    @classmethod
    def model_class(cls):
        from transformers import WhisperForConditionalGeneration

        return WhisperForConditionalGeneration

    @property
    def feature_extractor(self):
        return self.processor.feature_extractor

    @property
    def is_multilingual(self) -> bool:
        """False for English-only checkpoints (`*.en`), which take no language or task tokens."""
        flag = getattr(self.model.generation_config, "is_multilingual", None)
        if flag is not None:
            return bool(flag)
        return int(self.model.config.vocab_size) >= MULTILINGUAL_VOCAB

    def prompt_tokens(self) -> list[str]:
        """The transcription prompt as tokens: this checkpoint's own, as its `generate` builds it."""
        if self.is_multilingual:
            return list(PROMPT_TOKENS)
        return ["<|startoftranscript|>", "<|notimestamps|>"]

    def prompt_ids(self) -> list[int]:
        """The transcription prompt (no instruction: Whisper takes none), ids from the generation
        config where it has them, else from the tokenizer."""
        tokens = self.prompt_tokens()
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        unknown = [t for t, i in zip(tokens, ids) if i is None or i == self.tokenizer.unk_token_id]
        if unknown:
            raise RuntimeError(f"the Whisper tokenizer at {self.path} lacks {', '.join(unknown)}")
        gc = self.model.generation_config
        from_config = {"<|startoftranscript|>": gc.decoder_start_token_id,
                       "<|notimestamps|>": getattr(gc, "no_timestamps_token_id", None),
                       "<|en|>": (getattr(gc, "lang_to_id", None) or {}).get("<|en|>"),
                       "<|transcribe|>": (getattr(gc, "task_to_id", None) or {}).get("transcribe")}
        return [int(from_config[t]) if from_config.get(t) is not None else int(i) for t, i in zip(tokens, ids)]

    def prompt_text(self, instruction: str) -> str:
        return "".join(self.prompt_tokens())

    def generate_kwargs(self) -> dict:
        """English transcription, asked for only where the checkpoint knows languages."""
        return {"language": "en", "task": "transcribe"} if self.is_multilingual else {}

    def generated(self, tokens: torch.Tensor, batch: Batch, streamed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's `generate` returns the new tokens alone, each row cut before its end-of-text
        and padded to the longest row; a streamer sees the prompt, then every step's tokens
        (end-of-text and padding included), which are cut the same way here."""
        prompt = batch.token_ids.to(tokens.device)
        if not streamed:
            return torch.cat([prompt, tokens], dim=1), tokens
        prompt_length = prompt.shape[1]
        gc = self.model.generation_config
        eos = gc.eos_token_id if isinstance(gc.eos_token_id, (list, tuple)) else [gc.eos_token_id]
        pad = gc.pad_token_id if gc.pad_token_id is not None else eos[0]
        rows = []
        for row in tokens[:, prompt_length:].tolist():
            rows.append(row[:next((k for k, t in enumerate(row) if t in eos), len(row))])
        width = max((len(r) for r in rows), default=0)
        new = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=tokens.dtype).reshape(len(rows), width)
        return torch.cat([tokens[:, :prompt_length], new], dim=1), new

    def features(self, waveforms) -> torch.Tensor:
        # Padded to the 30 s window: the encoder takes exactly max_source_positions * 2 frames.
        return self.feature_extractor([np.asarray(w, dtype=np.float32) for w in waveforms],
                                      sampling_rate=self.sampling_rate, return_tensors="pt").input_features

    def prepare(self, waveforms, instructions, padding_side: str = "right") -> Batch:
        """Encoder features and the decoder's transcription prompt; instructions are ignored and
        every item's prompt has the same length, so `padding_side` changes nothing."""
        waveforms, durations, truncated = self.truncate(waveforms)
        ids = torch.tensor([self.prompt_ids()] * len(waveforms), dtype=torch.long)
        mask = torch.ones_like(ids)
        inputs = {"input_features": self.features(waveforms), "decoder_input_ids": ids,
                  "decoder_attention_mask": mask}
        empty = [AudioSpan(np.zeros(0, np.int64), np.zeros(0), np.zeros(0)) for _ in waveforms]
        return Batch(inputs, ids, mask, empty, durations, truncated).to(self.device, self.dtype)

    def encoder_inputs(self, batch: Batch):
        # 1500 encoder frames per 30 s window; frames starting after the audio ends are
        # padding and are not recorded.
        feats = batch.inputs["input_features"]
        n_frames = self.model.config.max_source_positions
        spans = []
        for d in batch.durations:
            d = min(d, self.max_audio_seconds)
            n = min(n_frames, int(np.ceil(round(d / self.encoder_seconds_per_frame, 6))))
            start, end = frame_times(n, self.encoder_seconds_per_frame, d)
            spans.append(AudioSpan(np.arange(n, dtype=np.int64), start, end))
        return {"input_features": feats}, spans
