"""Audio Flamingo 3 (`AudioFlamingo3ForConditionalGeneration`): a Whisper-large-style encoder
(AF-Whisper) with a masked attention over the real frames, a two-linear projector, and a Qwen2
decoder. Each `<sound>` placeholder (`config.audio_token_id`) is replaced by one audio embedding.

One audio position = 40 ms: 10 ms mel frames, the encoder's stride-2 conv (20 ms frames), then
its average pooling by 2 (`AudioFlamingo3Encoder.forward`, `avg_pooler`). The processor expands
`<sound>` into `(((L - 1) // 2 + 1) - 2) // 2 + 1` copies for L real mel frames
(`AudioFlamingo3Processor._get_audio_token_length`), the same count the model keeps
(`get_audio_features`, `_get_feat_extract_output_lengths`, which `prepare` calls). The
processor cuts audio into 30 s windows (up to `max_audio_len` = 600 s); this adapter keeps one
window per item (longer audio is truncated), so an item's positions run continuously from 0 s.
"""

from __future__ import annotations

from interp.models.base import Batch, EncoderProjectorDecoder


class AudioFlamingo3(EncoderProjectorDecoder):
    family = "audioflamingo3"
    description = "Audio Flamingo 3 (audio-flamingo-3-hf): AF-Whisper encoder -> 2-layer MLP -> Qwen2.5-7B"
    model_types = ("audioflamingo3",)
    seconds_per_audio_position = 0.04
    feature_mask_key = "input_features_mask"

    @classmethod
    def model_class(cls):
        from transformers import AudioFlamingo3ForConditionalGeneration

        return AudioFlamingo3ForConditionalGeneration

    def processor_inputs(self, prompts, waveforms, padding_side):
        return self.processor(text=prompts, audio=waveforms, sampling_rate=self.sampling_rate, padding_side=padding_side)

    def encoder_inputs(self, batch: Batch):
        # The encoder attends only to the real frames (input_features_mask); padding frames
        # of the 30 s window are computed but not recorded.
        inputs = {"input_features": batch.inputs["input_features"],
                  "input_features_mask": batch.inputs["input_features_mask"]}
        return inputs, self.encoder_frames(batch)
