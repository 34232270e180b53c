"""A speech LLM's text backbone as a standalone causal-LM checkpoint.

The decoder of a speech LLM (everything from the token embedding to the unembedding, minus
the audio encoder and projector) is an ordinary causal LM. Saving it with its tokenizer
gives the exactly matched cascade backbone as a plain `AutoModelForCausalLM` folder, e.g.
for a cascade on another machine or for text-only tools.
"""

from __future__ import annotations

from pathlib import Path


from interp.errors import InterpError
from interp.models.base import SpeechLM


def extract_language_model(adapter: SpeechLM, out: str | Path) -> Path:
    """Write the adapter's decoder + unembedding as a causal-LM checkpoint with its tokenizer."""
    from transformers import AutoModelForCausalLM

    config = getattr(adapter.model.config, "text_config", None)
    if config is None:
        raise InterpError(f"{adapter.family} keeps no separate text config; its checkpoint is already a causal LM")
    base_path = adapter.layers_path.rsplit(".", 1)[0]  # the module holding embed_tokens, layers, norm
    base = adapter.module(base_path)
    lm = AutoModelForCausalLM.from_config(config).to(adapter.dtype).eval()
    state = {f"model.{k}": v for k, v in base.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in adapter.unembed.state_dict().items()})
    missing, unexpected = lm.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise InterpError(f"{adapter.family}'s decoder does not map onto {type(lm).__name__}: "
                          f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    lm.generation_config = adapter.model.generation_config
    out = Path(out)
    lm.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    return out
