"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`): Whisper-style encoder, linear
projector, Qwen2 decoder. Each `<|AUDIO|>` placeholder is replaced by one audio embedding;
one audio position covers 40 ms (conv stride 2, then average pooling 2 over 10 ms mel frames,
`Qwen2AudioEncoder._get_feat_extract_output_lengths`)."""

from __future__ import annotations

import torch

from interp.models.base import Batch, EncoderProjectorDecoder


class Qwen2Audio(EncoderProjectorDecoder):
    family = "qwen2-audio"
    description = "Qwen2-Audio-7B(-Instruct): Whisper-large encoder -> linear -> Qwen2-7B"
    model_types = ("qwen2_audio",)
    seconds_per_audio_position = 0.04
    feature_mask_key = "feature_attention_mask"

    @classmethod
    def model_class(cls):
        from transformers import Qwen2AudioForConditionalGeneration

        return Qwen2AudioForConditionalGeneration

    def prompt_text(self, instruction: str) -> str:
        # The released chat template recognises audio parts by an `audio_url` key.
        conversation = [{"role": "user", "content": [{"type": "audio", "audio_url": "audio"},
                                                     {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def processor_inputs(self, prompts, waveforms, padding_side):
        self.processor.tokenizer.padding_side = padding_side
        return self.processor(text=prompts, audio=waveforms, sampling_rate=self.sampling_rate, return_tensors="pt",
                              padding=True)

    def encoder_inputs(self, batch: Batch):
        # The encoder sees the full 30 s window (1500 frames after its stride-2 conv), and inside
        # the model it attends only to the frames of real audio: `Qwen2AudioModel.forward` turns
        # `feature_attention_mask` into a bidirectional mask over the conv output. The same mask
        # is built here with the model's own helpers, so the encoder run alone computes exactly
        # what it computes inside the model. Frames past the end of the audio are not recorded.
        from transformers.masking_utils import create_bidirectional_mask

        feats = batch.inputs["input_features"]
        lengths, _ = self.audio_lengths(batch.inputs)
        n_frames = (feats.shape[-1] - 2) // 2 + 1
        real = torch.arange(n_frames, device=lengths.device)[None, :] < lengths[:, None]
        mask = create_bidirectional_mask(config=self.module(self.audio_tower_path).config,
                                         inputs_embeds=torch.zeros(feats.shape[0], n_frames, 1, dtype=self.dtype,
                                                                   device=feats.device),
                                         attention_mask=real.long())
        return {"input_features": feats, "attention_mask": mask}, self.encoder_frames(batch)
