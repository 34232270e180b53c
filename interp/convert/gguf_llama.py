"""GGUF Llama (llama.cpp's single-file format, any of its quantisations) -> `LlamaForCausalLM`.

transformers reads GGUF itself (`from_pretrained(folder, gguf_file=NAME)`, through the `gguf`
package): it dequantises every tensor to float32, undoes llama.cpp's Q/K row permutation for
rotary embeddings, and rebuilds the config, tokenizer and chat template from the file's
metadata. That is the well-kept path, so this module uses it and does only what it leaves
undone: a gguf-loaded model refuses `save_pretrained` (it carries a GGUF quantisation config),
so the weights move into a plain `LlamaForCausalLM` built from the same config without it,
whose logits are identical. Weights stay float32: the dequantised values are exact there and
would be rounded in bfloat16.
"""

from __future__ import annotations

from pathlib import Path

from interp.errors import InterpError


def load_gguf(gguf_path: str | Path):
    """(model, tokenizer) as transformers loads a GGUF file, dequantised to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise InterpError(f"GGUF file not found: {gguf_path}")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise InterpError("reading GGUF needs the `gguf` package; pip install gguf") from None
    folder, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def plain_llama(model):
    """The same weights in a `LlamaForCausalLM` that saves like any checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        raise InterpError(f"the GGUF file holds a {type(model).__name__}; this converter writes Llama models only")
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        config.pop(key, None)
    config["architectures"] = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(LlamaConfig(**config)).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if plain.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise InterpError(f"the GGUF weights do not fit LlamaForCausalLM (missing {missing[:3]}, unexpected {unexpected[:3]})")
    plain.generation_config = model.generation_config
    return plain


def convert_gguf_llama(gguf_path: str | Path, out: str | Path) -> Path:
    """Write a `LlamaForCausalLM` folder (float32 safetensors, tokenizer, chat template) from a GGUF file."""
    model, tokenizer = load_gguf(gguf_path)
    plain = plain_llama(model)
    if not getattr(tokenizer, "chat_template", None):
        raise InterpError(f"{gguf_path} carries no chat template; the toolkit prompts LLMs through one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _drop_loader_keys(out / "tokenizer_config.json")
    return out


LOADER_KEYS = ("is_local", "local_files_only")  #: how the tokenizer was loaded (HF_HUB_OFFLINE sets one), not what it is


def _drop_loader_keys(path: Path) -> None:
    """Remove the loading call's arguments that transformers saves into tokenizer_config.json,
    so that the folder's bytes do not depend on the environment it was converted in."""
    import json

    config = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in config.items() if k not in LOADER_KEYS}, indent=2,
                               sort_keys=True, ensure_ascii=False) + "\n")
