"""TEST STAND-IN for Ultravox's `ultravox_processing.py` (see this package's __init__ docstring).

Mirrors the real `UltravoxProcessor.__call__` of the generation named by the checkpoint's
`standin_api`: one text (a string holding one `<|audio|>`) and one audio per call; batching
is the caller's job (the real code batches in `DataCollatorForSeq2SeqWithAudio`).
Differences from the real code: `audio_processor` is the checkpoint's own
`WhisperFeatureExtractor` (the real `from_pretrained` fetches a `WhisperProcessor` by the
hub id in `config.audio_model_id`, and transformers 5 accepts only feature extractors as
`audio_processor`).
"""

import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from .ultravox_config import UltravoxConfig


class UltravoxProcessor(transformers.ProcessorMixin):
    tokenizer: transformers.PreTrainedTokenizerBase

    def __init__(
        self,
        audio_processor=None,
        tokenizer=None,
        audio_padding: str = "longest",
        encoder_ds_factor: Optional[int] = None,
        stack_factor: int = 8,
        audio_placeholder: str = "<|audio|>",
        audio_context_size: Optional[int] = 3000,
        standin_api: str = "v0.5",
    ):
        self.audio_padding = audio_padding
        # v0.4 counted audio tokens from samples (320 samples per encoder frame); v0.5 from
        # mel frames (2 mel frames per encoder frame).
        self.encoder_ds_factor = encoder_ds_factor or (320 if standin_api == "v0.4" else 2)
        self.stack_factor = stack_factor
        self.audio_placeholder = audio_placeholder
        self.audio_placeholder_regex = re.compile(rf" *{re.escape(audio_placeholder)} *")
        self.audio_token_replacement = tokenizer.eos_token
        # Only the v0.5 processor chunks long audio (and has this attribute set).
        self.audio_context_size = audio_context_size if standin_api == "v0.5" else None
        self.standin_api = standin_api
        assert self.audio_token_replacement is not None, "The tokenizer has no EOS token. Cannot recover."
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        super().__init__(audio_processor=audio_processor, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs):
        config = transformers.AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
        audio_processor = transformers.WhisperFeatureExtractor.from_pretrained(pretrained_model_name_or_path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer.padding_side = "left"
        tokenizer.pad_token = tokenizer.eos_token
        return cls(audio_processor=audio_processor, tokenizer=tokenizer, stack_factor=config.stack_factor,
                   standin_api=config.standin_api)

    @property
    def _feature_extractor(self):
        # The real audio_processor is a WhisperProcessor holding `.feature_extractor`.
        return getattr(self.audio_processor, "feature_extractor", self.audio_processor)

    def __call__(self, text: Optional[str] = None, audio=None, audios=None, sampling_rate: Optional[int] = None,
                 return_tensors="pt", **kwargs) -> transformers.BatchFeature:
        if self.standin_api == "v0.4":
            return self._call_v0_4(text, audio, sampling_rate, return_tensors, **kwargs)
        if self.standin_api == "insert":
            return self._call_insert(text, audio, sampling_rate, return_tensors, **kwargs)
        return self._call_v0_5(text, audio, audios, sampling_rate, return_tensors, **kwargs)

    # -- v0.5 (released main branch) -------------------------------------------------------

    def _chunk_and_pad_audio(self, audio_values: torch.Tensor, audio_lens: torch.Tensor) -> Dict[str, Any]:
        chunked_audio_values: List[torch.Tensor] = []
        chunked_audio_lens: List[int] = []
        is_continuation_list: List[bool] = []
        context_size = self.audio_context_size or audio_values.shape[-1]
        for audio, audio_len in zip(audio_values, audio_lens):
            for offset in range(0, int(audio_len), context_size):
                is_continuation = offset > 0
                chunk = audio[..., offset : offset + context_size]
                if is_continuation and chunk.shape[-1] < context_size:
                    chunk = F.pad(chunk, (0, context_size - chunk.shape[-1]))
                chunked_audio_values.append(torch.as_tensor(chunk))
                chunked_audio_lens.append(min(int(audio_len) - offset, context_size))
                is_continuation_list.append(is_continuation)
        return {
            "audio_values": torch.stack(chunked_audio_values),
            "audio_lens": torch.tensor(chunked_audio_lens),
            "audio_is_continuation": torch.tensor(is_continuation_list),
            "audio_batch_size": torch.tensor([len(chunked_audio_values)]),
        }

    def _call_v0_5(self, text, audio, audios, sampling_rate, return_tensors, **kwargs):
        if audio is not None and audios is not None:
            raise ValueError("Only one of `audio` or `audios` should be provided.")
        elif audio is not None:
            audios = audio if isinstance(audio, list) or audio.ndim == 2 else [audio]
        elif audios is None:
            audios = []

        data = {}
        audio_is_continuation = []
        if len(audios) > 0:
            audios = [x.numpy() if isinstance(x, torch.Tensor) else x for x in audios]
            hop_length = self._feature_extractor.hop_length
            audios = [np.pad(x, (0, 2 * hop_length - len(x)), mode="constant") if len(x) < 2 * hop_length else x
                      for x in audios]
            x = self._feature_extractor(
                audios,
                sampling_rate=sampling_rate,
                padding="longest",
                pad_to_multiple_of=hop_length,
                truncation=False,
                return_attention_mask=True,
                **kwargs,
            )
            data.update(self._chunk_and_pad_audio(
                audio_values=torch.as_tensor(x.input_features if "input_features" in x else x.input_values),
                audio_lens=torch.as_tensor(x.attention_mask).sum(-1),
            ))
            audio_is_continuation = data.pop("audio_is_continuation")
            data["audio_token_len"] = torch.ceil(
                data["audio_lens"] / (self.encoder_ds_factor * self.stack_factor)).to(dtype=torch.int)

        if text is not None:
            if not isinstance(text, str):
                raise ValueError("Text must be a string. Batch mode not supported yet.")
            tokenized_parts = self.tokenizer(text.split("<|audio|>"), add_special_tokens=False, **kwargs)
            audio_token_start_idx = []
            replacement_token_id = self.tokenizer.get_vocab()[self.audio_token_replacement]
            placeholder_index = -1
            split_input_ids = tokenized_parts["input_ids"]
            input_ids: List[int] = []
            for i, token_len in enumerate(data.get("audio_token_len", [])):
                if not audio_is_continuation[i]:
                    placeholder_index += 1
                    if placeholder_index >= len(split_input_ids):
                        raise ValueError(f"Text contains too few audio placeholders. (Expected {len(audios)} placeholders)")
                    input_ids.extend(split_input_ids[placeholder_index])
                audio_token_start_idx.append(len(input_ids))
                input_ids.extend([replacement_token_id] * int(token_len))
            placeholder_index += 1
            if placeholder_index != len(split_input_ids) - 1:
                raise ValueError(f"Text contains too many audio placeholders. (Expected {len(audios)} placeholders)")
            input_ids.extend(split_input_ids[placeholder_index])
            if "audio_token_len" in data:
                data["audio_token_start_idx"] = torch.as_tensor(audio_token_start_idx)
            data["input_ids"] = [input_ids]
            data["attention_mask"] = [[1] * len(input_ids)]
        return transformers.BatchFeature(data=data, tensor_type=return_tensors)

    # -- v0.4.x ----------------------------------------------------------------------------

    def _call_v0_4(self, text, audio, sampling_rate, return_tensors, **kwargs):
        data = {}
        audio_embed_frames = 0
        if audio is not None and len(audio) > 0:
            audio_len = audio.shape[-1]
            nb_encoder_frames = int(round(audio_len / self.encoder_ds_factor + 1e-4))
            audio_embed_frames = int(np.ceil(nb_encoder_frames / self.stack_factor))
            data["audio_token_len"] = [audio_embed_frames]
            x = self._feature_extractor(audio, sampling_rate=sampling_rate, padding="longest", max_length=audio_len,
                                        return_attention_mask=True, **kwargs)
            data["audio_values"] = x.input_features if "input_features" in x else x.input_values
            data["audio_len"] = [torch.as_tensor(data["audio_values"]).shape[-1]]
        if text is not None:
            assert isinstance(text, str), "Text must be a string. Batch mode not supported yet."
            if self.audio_placeholder in text:
                if "audio_token_len" not in data:
                    raise ValueError(f"audio must be provided when using audio placeholder ({self.audio_placeholder}) in text.")
                start_idx = len(self.tokenizer.encode(text[: text.index(self.audio_placeholder)], add_special_tokens=False))
                data["audio_token_start_idx"] = [start_idx]
                text = text.replace(self.audio_placeholder, self.audio_token_replacement * audio_embed_frames)
            data.update(self.tokenizer([text], add_special_tokens=False, **kwargs))
        return transformers.BatchFeature(data=data, tensor_type=return_tensors)

    # -- "insert" (experimental adapter branch) --------------------------------------------

    def _call_insert(self, text, audio, sampling_rate, return_tensors, **kwargs):
        if not text or not isinstance(text, str):
            raise ValueError(f"Non-empty text of type str (found {type(text)}) must be provided.")
        data = {}
        if audio is not None and len(audio) > 0:
            num_audio_samples = audio.shape[-1]
            x = self._feature_extractor(audio, sampling_rate=sampling_rate, padding="longest",
                                        max_length=num_audio_samples, **kwargs)
            data["audio_values"] = x.input_features if "input_features" in x else x.input_values
            data["audio_len"] = [torch.as_tensor(data["audio_values"]).shape[-1]]
            data["transcript_ids"] = [[]]
            data["transcript_len"] = [0]
        matches = list(self.audio_placeholder_regex.finditer(text))
        if len(matches) == 0:
            data.update(self.tokenizer([text], add_special_tokens=False, **kwargs))
        elif len(matches) == 1:
            match = matches[0]
            pre = self.tokenizer(text[: match.start()], add_special_tokens=False, **kwargs)
            post = self.tokenizer(text[match.end():], add_special_tokens=False, **kwargs)
            data["input_ids"] = [pre.input_ids + post.input_ids]
            data["attention_mask"] = [pre.attention_mask + post.attention_mask]
            data["audio_start_idx"] = [len(pre.input_ids)]
        else:
            raise ValueError(f"Multiple audio placeholders (found {len(matches)}) are not supported yet.")
        return transformers.BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


UltravoxProcessor.register_for_auto_class()
transformers.AutoProcessor.register(UltravoxConfig, UltravoxProcessor)
