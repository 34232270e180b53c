"""TEST STAND-IN for Ultravox's `ultravox_model.py` (see this package's __init__ docstring).

Mirrors the real `UltravoxModel`: `audio_tower` (a Whisper encoder that accepts less than
30 s of mel frames and masks padding by `audio_len`), `multi_modal_projector` (stack
`stack_factor` encoder frames, RMSNorm, linear, SwiGLU, linear, RMSNorm) and
`language_model` (a transformers `LlamaForCausalLM`). How the audio embeddings enter the
sequence follows the real code of the generation named by `config.standin_api`. Written
against transformers 5 (the released code targets transformers 4.4x: its encoder layer
calls and `prepare_inputs_for_generation` use 4.x signatures); the real model's training,
LoRA and loss code is left out.
"""

from typing import Generator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
import transformers.activations
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper import modeling_whisper as whisper

from .ultravox_config import UltravoxConfig


class UltravoxModel(transformers.LlamaPreTrainedModel, GenerationMixin):
    config_class = UltravoxConfig
    _keys_to_ignore_on_load_missing = ["audio_tower.*", "language_model.*"]
    _no_split_modules = ["WhisperEncoderLayer", "LlamaDecoderLayer"]

    def __init__(self, config: UltravoxConfig):
        super().__init__(config)
        self.vocab_size = config.vocab_size
        self.audio_tower = ModifiedWhisperEncoder(config.audio_config)
        self.multi_modal_projector = UltravoxProjector(config)
        self.language_model = transformers.AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def get_decoder(self):
        return self.language_model.get_decoder()

    # -- v0.5 (released main branch): one row of audio_values per 30 s chunk ----------------

    def _audio_iter(self, audio_batch_size: torch.Tensor) -> Generator[Tuple[int, int], None, None]:
        audio_index = 0
        for i_b, batch_count in enumerate(audio_batch_size):
            for _ in range(int(batch_count)):
                yield i_b, audio_index
                audio_index += 1

    def forward(
        self,
        input_ids: torch.Tensor,
        audio_values: Optional[torch.FloatTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        audio_token_start_idx: Optional[torch.Tensor] = None,
        audio_lens: Optional[torch.Tensor] = None,
        audio_token_len: Optional[torch.Tensor] = None,
        audio_batch_size: Optional[torch.Tensor] = None,
        audio_len: Optional[torch.Tensor] = None,
        audio_start_idx: Optional[torch.Tensor] = None,
        past_key_values=None,
        **kwargs,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings().forward(input_ids)
        api = self.config.standin_api

        if audio_values is not None and len(audio_values) > 0:
            if api == "v0.5":
                assert audio_token_start_idx is not None and audio_token_len is not None
                assert audio_lens is not None and audio_batch_size is not None
                assert len(audio_token_start_idx) == len(audio_token_len) == len(audio_lens) == len(audio_values)
                assert len(audio_batch_size) == len(inputs_embeds)
                audio_tower_output = self.audio_tower.forward(
                    audio_values.to(self.audio_tower.dtype), audio_len=audio_lens
                ).last_hidden_state
                audio_tower_output = audio_tower_output.to(inputs_embeds.dtype)
                audio_embeds = self.multi_modal_projector.forward(audio_tower_output)
                # Like the real code, this writes in place into the embedding layer's output.
                for i_b, i_a in self._audio_iter(audio_batch_size):
                    start_idx = audio_token_start_idx[i_a]
                    token_len = audio_token_len[i_a]
                    inputs_embeds[i_b][start_idx : start_idx + token_len] = audio_embeds[i_a][:token_len]
            elif api == "v0.4":
                assert audio_token_start_idx is not None and audio_token_len is not None
                assert len(audio_token_start_idx) == len(audio_token_len) == len(audio_values)
                audio_tower_output = self.audio_tower.forward(
                    audio_values.to(self.audio_tower.dtype), audio_len=audio_len
                ).last_hidden_state
                audio_tower_output = audio_tower_output.to(inputs_embeds.dtype)
                audio_embeds = self.multi_modal_projector.forward(audio_tower_output)
                for i, (audio, start, length) in enumerate(zip(audio_embeds, audio_token_start_idx, audio_token_len)):
                    length = min(length, audio.shape[0])
                    inputs_embeds[i, start : start + length] = audio[:length]
            else:  # "insert": the experimental adapter branch
                assert audio_len is not None and audio_start_idx is not None
                audio_tower_output = self.audio_tower(audio_values).last_hidden_state
                audio_tower_output = audio_tower_output.to(inputs_embeds.dtype)
                audio_feature_len = self.audio_tower._get_feat_extract_output_lengths(audio_len)
                audio_embeds = self.multi_modal_projector.forward(audio_tower_output)
                num_audio_tokens = torch.ceil(audio_feature_len.float() / self.config.stack_factor).long()
                inputs_embeds, attention_mask, position_ids = self._insert_tokens(
                    inputs_embeds, attention_mask, audio_start_idx, audio_embeds, num_audio_tokens,
                    kwargs.get("position_ids"),
                )
                kwargs["position_ids"] = position_ids

        if past_key_values is not None:  # (the real code always passes it; transformers 5 warns)
            kwargs["past_key_values"] = past_key_values
        return self.language_model.forward(
            inputs_embeds=inputs_embeds,
            labels=labels,
            attention_mask=attention_mask,
            **kwargs,
        )

    def prepare_inputs_for_generation(self, input_ids, audio_values=None, audio_token_start_idx=None,
                                      audio_token_len=None, audio_lens=None, audio_batch_size=None, audio_len=None,
                                      is_first_iteration=False, **kwargs):
        # As the real code: the language model prepares the step, and the audio goes in only
        # on the prefill step (written against transformers 5's generation API).
        model_input = self.language_model.prepare_inputs_for_generation(
            input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if audio_values is not None and is_first_iteration:
            if self.config.standin_api == "insert":
                raise NotImplementedError("the insertion branch overrides generate(); not in this stand-in")
            extra = dict(audio_values=audio_values, audio_token_start_idx=audio_token_start_idx,
                         audio_token_len=audio_token_len, audio_lens=audio_lens, audio_batch_size=audio_batch_size,
                         audio_len=audio_len)
            model_input.update({k: v for k, v in extra.items() if v is not None})
        return model_input

    # -- "insert" (experimental adapter branch) ------------------------------------------------

    def _insert_tokens(self, inputs_embeds, attention_mask, insert_idx, insert_embeds, insert_len, position_ids=None):
        # Same copy logic as the real `_insert_tokens` (without labels / cache_position):
        # each row's real tokens are taken from the front of the row, so the input must be
        # right-padded, and the output is right-padded whatever the input was.
        batch_size, seq_len, hidden_dim = inputs_embeds.shape
        num_tokens = attention_mask.sum(dim=1).long()
        new_num_tokens = num_tokens + insert_len
        new_seq_len = int(new_num_tokens.max().item())
        new_inputs_embeds = torch.zeros((batch_size, new_seq_len, hidden_dim), device=inputs_embeds.device,
                                        dtype=inputs_embeds.dtype)
        new_attention_mask = torch.zeros((batch_size, new_seq_len), device=attention_mask.device,
                                         dtype=attention_mask.dtype)
        new_position_ids = (torch.zeros((batch_size, new_seq_len), device=attention_mask.device, dtype=torch.long)
                            if position_ids is not None else None)
        for i in range(batch_size):
            idx_i = int(insert_idx[i].item())
            insert_len_i = int(insert_len[i].item())
            orig_len_i = int(num_tokens[i].item())
            new_len_i = int(new_num_tokens[i].item())
            new_inputs_embeds[i, :idx_i] = inputs_embeds[i, :idx_i]
            if insert_len_i > 0:
                new_inputs_embeds[i, idx_i : idx_i + insert_len_i] = insert_embeds[i, :insert_len_i]
            new_inputs_embeds[i, idx_i + insert_len_i : new_len_i] = inputs_embeds[i, idx_i:orig_len_i]
            new_attention_mask[i, :idx_i] = attention_mask[i, :idx_i]
            if insert_len_i > 0:
                new_attention_mask[i, idx_i : idx_i + insert_len_i] = 1
            new_attention_mask[i, idx_i + insert_len_i : new_len_i] = attention_mask[i, idx_i:orig_len_i]
            if new_position_ids is not None:
                new_position_ids[i, :idx_i] = position_ids[i, :idx_i]
                if insert_len_i > 0:
                    new_position_ids[i, idx_i : idx_i + insert_len_i] = position_ids[i, idx_i].item() + torch.arange(
                        insert_len_i, device=position_ids.device, dtype=position_ids.dtype)
                new_position_ids[i, idx_i + insert_len_i : new_len_i] = position_ids[i, idx_i:orig_len_i] + insert_len_i
        return new_inputs_embeds, new_attention_mask, new_position_ids


class StackAudioFrames(nn.Module):
    """Stack `stack_factor` consecutive encoder frames (zero-padding the tail) into one.

    v0.4 appended one more all-padding group (`extra_group`) so that an over-estimate of the
    token count by its processor never leaves EOS placeholders between audio embeddings."""

    def __init__(self, stack_factor: int = 8, extra_group: bool = False):
        super().__init__()
        self.stack_factor = stack_factor
        self.extra_group = extra_group

    def forward(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        B, T, C = audio_embeds.shape
        T_pad = (T + self.stack_factor - 1) // self.stack_factor * self.stack_factor
        audio_embeds = F.pad(audio_embeds, (0, 0, 0, T_pad - T + (self.stack_factor if self.extra_group else 0)))
        B, T, C = audio_embeds.shape
        return audio_embeds.view(B, T // self.stack_factor, C * self.stack_factor)


class RMSNorm(transformers.models.llama.modeling_llama.LlamaRMSNorm):
    def __init__(self, hidden_size: int, init: float = 1, eps: float = 1e-6):
        super().__init__(hidden_size=hidden_size, eps=eps)
        self.weight.data.fill_(init)


class SwiGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


class UltravoxProjector(nn.Module):
    def __init__(self, config: UltravoxConfig):
        super().__init__()
        self.hidden_dim = config.hidden_size
        self._pad_and_stack = StackAudioFrames(config.stack_factor, extra_group=config.standin_api == "v0.4")
        dim_in = config.audio_config.hidden_size * config.stack_factor
        self.ln_pre = RMSNorm(dim_in, init=config.norm_init)
        self.linear_1 = nn.Linear(dim_in, self.hidden_dim, bias=False)
        dim_mid = self.hidden_dim
        self.act = transformers.activations.get_activation(config.projector_act)
        dim_mid = dim_mid // 2 if config.projector_act == "swiglu" else dim_mid
        dim_out = config.text_config.hidden_size
        self.linear_2 = nn.Linear(dim_mid, dim_out, bias=False)
        # v0.4.1 and below: RMSNorm after the second linear; v0.5 and above: after the first.
        if config.projector_ln_mid:
            self.ln_mid: nn.Module = RMSNorm(dim_mid, init=config.norm_init)
            self.ln_post: nn.Module = nn.Identity()
        else:
            self.ln_mid = nn.Identity()
            self.ln_post = RMSNorm(dim_out, init=config.norm_init)

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        audio_features = self._pad_and_stack(audio_features)
        audio_features = self.ln_pre(audio_features)
        hidden_states = self.linear_1(audio_features)
        hidden_states = self.act(hidden_states)
        hidden_states = self.ln_mid(hidden_states)
        hidden_states = self.linear_2(hidden_states)
        hidden_states = self.ln_post(hidden_states)
        return hidden_states


class ModifiedWhisperEncoder(whisper.WhisperEncoder):
    """Whisper encoder that takes up to 30 s of mel frames (not exactly 30 s) and masks
    frames past `audio_len` (mel frames per row) out of self-attention."""

    base_model_prefix = "model.encoder"
    _no_split_modules = ["WhisperEncoderLayer"]

    @property
    def max_context_length(self):
        return self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]

    def forward(self, input_features, audio_len=None, **kwargs):
        if input_features.shape[-1] > self.max_context_length:
            raise ValueError(
                f"Whisper expects the mel input features to be of length {self.max_context_length} or less, "
                f"but found {input_features.shape[-1]}."
            )
        inputs_embeds = nn.functional.gelu(self.conv1(input_features))
        inputs_embeds = nn.functional.gelu(self.conv2(inputs_embeds))
        inputs_embeds = inputs_embeds.permute(0, 2, 1)
        embed_pos = self.embed_positions.weight[: inputs_embeds.size(-2)]
        hidden_states = inputs_embeds + embed_pos
        hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)

        attention_mask = None
        if audio_len is not None:
            audio_feature_len = self._get_feat_extract_output_lengths(audio_len)
            keep = torch.arange(hidden_states.shape[1], device=hidden_states.device)[None, :] < audio_feature_len.view(-1, 1)
            attention_mask = torch.zeros(keep.shape, dtype=hidden_states.dtype, device=hidden_states.device)
            attention_mask = attention_mask.masked_fill(~keep, torch.finfo(hidden_states.dtype).min)[:, None, None, :]

        for encoder_layer in self.layers:
            hidden_states = encoder_layer(hidden_states, attention_mask)
        hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor):
        return (input_lengths - 1) // 2 + 1


transformers.activations.ACT2FN["swiglu"] = SwiGLU

UltravoxModel.register_for_auto_class()
transformers.AutoModel.register(UltravoxConfig, UltravoxModel)
