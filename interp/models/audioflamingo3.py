"""Audio Flamingo 3 (`AudioFlamingo3ForConditionalGeneration`): a Whisper-large-style encoder
(AF-Whisper) with a masked attention over the real frames, a two-linear projector, and a Qwen2
decoder. Each `<sound>` placeholder (`config.audio_token_id`) is replaced by one audio embedding.

One audio position = 40 ms: 10 ms mel frames, the encoder's stride-2 conv (20 ms frames), then
its average pooling by 2 (`AudioFlamingo3Encoder.forward`, `avg_pooler`). The processor expands
`<sound>` into `(((L - 1) // 2 + 1) - 2) // 2 + 1` copies for L real mel frames
(`AudioFlamingo3Processor._get_audio_token_length`), the same count the model keeps
(`get_audio_features`, `_get_feat_extract_output_lengths`). The processor cuts audio into 30 s
windows (up to `max_audio_len` = 600 s); this adapter keeps one window per item (longer audio is
truncated), so an item's positions run continuously from 0 s.
"""

from __future__ import annotations


import numpy as np

from interp.errors import InterpError
from interp.models.base import (AudioSpan, Batch, EncoderProjectorDecoder, frame_times,
                                spans_from_mask, whisper_pooled_positions)


class AudioFlamingo3(EncoderProjectorDecoder):
    family = "audioflamingo3"
    description = "Audio Flamingo 3 (audio-flamingo-3-hf): AF-Whisper encoder -> 2-layer MLP -> Qwen2.5-7B"
    model_types = ("audioflamingo3",)
    seconds_per_audio_position = 0.04

    @classmethod
    def model_class(cls):
        from transformers import AudioFlamingo3ForConditionalGeneration

        return AudioFlamingo3ForConditionalGeneration

    def prepare(self, waveforms, instructions, padding_side="right") -> Batch:
        waveforms, durations, truncated = self.truncate(waveforms)
        inputs = self.processor(text=[self.prompt_text(t) for t in instructions],
                                audio=[np.asarray(w, dtype=np.float32) for w in waveforms],
                                sampling_rate=self.sampling_rate, padding_side=padding_side)
        mel = inputs["input_features_mask"].sum(-1)
        if len(mel) != len(waveforms):
            raise InterpError(f"{self.family}: expected one 30 s window per item, got {len(mel)} for {len(waveforms)}")
        counts = [whisper_pooled_positions(int(n)) for n in mel]
        ids = inputs["input_ids"]
        spans = spans_from_mask(ids == self.model.config.audio_token_id, counts, self.seconds_per_audio_position, durations)
        batch = Batch(dict(inputs), ids, inputs["attention_mask"], spans, durations, truncated)
        return batch.to(self.device, self.dtype)

    def encoder_inputs(self, batch: Batch):
        # The encoder attends only to the real frames (input_features_mask); padding frames
        # of the 30 s window are computed but not recorded.
        mask = batch.inputs["input_features_mask"]
        spans = []
        for m, d in zip(mask.sum(-1).tolist(), batch.durations):
            n = (int(m) - 1) // 2 + 1
            start, end = frame_times(n, self.encoder_seconds_per_frame, min(d, self.max_audio_seconds))
            spans.append(AudioSpan(np.arange(n, dtype=np.int64), start, end))
        return {"input_features": batch.inputs["input_features"], "input_features_mask": mask}, spans
