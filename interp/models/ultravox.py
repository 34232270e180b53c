"""Ultravox (fixie-ai, v0.4-v0.6): a Whisper encoder, a stacking projector and a Llama-3.x decoder.

Checkpoints are loaded with this package's own implementation
(`interp.models.ultravox_modeling`, checked against fixie's released code for v0.5 and v0.6),
never with the code a checkpoint ships: base weights named by hub id come from the local
Hugging Face cache or from `--audio-model PATH` / `--text-model PATH`
(`interp.models.ultravox_checkpoint`). `UltravoxModel` holds `audio_tower` (Whisper encoder),
`multi_modal_projector` (stack 8 encoder frames, RMSNorm, linear, SwiGLU, RMSNorm, linear) and
`language_model` (`LlamaForCausalLM`). One audio position is 8 encoder frames of 20 ms: 160 ms.

The processor expands `<|audio|>` into `audio_token_len` copies of the tokenizer's EOS token
starting at `audio_token_start_idx`, one run per 30 s chunk of audio
(`audio_token_len = ceil(mel_frames / 16)`), and the model overwrites the embeddings there with
the projected audio. The processor takes one prompt per call; batching (as the released
collator does) is done here, and with left padding every start index moves right by the
row's padding.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from interp.errors import InterpError
from interp.models.base import AudioSpan, Batch, SpeechLM, frame_times, resolve_dtype


class Ultravox(SpeechLM):
    family = "ultravox"
    description = "Ultravox v0.4-v0.6: Whisper encoder -> 8-frame stacking projector -> Llama-3.x"
    model_types = ("ultravox",)
    layers_path = "language_model.model.layers"
    norm_path = "language_model.model.norm"
    unembed_path = "language_model.lm_head"
    embed_path = "language_model.model.embed_tokens"
    encoder_layers_path = "audio_tower.layers"
    projector_path = "multi_modal_projector"
    encoder_seconds_per_frame = 0.02
    seconds_per_audio_position = 0.16
    names_base_models = True
    #: Pad each item's mel frames to whole audio positions (16 frames) before batching.
    #: With the released collator (pad to the longest item) what an item's encoder sees past its
    #: end depends on the batch: Whisper's stride-2 convolution reads one frame past an
    #: odd-length input, and the projector stacks 8 encoder frames, so a last audio position
    #: that is not full mixes in encoder outputs of padding frames. The same utterance then
    #: gives different activations alone and in a batch. Padded to whole positions, every
    #: item sees the same past its end in any batch (batch == batch of one), at the price of
    #: small differences from an unbatched run of the released pipeline, which pads nothing.
    #: False (the default) reproduces the released collator exactly; `max_batch_size = 1` then
    #: gives every item, in `interp trace` and `interp run`, exactly the activations the
    #: released pipeline gives it alone. Set True and raise `max_batch_size` to trade that for speed.
    batch_invariant_audio: ClassVar[bool] = False
    max_batch_size = 1

    @classmethod
    def model_class(cls):
        from interp.models.ultravox_modeling import UltravoxModel

        return UltravoxModel

    @classmethod
    def load(cls, path, dtype=None, device: str = "cpu", device_map=None, audio_model=None, text_model=None,
             max_memory=None):
        from interp.models.ultravox_checkpoint import load_ultravox

        if device_map is not None:
            raise InterpError("Ultravox checkpoints load onto one device; use --device instead of a device map")
        model, processor = load_ultravox(path, dtype=resolve_dtype(dtype, device),
                                         audio_model=audio_model, text_model=text_model)
        return cls(model.to(device), processor, path)

    # ---- inputs ----------------------------------------------------------------------

    @property
    def audio_placeholder(self) -> str:
        return self.processor.audio_placeholder

    def prompt_text(self, instruction: str) -> str:
        # Ultravox prompts are plain-string user turns holding the placeholder, instruction
        # first (as in its training prompts and pipeline); the processor splits the text
        # around the placeholder, so it never reaches the tokenizer.
        content = f"{instruction}\n\n{self.audio_placeholder}" if instruction else self.audio_placeholder
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=False)

    def truncate(self, waveforms):
        # Long audio is not cut: the processor splits it into 30 s chunks, one run of positions each.
        return list(waveforms), [len(w) / self.sampling_rate for w in waveforms], [False] * len(waveforms)

    def prepare(self, waveforms, instructions, padding_side: str = "right") -> Batch:
        waveforms, durations, truncated = self.truncate(waveforms)
        items = [self.processor(text=self.prompt_text(t), audio=np.asarray(w, dtype=np.float32),
                                sampling_rate=self.sampling_rate, return_tensors="pt")
                 for w, t in zip(waveforms, instructions)]
        batch = self._collate(items, durations, padding_side)
        batch.truncated = truncated
        return batch.to(self.device, self.dtype)

    def _pad_ids(self, items, padding_side):
        lengths = [int(it["input_ids"].shape[-1]) for it in items]
        width = max(lengths)
        ids = torch.full((len(items), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        shifts = []
        for i, (it, n) in enumerate(zip(items, lengths)):
            shift = width - n if padding_side == "left" else 0
            ids[i, shift:shift + n] = it["input_ids"][0]
            mask[i, shift:shift + n] = it["attention_mask"][0]
            shifts.append(shift)
        return ids, mask, shifts

    def _audio_values(self, items):
        """Per-item audio_values (chunks, mel, frames) zero-padded on frames and concatenated."""
        values = [it["audio_values"] for it in items]
        if self.batch_invariant_audio:
            per_position = self.processor.encoder_ds_factor * self.processor.stack_factor
            window = self.processor.audio_context_size
            values = [F.pad(v, (0, min(-(-v.shape[-1] // per_position) * per_position, window) - v.shape[-1]))
                      for v in values]
        width = max(v.shape[-1] for v in values)
        return torch.cat([F.pad(v, (0, width - v.shape[-1])) for v in values])

    def _collate(self, items, durations, padding_side) -> Batch:
        """As the released collator: positions [start, start + len) hold EOS placeholders the model overwrites."""
        ids, mask, shifts = self._pad_ids(items, padding_side)
        inputs = {"input_ids": ids, "attention_mask": mask, "audio_values": self._audio_values(items)}
        for key in ("audio_lens", "audio_token_len", "audio_batch_size"):
            inputs[key] = torch.cat([torch.as_tensor(it[key]).reshape(-1) for it in items])
        inputs["audio_token_start_idx"] = torch.cat(
            [torch.as_tensor(it["audio_token_start_idx"]).reshape(-1) + s for it, s in zip(items, shifts)])

        replacement = self.processor.audio_token_replacement_id
        fe = self.processor.feature_extractor
        seconds_per_frame = fe.hop_length / fe.sampling_rate
        spans = []
        for i, it in enumerate(items):
            starts = torch.as_tensor(it["audio_token_start_idx"]).reshape(-1) + shifts[i]
            counts = torch.as_tensor(it["audio_token_len"]).reshape(-1)
            # each chunk's own run of positions, starting at its window's time
            chunk_seconds = (torch.as_tensor(it["audio_lens"]).reshape(-1).double() * seconds_per_frame).tolist()
            pos, t0, t1, offset = [], [], [], 0.0
            for start, n, secs in zip(starts.tolist(), counts.tolist(), chunk_seconds):
                s, e = frame_times(n, self.seconds_per_audio_position, min(durations[i], offset + secs), offset)
                pos.append(np.arange(start, start + n, dtype=np.int64))
                t0.append(s)
                t1.append(e)
                offset += secs
            pos = np.concatenate(pos)
            if not bool((ids[i, torch.from_numpy(pos)] == replacement).all()):
                raise RuntimeError(f"item {i}: the processor's audio positions do not hold its placeholder token")
            spans.append(AudioSpan(pos, np.concatenate(t0), np.concatenate(t1)))
        return Batch(inputs, ids, mask, spans, durations)

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encoder_inputs(self, batch: Batch):
        # One row of audio_values per item unless long audio was split into chunks.
        inputs = batch.inputs
        if bool((inputs["audio_batch_size"] != 1).any()):
            raise InterpError("--component encoder on Ultravox needs items of at most 30 s: longer audio is "
                              "split into several encoder windows")
        # The encoder masks padding frames when given their count, as the model does.
        kwargs = {"input_features": inputs["audio_values"], "audio_len": inputs["audio_lens"]}
        n_frames = (inputs["audio_values"].shape[-1] - 1) // 2 + 1
        spans = []
        for d in batch.durations:
            n = min(n_frames, int(np.ceil(round(d / self.encoder_seconds_per_frame, 6))))
            start, end = frame_times(n, self.encoder_seconds_per_frame, d)
            spans.append(AudioSpan(np.arange(n, dtype=np.int64), start, end))
        return kwargs, spans
