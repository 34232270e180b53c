"""Ultravox (fixie-ai, v0.4-v0.6): remote-code checkpoints of a Whisper encoder, a stacking
projector and a Llama-3.x decoder.

The checkpoint ships its own code (`config.json` `auto_map` -> `ultravox_config.py`,
`ultravox_model.py`, `ultravox_processing.py`), loaded with `trust_remote_code=True`.
`UltravoxModel` holds `audio_tower` (Whisper encoder), `multi_modal_projector` (stack 8
encoder frames, RMSNorm, linear, SwiGLU, linear, RMSNorm) and `language_model`
(`LlamaForCausalLM`). One audio position is 8 encoder frames of 20 ms: 160 ms.

How audio enters the sequence depends on the generation of the checkpoint's code; the
adapter reads whichever keys the checkpoint's own processor returns:

- released code (v0.4-v0.6): the processor expands `<|audio|>` into `audio_token_len`
  copies of the tokenizer's EOS token starting at `audio_token_start_idx`, and the model
  overwrites the embeddings there with the projected audio (kwargs `audio_values`,
  `audio_token_start_idx`, `audio_token_len`, plus `audio_len` in v0.4.1 and `audio_lens`
  and `audio_batch_size` from v0.5, whose processor also splits audio into 30 s chunks,
  one run of positions each). v0.5+: `audio_token_len = ceil(mel_frames / 16)`; v0.4:
  `ceil(round(samples / 320) / 8)`.
- experimental adapter branch: no placeholder tokens; the model inserts the audio at
  `audio_start_idx` (kwargs `audio_values`, `audio_start_idx`, `audio_len`), lengthening
  each row, and only works on right-padded input.

The processor takes one prompt per call; batching (as the real training collator does) is
done here, and with left padding every start index moves right by the row's padding.

Offline use of a real checkpoint: when its config names `text_model_id` / `audio_model_id`,
the checkpoint's code loads the Llama and Whisper weights from those hub ids, and its
processor always loads the Whisper processor by hub id (`audio_model_id` or
`audio_config._name_or_path`), so those must be in the local Hugging Face cache. The
released code targets transformers 4.4x.

Tests use a stand-in for the remote code, `interp/models/ultravox_standin/` (see there).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from interp.errors import InterpError
from interp.models.base import AudioSpan, Batch, SpeechLM, frame_times

_STANDIN = Path(__file__).parent / "ultravox_standin"
_REMOTE_FILES = ("ultravox_config.py", "ultravox_model.py", "ultravox_processing.py")


class Ultravox(SpeechLM):
    family = "ultravox"
    description = "Ultravox v0.4-v0.6 (remote code): Whisper encoder -> 8-frame stacking projector -> Llama-3.x"
    model_types = ("ultravox",)
    layers_path = "language_model.model.layers"
    norm_path = "language_model.model.norm"
    unembed_path = "language_model.lm_head"
    embed_path = "language_model.model.embed_tokens"
    encoder_layers_path = "audio_tower.layers"
    encoder_seconds_per_frame = 0.02
    seconds_per_audio_position = 0.16
    trust_remote_code = True
    #: Pad each item's mel frames to whole audio positions (16 frames) before batching.
    #: With the real collator (pad to the longest item) what an item's encoder sees past its
    #: end depends on the batch: Whisper's stride-2 convolution reads one frame past an
    #: odd-length input, and the projector stacks 8 encoder frames, so a last audio position
    #: that is not full mixes in encoder outputs of padding frames. The same utterance then
    #: gives different activations alone and in a batch. Padded to whole positions, every
    #: item sees the same past its end in any batch (batch == batch of one), at the price of
    #: small differences from an unbatched run of the real pipeline, which pads nothing.
    #: False (the default) reproduces the real collator exactly; `max_batch_size = 1` then
    #: gives every item, in `interp trace` and `interp run`, exactly the activations the real
    #: pipeline gives it alone. Set True and raise `max_batch_size` to trade that for speed.
    batch_invariant_audio: ClassVar[bool] = False
    max_batch_size = 1

    @classmethod
    def model_class(cls):
        from transformers import AutoModel

        return AutoModel

    @classmethod
    def load(cls, path, dtype=None, device: str = "cpu", device_map=None):
        try:
            return super().load(path, dtype=dtype, device=device, device_map=device_map)
        except OSError as e:
            ids = [v for k, v in _read_config(path).items() if k in ("text_model_id", "audio_model_id") and v]
            if ids:
                raise InterpError(f"cannot load Ultravox checkpoint at {path}: its code loads {' and '.join(ids)} "
                                  f"from the Hugging Face hub; put them in the local HF cache ({_first_line(e)})") from None
            raise
        except (TypeError, AttributeError, ImportError, NameError) as e:
            # Errors inside the checkpoint's own code, typically a transformers version it
            # was not written for (released Ultravox code targets transformers 4.4x).
            import transformers

            raise InterpError(f"cannot load Ultravox checkpoint at {path}: its own code failed under transformers "
                              f"{transformers.__version__} ({_first_line(e)})") from None

    # ---- inputs ----------------------------------------------------------------------

    @property
    def audio_placeholder(self) -> str:
        return getattr(self.processor, "audio_placeholder", "<|audio|>")

    def prompt_text(self, instruction: str) -> str:
        # Ultravox prompts are plain-string user turns holding the placeholder, instruction
        # first (as in its training prompts and pipeline); the placeholder is not a vocabulary
        # token: the processor splits the text around it.
        content = f"{instruction}\n\n{self.audio_placeholder}" if instruction else self.audio_placeholder
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=False)

    @property
    def chunks_long_audio(self) -> bool:
        """v0.5+ processors split audio into 30 s windows (`audio_context_size`); older ones cannot."""
        return bool(getattr(self.processor, "audio_context_size", None))

    def truncate(self, waveforms):
        if self.chunks_long_audio:
            return list(waveforms), [len(w) / self.sampling_rate for w in waveforms], [False] * len(waveforms)
        return super().truncate(waveforms)

    def prepare(self, waveforms, instructions, padding_side: str = "right") -> Batch:
        waveforms, durations, truncated = self.truncate(waveforms)
        items = [self.processor(text=self.prompt_text(t), audio=np.asarray(w, dtype=np.float32),
                                sampling_rate=self.sampling_rate, return_tensors="pt")
                 for w, t in zip(waveforms, instructions)]
        if "audio_token_start_idx" in items[0]:
            batch = self._collate_overwrite(items, durations, padding_side)
        elif "audio_start_idx" in items[0]:
            batch = self._collate_insert(items, durations, padding_side)
        else:
            raise InterpError(f"{self.path}: the checkpoint's processor returned {sorted(items[0].keys())}, "
                              "without audio_token_start_idx or audio_start_idx; not a known Ultravox processor")
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

    def _audio_values(self, items, lens_key):
        """Per-item audio_values (chunks, mel, frames) zero-padded on frames and concatenated."""
        values = [it["audio_values"] for it in items]
        if self.batch_invariant_audio and lens_key is not None:
            per_position = 2 * int(getattr(self.processor, "stack_factor", 8))
            window = int(self.model.audio_tower.config.max_source_positions) * 2
            values = [F.pad(v, (0, min(-(-v.shape[-1] // per_position) * per_position, window) - v.shape[-1]))
                      for v in values]
        width = max(v.shape[-1] for v in values)
        return torch.cat([F.pad(v, (0, width - v.shape[-1])) for v in values])

    def _collate_overwrite(self, items, durations, padding_side) -> Batch:
        """Released code: positions [start, start + len) hold EOS placeholders the model overwrites."""
        ids, mask, shifts = self._pad_ids(items, padding_side)
        lens_key = next((k for k in ("audio_lens", "audio_len") if k in items[0]), None)
        inputs = {"input_ids": ids, "attention_mask": mask, "audio_values": self._audio_values(items, lens_key)}
        for key in ("audio_lens", "audio_len", "audio_token_len", "audio_batch_size"):
            if key in items[0]:
                inputs[key] = torch.cat([torch.as_tensor(it[key]).reshape(-1) for it in items])
        inputs["audio_token_start_idx"] = torch.cat(
            [torch.as_tensor(it["audio_token_start_idx"]).reshape(-1) + s for it, s in zip(items, shifts)])

        replacement = self.tokenizer.convert_tokens_to_ids(self.processor.audio_token_replacement)
        fe = self._feature_extractor
        seconds_per_frame = fe.hop_length / fe.sampling_rate
        spans = []
        for i, it in enumerate(items):
            starts = torch.as_tensor(it["audio_token_start_idx"]).reshape(-1) + shifts[i]
            counts = torch.as_tensor(it["audio_token_len"]).reshape(-1)
            # v0.5+ chunks: each chunk's own run of positions, starting at its window's time.
            chunk_seconds = (torch.as_tensor(it["audio_lens"]).reshape(-1).double() * seconds_per_frame).tolist() \
                if "audio_lens" in it else [durations[i]]
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

    def _collate_insert(self, items, durations, padding_side) -> Batch:
        """Adapter-branch code: the model inserts audio at audio_start_idx into right-padded rows."""
        if padding_side == "left":
            warnings.warn("this Ultravox checkpoint's code inserts audio into right-padded rows (its output is "
                          "right-padded); using right padding", stacklevel=3)
        config = self.model.config
        if str(getattr(config, "adapter_type", "stacking")).lower().split(".")[-1] != "stacking":
            raise InterpError("this Ultravox checkpoint's adapter decides the number of audio positions at run "
                              "time (CFormer); only stacking adapters are supported")
        stack = int((getattr(config, "adapter_config", None) or {}).get("stack_factor", config.stack_factor))
        ids, mask, _ = self._pad_ids(items, "right")
        inputs = {"input_ids": ids, "attention_mask": mask, "audio_values": self._audio_values(items, None),
                  "audio_len": torch.cat([torch.as_tensor(it["audio_len"]).reshape(-1) for it in items]),
                  "audio_start_idx": torch.cat([torch.as_tensor(it["audio_start_idx"]).reshape(-1) for it in items])}
        # The residual stream is the sequence after insertion: each row's tokens with the
        # audio embeddings spliced in at its start index, then right padding.
        n_tokens = mask.sum(1).tolist()
        n_audio = [-(-((int(a) - 1) // 2 + 1) // stack) for a in inputs["audio_len"].tolist()]
        width = max(n + a for n, a in zip(n_tokens, n_audio))
        placeholder = self.tokenizer.convert_tokens_to_ids(self.processor.audio_token_replacement)
        token_ids = torch.full((len(items), width), self._pad_id, dtype=torch.long)
        seq_mask = torch.zeros((len(items), width), dtype=torch.long)
        spans = []
        for i, (n, a, s) in enumerate(zip(n_tokens, n_audio, inputs["audio_start_idx"].tolist())):
            token_ids[i, :s] = ids[i, :s]
            token_ids[i, s:s + a] = placeholder
            token_ids[i, s + a:n + a] = ids[i, s:n]
            seq_mask[i, :n + a] = 1
            start, end = frame_times(a, self.seconds_per_audio_position, durations[i])
            spans.append(AudioSpan(np.arange(s, s + a, dtype=np.int64), start, end))
        return Batch(inputs, token_ids, seq_mask, spans, durations)

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def _feature_extractor(self):
        return getattr(self.processor.audio_processor, "feature_extractor", self.processor.audio_processor)

    def encoder_inputs(self, batch: Batch):
        # One row of audio_values per item unless v0.5+ split long audio into chunks.
        inputs = batch.inputs
        if "audio_batch_size" in inputs and bool((inputs["audio_batch_size"] != 1).any()):
            raise InterpError("--component encoder on Ultravox needs items of at most 30 s: longer audio is "
                              "split into several encoder windows")
        kwargs = {"input_features": inputs["audio_values"]}
        # The encoder masks padding frames when the model passes it their count.
        lens = inputs.get("audio_lens", inputs.get("audio_len") if "audio_token_start_idx" in inputs else None)
        if lens is not None:
            kwargs["audio_len"] = lens
        n_frames = (inputs["audio_values"].shape[-1] - 1) // 2 + 1
        spans = []
        for d in batch.durations:
            n = min(n_frames, int(np.ceil(round(d / self.encoder_seconds_per_frame, 6))))
            start, end = frame_times(n, self.encoder_seconds_per_frame, d)
            spans.append(AudioSpan(np.arange(n, dtype=np.int64), start, end))
        return kwargs, spans

    # ---- tiny checkpoint -------------------------------------------------------------

    @classmethod
    def make_tiny(cls, out, seed: int = 0, d_model: int = 64, n_layers: int = 4, encoder_layers: int = 2,
                  encoder_d_model: int = 32, api: str = "v0.5") -> Path:
        """A tiny checkpoint that loads like a released one: the (stand-in) code is copied into
        the folder and `config.json`'s `auto_map` points at it, so loading goes through
        `trust_remote_code`. `api` picks the generation of Ultravox code the stand-in imitates."""
        from transformers import WhisperFeatureExtractor

        from interp.models.tiny import LLAMA3, LLAMA3_SPECIALS, make_tokenizer
        from interp.models.ultravox_standin.ultravox_config import UltravoxConfig
        from interp.models.ultravox_standin.ultravox_model import UltravoxModel

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tok = make_tokenizer(LLAMA3_SPECIALS, eos="<|eot_id|>", bos="<|begin_of_text|>", template=LLAMA3)
        heads = max(2, d_model // 32)
        config = UltravoxConfig(
            audio_config=dict(model_type="whisper", d_model=encoder_d_model, encoder_layers=encoder_layers,
                              encoder_attention_heads=2, encoder_ffn_dim=2 * encoder_d_model, decoder_layers=1,
                              decoder_attention_heads=2, decoder_ffn_dim=2 * encoder_d_model, num_mel_bins=128,
                              max_source_positions=1500),
            text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=d_model,
                             intermediate_size=2 * d_model, num_hidden_layers=n_layers, num_attention_heads=heads,
                             num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id),
            hidden_size=2 * d_model, stack_factor=8, norm_init=0.4, projector_act="swiglu",
            projector_ln_mid=api == "v0.5", standin_api=api,
        )
        torch.manual_seed(seed)
        model = UltravoxModel(config).eval()
        model.save_pretrained(out)
        tok.save_pretrained(out)
        WhisperFeatureExtractor(feature_size=128).save_pretrained(out)
        # As in released checkpoints: the code lives in the folder and the auto_map names it.
        for name in _REMOTE_FILES:
            shutil.copyfile(_STANDIN / name, out / name)
        cfg = json.loads((out / "config.json").read_text())
        cfg["auto_map"] = {"AutoConfig": "ultravox_config.UltravoxConfig", "AutoModel": "ultravox_model.UltravoxModel",
                           "AutoProcessor": "ultravox_processing.UltravoxProcessor"}
        cfg["architectures"] = ["UltravoxModel"]
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        pre = json.loads((out / "preprocessor_config.json").read_text())
        pre["processor_class"] = "UltravoxProcessor"
        pre["auto_map"] = {"AutoProcessor": "ultravox_processing.UltravoxProcessor"}
        (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
        return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _read_config(path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
