"""Greedy decoding, identical on both sides of a speech-LLM / cascade comparison.

`generate` merges the call's arguments into the checkpoint's own `generation_config`, so a
checkpoint that ships `repetition_penalty` 1.05 (Audio Flamingo 3) or sampling would quietly
decode differently from the cascade it is compared with. Every behavioural run therefore passes
`GREEDY`: no sampling, one beam, no repetition or n-gram penalties. Sampling settings
(temperature, top-k, top-p) are inert once sampling is off, and are deliberately not passed:
Whisper's `generate` turns any temperature > 0 into sampling. What decoding then actually ran (the checkpoint's config with these overrides) is
described by `decoding_settings`, written into every prediction, and `interp compare` warns when
two systems' settings differ. Settings that only matter when sampling are recorded only when
sampling is on, so two greedy runs compare equal whatever their checkpoints ship for them.
"""

from __future__ import annotations

import copy

import torch

from interp.atomic import json_ready

#: generate() arguments of plain greedy decoding, overriding whatever a checkpoint ships
GREEDY = dict(do_sample=False, num_beams=1, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
              no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0)

# generation_config fields that change a greedy decode, with the value that means "off"
_GREEDY_FIELDS = {
    "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "length_penalty": 1.0,
    "guidance_scale": 1.0, "min_length": 0, "min_new_tokens": 0, "bad_words_ids": None, "sequence_bias": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "penalty_alpha": None, "dola_layers": None, "max_new_tokens": None,
}
_CORE = ("do_sample", "num_beams", "repetition_penalty", "no_repeat_ngram_size", "max_new_tokens")
_SAMPLING_FIELDS = {"temperature": 1.0, "top_k": None, "top_p": 1.0, "min_p": None, "typical_p": 1.0,
                    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None}


def greedy_kwargs(**overrides) -> dict:
    """`GREEDY` with the caller's generate() arguments on top."""
    return {**GREEDY, **overrides}


def decoding_settings(model: torch.nn.Module, generate_kwargs: dict, dtype: torch.dtype | None = None) -> dict:
    """The decoding a `model.generate(**generate_kwargs)` call runs: the checkpoint's generation
    config with the call's arguments applied, as a small JSON-ready dict (unset = off)."""
    config = copy.deepcopy(getattr(model, "generation_config", None))
    values = {}
    if config is not None:
        config.update(**{k: v for k, v in generate_kwargs.items() if hasattr(config, k)})
        values = {k: getattr(config, k, None) for k in (*_GREEDY_FIELDS, *_SAMPLING_FIELDS)}
    else:
        values = dict(generate_kwargs)
    fields = dict(_GREEDY_FIELDS)
    if values.get("do_sample"):
        fields |= _SAMPLING_FIELDS
    full = {key: off if values.get(key) is None else json_ready(values[key], strict=False) for key, off in fields.items()}
    strategy = "sample" if full["do_sample"] else ("beam" if full["num_beams"] > 1 else "greedy")
    # Compact: the core settings always, any other only where it is not off.
    out = {"strategy": strategy}
    out |= {k: v for k, v in full.items() if k in _CORE or v != fields[k]}
    if dtype is None:
        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None else None
    out["dtype"] = str(dtype).removeprefix("torch.") if dtype is not None else None
    return out


def differences(a: dict, b: dict) -> dict[str, tuple]:
    """Settings on which two recorded decodings differ: key -> (a's value, b's value); a setting
    left out of a record is off."""
    off = _GREEDY_FIELDS | _SAMPLING_FIELDS
    get = lambda d, k: d.get(k, off.get(k))  # noqa: E731
    return {k: (get(a, k), get(b, k)) for k in sorted(set(a) | set(b)) if get(a, k) != get(b, k)}
