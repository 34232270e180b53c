"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`): Whisper-style encoder, linear
projector, Qwen2 decoder. Each `<|AUDIO|>` placeholder is replaced by one audio embedding;
one audio position covers 40 ms (conv stride 2, then average pooling 2 over 10 ms mel frames)."""

from __future__ import annotations

from pathlib import Path

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

    @classmethod
    def make_tiny(cls, out, seed: int = 0, d_model: int = 64, n_layers: int = 4, encoder_layers: int = 2,
                  encoder_d_model: int = 64) -> Path:
        from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                                  WhisperFeatureExtractor)

        from interp.models.tiny import make_tokenizer

        tok = make_tokenizer(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"], pre_tokenizer="qwen2")
        processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok)
        heads = max(2, d_model // 32)
        config = Qwen2AudioConfig(
            audio_config=dict(d_model=encoder_d_model, encoder_layers=encoder_layers, encoder_attention_heads=4,
                              encoder_ffn_dim=2 * encoder_d_model, num_mel_bins=128),
            text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=d_model,
                             intermediate_size=2 * d_model, num_hidden_layers=n_layers, num_attention_heads=heads,
                             num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
            audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
        )
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).eval()
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
        model.generation_config.pad_token_id = tok.pad_token_id
        out = Path(out)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        return out
