"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`): Whisper-style encoder, linear
projector, Qwen2 decoder. Each `<|AUDIO|>` placeholder is replaced by one audio embedding;
one audio position covers 40 ms (conv stride 2, then average pooling 2 over 10 ms mel frames)."""

from __future__ import annotations


import numpy as np
import torch

from interp.models.base import (AudioSpan, Batch, EncoderProjectorDecoder, frame_times,
                                spans_from_mask, whisper_pooled_positions)


class Qwen2Audio(EncoderProjectorDecoder):
    family = "qwen2-audio"
    description = "Qwen2-Audio-7B(-Instruct): Whisper-large encoder -> linear -> Qwen2-7B"
    model_types = ("qwen2_audio",)
    seconds_per_audio_position = 0.04

    @classmethod
    def model_class(cls):
        from transformers import Qwen2AudioForConditionalGeneration

        return Qwen2AudioForConditionalGeneration

    def prompt_text(self, instruction: str) -> str:
        # The released chat template recognises audio parts by an `audio_url` key.
        conversation = [{"role": "user", "content": [{"type": "audio", "audio_url": "audio"},
                                                     {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def prepare(self, waveforms, instructions, padding_side="right") -> Batch:
        waveforms, durations, truncated = self.truncate(waveforms)
        self.processor.tokenizer.padding_side = padding_side
        inputs = self.processor(text=[self.prompt_text(t) for t in instructions], audio=list(waveforms),
                                sampling_rate=self.sampling_rate, return_tensors="pt", padding=True)
        counts = [whisper_pooled_positions(int(n)) for n in inputs["feature_attention_mask"].sum(-1)]
        ids = inputs["input_ids"]
        spans = spans_from_mask(ids == self.model.config.audio_token_id, counts, self.seconds_per_audio_position, durations)
        batch = Batch(dict(inputs), ids, inputs["attention_mask"], spans, durations, truncated)
        return batch.to(self.device, self.dtype)

    def encoder_inputs(self, batch: Batch):
        # The encoder sees the full 30 s window (1500 frames after its stride-2 conv), and inside
        # the model it attends only to the frames of real audio: `Qwen2AudioModel.forward` turns
        # `feature_attention_mask` into a bidirectional mask over the conv output. The same mask
        # is built here with the model's own helpers, so the encoder run alone computes exactly
        # what it computes inside the model. Frames past the end of the audio are not recorded.
        from transformers.masking_utils import create_bidirectional_mask

        feats = batch.inputs["input_features"]
        tower = self.module("model.audio_tower")
        lengths, _ = tower._get_feat_extract_output_lengths(batch.inputs["feature_attention_mask"].sum(-1))
        n_frames = (feats.shape[-1] - 2) // 2 + 1
        real = torch.arange(n_frames, device=lengths.device)[None, :] < lengths[:, None]
        mask = create_bidirectional_mask(config=tower.config,
                                         inputs_embeds=torch.zeros(feats.shape[0], n_frames, 1, dtype=self.dtype,
                                                                   device=feats.device),
                                         attention_mask=real.long())
        spans = []
        for n, d in zip(lengths.tolist(), batch.durations):
            start, end = frame_times(int(n), self.encoder_seconds_per_frame, min(d, self.max_audio_seconds))
            spans.append(AudioSpan(np.arange(int(n), dtype=np.int64), start, end))
        return {"input_features": feats, "attention_mask": mask}, spans
