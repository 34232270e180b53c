"""Ultravox (fixie-ai) written for transformers 5: config, model and processor.

Ultravox checkpoints ship their own code (`ultravox_config.py`, `ultravox_model.py`,
`ultravox_processing.py` in fixie-ai/ultravox `ultravox/model/`), written for transformers
4.4x; it does not run under transformers 5. This module is an independent implementation of
the released model (v0.5, fixie-ai/ultravox f4f643b; v0.6, 4ab3823) that computes the same
hidden states, checked against outputs of that code (tests/data/ultravox_reference):

- `UltravoxAudioEncoder`: Whisper's encoder as Ultravox modifies it: it takes any number of
  mel frames up to its 30 s window (not exactly 3000), slices the position embeddings to
  match, and masks encoder frames past each row's length (`audio_len`, in mel frames) out of
  self-attention as keys.
- `UltravoxProjector`: stacks `stack_factor` encoder frames (zero-padding the last group),
  then RMSNorm, linear, SwiGLU, [RMSNorm], linear, [RMSNorm]; v0.5+ configs put the second
  norm in the middle (`projector_ln_mid`), v0.4 after the last linear.
- `UltravoxModel`: `audio_tower`, `multi_modal_projector`, `language_model` (a causal LM,
  Llama-3.x in every release). The processor writes `audio_token_len[i]` placeholder tokens
  (the tokenizer's EOS) at `audio_token_start_idx[i]` for each 30 s chunk `i` of audio; the
  model overwrites those embeddings with the chunk's projected audio. `audio_batch_size[b]`
  says how many chunks belong to row `b` of the batch.
- `UltravoxProcessor`: Whisper log-mel features of the whole waveform (padded to whole
  160-sample hops and to at least two hops), cut into `audio_context_size` (3000 frame)
  chunks; `audio_token_len = ceil(mel_frames / 16)` per chunk; the text is split at
  `<|audio|>` and the placeholders spliced in. v0.6 tokenizers also hold `<|audio|>` as a
  special token whose id the config records as `audio_token_index`; the released processor
  still writes EOS placeholders, and so does this one.

Loading and saving checkpoint folders (base weights named by hub id, the released layout)
is in `interp.models.ultravox_checkpoint`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.whisper.modeling_whisper import WhisperEncoder

AUDIO_PLACEHOLDER = "<|audio|>"

#: UltravoxConfig fields, in the order and with the defaults of the released config.
_FIELDS = dict(audio_model_id=None, text_model_id=None, ignore_index=-100, audio_token_index=None, hidden_size=4096,
               stack_factor=8, norm_init=0.4, projector_act="swiglu", projector_ln_mid=False,
               audio_latency_block_size=None, llm_only_training=False)


def _sub_config(value, default_type: str):
    if value is None or isinstance(value, transformers.PreTrainedConfig):
        return value
    value = dict(value)
    return transformers.CONFIG_MAPPING[value.pop("model_type", default_type)](**value)


class UltravoxConfig(transformers.PreTrainedConfig):
    """The released `UltravoxConfig`'s fields. Unlike the released class it never fetches
    anything: where `text_model_id` / `audio_model_id` name base models, the caller (see
    `ultravox_checkpoint`) resolves them and passes their configs as `text_config` /
    `audio_config`."""

    model_type = "ultravox"

    def __init__(self, audio_config=None, text_config=None, **kwargs):
        for key, default in _FIELDS.items():
            setattr(self, key, kwargs.pop(key, default))
        # LoRA settings of training runs; merged into the weights before release.
        for key in ("text_model_lora_config", "audio_model_lora_config"):
            kwargs.pop(key, None)
        self.audio_config = _sub_config(audio_config, "whisper")
        self.text_config = _sub_config(text_config, "llama")
        if self.text_config is not None:
            self.vocab_size = self.text_config.vocab_size
            self.initializer_range = self.text_config.initializer_range
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.text_config

    def released_dict(self) -> dict[str, Any]:
        """config.json as the released code writes it: sub-configs named by id are left out."""
        out = {"architectures": ["UltravoxModel"], "model_type": "ultravox"}
        for key in ("audio_config", "text_config"):
            sub = getattr(self, key)
            if getattr(self, key.replace("config", "model_id")) is None and sub is not None:
                out[key] = _released_sub_config(sub)
        if "audio_config" in out:
            # The released code builds its Whisper encoder only if this name says "whisper".
            name = self.audio_config.name_or_path or ""
            out["audio_config"]["_name_or_path"] = name if "whisper" in name.lower() else "whisper"
        out.update({key: getattr(self, key) for key in _FIELDS})
        if self.text_config is not None:
            out["vocab_size"] = self.text_config.vocab_size
            out["initializer_range"] = self.text_config.initializer_range
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, key, None) is not None:
                out[key] = getattr(self, key)
        out["torch_dtype"] = str(self.dtype or torch.float32).replace("torch.", "")
        return out


def _released_sub_config(sub) -> dict:
    """A sub-config as a dict that both transformers 4.4x and 5 read the same way."""
    d = sub.to_diff_dict()
    d["model_type"] = sub.model_type
    d.pop("transformers_version", None)
    d.pop("dtype", None)
    if getattr(sub, "dtype", None) is not None:
        d["torch_dtype"] = str(sub.dtype).replace("torch.", "")
    rope = getattr(sub, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        # transformers 4.4x reads RoPE settings from rope_theta / rope_scaling only.
        d["rope_theta"] = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            d["rope_scaling"] = scaling
        d.pop("rope_parameters", None)
    return d


class SwiGLU(nn.Module):
    """SwiGLU as Ultravox writes it: the first half of the features is gated by the second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


class UltravoxProjector(nn.Module):
    """Stack `stack_factor` encoder frames, then norm -> linear -> act -> [norm] -> linear -> [norm]."""

    def __init__(self, config: UltravoxConfig):
        super().__init__()
        self.stack_factor = config.stack_factor
        dim_in = config.audio_config.hidden_size * config.stack_factor
        dim_mid = config.hidden_size // 2 if config.projector_act == "swiglu" else config.hidden_size
        dim_out = config.text_config.hidden_size
        self.ln_pre = LlamaRMSNorm(dim_in, eps=1e-6)
        self.linear_1 = nn.Linear(dim_in, config.hidden_size, bias=False)
        self.act = SwiGLU() if config.projector_act == "swiglu" else transformers.activations.ACT2FN[config.projector_act]
        self.linear_2 = nn.Linear(dim_mid, dim_out, bias=False)
        if config.projector_ln_mid:
            self.ln_mid: nn.Module = LlamaRMSNorm(dim_mid, eps=1e-6)
            self.ln_post: nn.Module = nn.Identity()
        else:
            self.ln_mid = nn.Identity()
            self.ln_post = LlamaRMSNorm(dim_out, eps=1e-6)

    def stack(self, frames: torch.Tensor) -> torch.Tensor:
        batch, n, dim = frames.shape
        padded = -(-n // self.stack_factor) * self.stack_factor
        frames = F.pad(frames, (0, 0, 0, padded - n))
        return frames.reshape(batch, padded // self.stack_factor, dim * self.stack_factor)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.ln_pre(self.stack(frames))
        h = self.ln_mid(self.act(self.linear_1(h)))
        return self.ln_post(self.linear_2(h))


class UltravoxAudioEncoder(WhisperEncoder):
    """Whisper's encoder taking up to its window of mel frames, with padding frames masked."""

    @property
    def max_context_length(self) -> int:
        """Mel frames in the encoder's window (3000 for Whisper: 30 s)."""
        return self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]

    def forward(self, input_features: torch.Tensor, audio_len: torch.Tensor | None = None, **kwargs) -> BaseModelOutput:
        if input_features.shape[-1] > self.max_context_length:
            raise ValueError(f"the audio encoder takes at most {self.max_context_length} mel frames, "
                             f"got {input_features.shape[-1]}")
        h = F.gelu(self.conv1(input_features))
        h = F.gelu(self.conv2(h)).permute(0, 2, 1)
        h = h + self.embed_positions.weight[: h.shape[1]]
        h = F.dropout(h, p=self.dropout, training=self.training)
        mask = None
        if audio_len is not None:
            # Frames past a row's audio are masked as keys only; they still get (unused) outputs.
            frames = (audio_len.to(h.device) - 1) // 2 + 1
            keep = torch.arange(h.shape[1], device=h.device)[None, :] < frames.view(-1, 1)
            mask = (1.0 - keep[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, mask)
        return BaseModelOutput(last_hidden_state=self.layer_norm(h))


class UltravoxModel(PreTrainedModel, GenerationMixin):
    """Whisper encoder -> stacking projector -> causal LM, audio overwriting placeholder tokens."""

    config_class = UltravoxConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _no_split_modules = ["WhisperEncoderLayer", "LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: UltravoxConfig):
        super().__init__(config)
        if config.audio_latency_block_size:
            raise ValueError("audio_latency_block_size (streaming attention masks in the encoder) is not supported")
        if config.audio_config.model_type != "whisper":
            raise ValueError(f"only Whisper audio encoders are supported, not {config.audio_config.model_type}")
        self.audio_tower = UltravoxAudioEncoder(config.audio_config)
        self.multi_modal_projector = UltravoxProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def _init_weights(self, module):
        # The released code's projector init (LlamaPreTrainedModel's, with norms at norm_init).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, LlamaRMSNorm):
            nn.init.constant_(module.weight, self.config.norm_init)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def get_decoder(self):
        return self.language_model.get_decoder()

    def audio_embeddings(self, audio_values: torch.Tensor, audio_lens: torch.Tensor | None,
                         dtype: torch.dtype | None = None) -> torch.Tensor:
        """(chunks, positions, d_model) projected audio, one row per encoder window."""
        frames = self.audio_tower(audio_values.to(self.audio_tower.dtype), audio_len=audio_lens).last_hidden_state
        return self.multi_modal_projector(frames.to(dtype or self.multi_modal_projector.linear_1.weight.dtype))

    def merge_audio(self, inputs_embeds, audio_values, audio_token_start_idx, audio_token_len, audio_lens,
                    audio_batch_size) -> torch.Tensor:
        """`inputs_embeds` with each chunk's audio written over its placeholder positions."""
        n = len(audio_values)
        if not (len(audio_token_start_idx) == len(audio_token_len) == len(audio_lens) == n):
            raise ValueError("audio_values, audio_token_start_idx, audio_token_len and audio_lens differ in length")
        counts = audio_batch_size.reshape(-1).tolist()
        if len(counts) != len(inputs_embeds) or sum(counts) != n:
            raise ValueError("audio_batch_size must give, for each row, its number of audio chunks")
        audio = self.audio_embeddings(audio_values, audio_lens, inputs_embeds.dtype)
        rows = [b for b, count in enumerate(counts) for _ in range(int(count))]
        merged = inputs_embeds.clone()
        for chunk, (row, start, length) in enumerate(zip(rows, audio_token_start_idx.tolist(),
                                                         audio_token_len.tolist())):
            merged[row, start:start + length] = audio[chunk, :length]
        return merged

    def forward(self, input_ids: torch.Tensor | None = None, audio_values: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, audio_token_start_idx: torch.Tensor | None = None,
                audio_lens: torch.Tensor | None = None, audio_token_len: torch.Tensor | None = None,
                audio_batch_size: torch.Tensor | None = None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if audio_values is not None and len(audio_values) > 0:
            if audio_token_start_idx is None or audio_token_len is None or audio_lens is None or audio_batch_size is None:
                raise ValueError("audio_values needs audio_token_start_idx, audio_token_len, audio_lens and "
                                 "audio_batch_size")
            inputs_embeds = self.merge_audio(inputs_embeds, audio_values, audio_token_start_idx, audio_token_len,
                                             audio_lens, audio_batch_size)
        return self.language_model(inputs_embeds=inputs_embeds, labels=labels, attention_mask=attention_mask, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, audio_values=None, audio_token_start_idx=None,
                                      audio_token_len=None, audio_lens=None, audio_batch_size=None,
                                      is_first_iteration=False, **kwargs):
        # The audio enters on the prefill step only, as in the released v0.5 code (v0.6
        # merges it before calling the language model's generate: the same computation).
        model_input = self.language_model.prepare_inputs_for_generation(
            input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if audio_values is not None and is_first_iteration:
            model_input.update(audio_values=audio_values, audio_token_start_idx=audio_token_start_idx,
                               audio_token_len=audio_token_len, audio_lens=audio_lens,
                               audio_batch_size=audio_batch_size)
        return model_input


class UltravoxProcessor:
    """The released `UltravoxProcessor.__call__`: one text holding `<|audio|>` per audio, one item per call."""

    def __init__(self, feature_extractor, tokenizer, stack_factor: int = 8, encoder_ds_factor: int = 2,
                 audio_context_size: int | None = 3000, audio_placeholder: str = AUDIO_PLACEHOLDER,
                 audio_token_index: int | None = None):
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no EOS token, which Ultravox uses as its audio placeholder")
        self.feature_extractor = feature_extractor  #: a WhisperFeatureExtractor
        self.tokenizer = tokenizer
        self.stack_factor = stack_factor  #: encoder frames per audio position
        self.encoder_ds_factor = encoder_ds_factor  #: mel frames per encoder frame
        self.audio_context_size = audio_context_size  #: mel frames per chunk (the encoder's window)
        self.audio_placeholder = audio_placeholder  #: marks where audio goes in the text
        self.audio_token_replacement = tokenizer.eos_token  #: the token written at audio positions
        self.audio_token_index = audio_token_index  #: v0.6: the id of `<|audio|>` in the tokenizer (not written)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = tokenizer.eos_token_id

    @property
    def audio_token_replacement_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.audio_token_replacement)

    def _chunk(self, features: torch.Tensor, lens: torch.Tensor):
        values, chunk_lens, continuation = [], [], []
        size = self.audio_context_size or features.shape[-1]
        for audio, n in zip(features, lens.tolist()):
            for offset in range(0, n, size):
                chunk = audio[..., offset:offset + size]
                # only continuation chunks need padding: a lone chunk is at most the batch width
                if offset > 0 and chunk.shape[-1] < size:
                    chunk = F.pad(chunk, (0, size - chunk.shape[-1]))
                values.append(chunk)
                chunk_lens.append(min(n - offset, size))
                continuation.append(offset > 0)
        return torch.stack(values), torch.tensor(chunk_lens), continuation

    def __call__(self, text: str | None = None, audio=None, audios=None, sampling_rate: int | None = None,
                 return_tensors: str = "pt") -> transformers.BatchFeature:
        if audio is not None and audios is not None:
            raise ValueError("give audio or audios, not both")
        if audio is not None:
            audios = audio if isinstance(audio, list) or np.ndim(audio) == 2 else [audio]
        audios = [a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in (audios or [])]
        data: dict[str, Any] = {}
        continuation: list[bool] = []
        if audios:
            hop = self.feature_extractor.hop_length
            # at least two hops, as the released processor pads
            audios = [np.pad(a, (0, 2 * hop - len(a))) if len(a) < 2 * hop else a for a in audios]
            x = self.feature_extractor(audios, sampling_rate=sampling_rate, padding="longest", pad_to_multiple_of=hop,
                                       truncation=False, return_attention_mask=True)
            values, lens, continuation = self._chunk(torch.as_tensor(np.asarray(x["input_features"])),
                                                     torch.as_tensor(np.asarray(x["attention_mask"])).sum(-1))
            data["audio_values"] = values
            data["audio_lens"] = lens
            data["audio_batch_size"] = torch.tensor([len(values)])
            data["audio_token_len"] = torch.ceil(lens / (self.encoder_ds_factor * self.stack_factor)).to(torch.int)
        if text is not None:
            if not isinstance(text, str):
                raise ValueError("text must be one string")
            parts = self.tokenizer(text.split(self.audio_placeholder), add_special_tokens=False)["input_ids"]
            if len(parts) - 1 != len(audios):
                raise ValueError(f"the text holds {len(parts) - 1} {self.audio_placeholder} placeholders for "
                                 f"{len(audios)} audios")
            replacement = self.audio_token_replacement_id
            ids: list[int] = []
            starts: list[int] = []
            part = 0
            for i, n in enumerate(data.get("audio_token_len", torch.zeros(0)).tolist()):
                if not continuation[i]:
                    ids.extend(parts[part])
                    part += 1
                starts.append(len(ids))
                ids.extend([replacement] * int(n))
            ids.extend(parts[part])
            if audios:
                data["audio_token_start_idx"] = torch.tensor(starts)
            data["input_ids"] = [ids]
            data["attention_mask"] = [[1] * len(ids)]
        return transformers.BatchFeature(data=data, tensor_type=return_tensors)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        return self.tokenizer.apply_chat_template(*args, **kwargs)


AutoConfig.register("ultravox", UltravoxConfig, exist_ok=True)
