"""Shipped organisms: the trained projectors inside the package, and `interp organisms get`.

Each organism's trained projector ships in `interp/organisms/weights/NAME/` as
`projector.safetensors` (float16, a few MB) beside `build.json` (the recipe, the sha256 of
every file of the base models it was trained against, the build's timings and loss curve).
`get_organism` materialises a checkpoint folder in the released Ultravox layout from them, with
no training: `config.json` naming the base models by hub id (`openai/whisper-tiny.en`,
`HuggingFaceTB/SmolLM2-135M-Instruct`), `model.safetensors` holding the projector only,
tokenizer and feature-extractor files, and `build.json`. Those ids resolve offline: the
Ultravox loader looks in the Hugging Face cache first, then in `interp models get`'s cache,
converting a base model there on first use (`interp.models.pretrained.find_by_hub_id`), so
every `interp` command loads the folder with no extra options. `get` checks that the cached
base models are the very files the projector was trained against.

`export_weights` turns a built folder (`interp organisms build`) into the shipped files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from interp.errors import InterpError

WEIGHTS_DIR = Path(__file__).with_name("weights")
PROJECTOR_FILE = "projector.safetensors"
RECORD_FILE = "build.json"
ORGANISM_RECORD = "interp-organism.json"


def shipped_dir(name: str) -> Path:
    from interp.organisms.recipe import get_recipe

    get_recipe(name)  # a clear error for an unknown name
    folder = WEIGHTS_DIR / name
    if not (folder / PROJECTOR_FILE).is_file() or not (folder / RECORD_FILE).is_file():
        raise InterpError(f"organism '{name}' has no shipped weights in {folder}; build it with "
                          f"`interp organisms build {name} --out DIR`")
    return folder


def shipped_record(name: str) -> dict:
    return json.loads((shipped_dir(name) / RECORD_FILE).read_text())


def organism_path(name: str, cache=None) -> Path:
    from interp.models.pretrained import cache_root

    return cache_root(cache) / "organisms" / name


def export_weights(built: str | Path, dest: str | Path) -> Path:
    """The shipped form of a built organism folder: its projector in float16 and its build record."""
    from safetensors.torch import load_file, save_file

    built, dest = Path(built), Path(dest)
    state = load_file(str(built / "model.safetensors"))
    projector = {k: v.to(torch.float16).contiguous() for k, v in state.items() if k.startswith("multi_modal_projector.")}
    if not projector or len(projector) != len(state):
        raise InterpError(f"{built}/model.safetensors should hold the projector only; is it an organism build?")
    dest.mkdir(parents=True, exist_ok=True)
    save_file(projector, str(dest / PROJECTOR_FILE), metadata={"format": "pt"})
    shutil.copyfile(built / RECORD_FILE, dest / RECORD_FILE)
    return dest


def _check_base(name: str, record: dict, cache=None) -> dict:
    """The base models' folders, refused if their files are not the ones the organism was trained on."""
    from interp.models.pretrained import get_pretrained
    from interp.organisms.build import base_hashes

    folders = {}
    for base, meta in record["base_models"].items():
        got = get_pretrained(base, cache=cache)
        if base_hashes(got.record) != meta["files"]:
            raise InterpError(f"the cached {base} ({got.path}) is not the model organism '{name}' was trained "
                              f"against (its files' hashes differ); run `interp models get {base} --force`")
        folders[base] = got.path
    return folders


def get_organism(name: str, out: str | Path | None = None, cache=None, force: bool = False) -> Path:
    """A checkpoint folder of the shipped organism NAME (made once; later calls check it)."""
    from safetensors.torch import load_file

    from interp.models.pretrained import sha256_file

    folder = shipped_dir(name)
    record = shipped_record(name)
    projector_hash = sha256_file(folder / PROJECTOR_FILE)
    final = Path(out) if out is not None else organism_path(name, cache)
    mark = final / ORGANISM_RECORD
    if final.exists() and not force:
        try:
            done = json.loads(mark.read_text())
        except (OSError, ValueError):
            raise InterpError(f"{final} exists and is not an organism folder made by `interp organisms get`; "
                              f"remove it or pass --force") from None
        if done.get("projector_sha256") == projector_hash and (final / "model.safetensors").is_file():
            _check_base(name, record, cache)
            return final
    bases = _check_base(name, record, cache)
    from interp.organisms.recipe import Recipe

    recipe = Recipe.from_json(record["recipe"])
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        model, processor = _assemble(recipe, bases[recipe.audio_model], bases[recipe.text_model])
        state = load_file(str(folder / PROJECTOR_FILE))
        with torch.no_grad():
            for key, tensor in state.items():
                model.get_parameter(key).copy_(tensor.to(torch.float32))
        from interp.atomic import write_json
        from interp.models.ultravox_checkpoint import save_ultravox

        save_ultravox(model, processor, partial, audio_model_id=recipe.audio_model_id,
                      text_model_id=recipe.text_model_id)
        shutil.copyfile(folder / RECORD_FILE, partial / RECORD_FILE)
        write_json(partial / ORGANISM_RECORD, {"organism": name, "projector_sha256": projector_hash,
                                               "base_models": {k: str(v) for k, v in bases.items()}})
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def _assemble(recipe, audio_dir: Path, text_dir: Path):
    """An Ultravox model of the recipe's shape around the base models' configs (base weights are not
    loaded: the saved folder names them by id) and its processor."""
    from transformers import AutoConfig, AutoTokenizer, WhisperFeatureExtractor

    from interp.models.ultravox_checkpoint import _empty_model
    from interp.models.ultravox_modeling import UltravoxConfig, UltravoxProcessor

    audio_config = AutoConfig.from_pretrained(str(audio_dir))
    text_config = AutoConfig.from_pretrained(str(text_dir))
    config = UltravoxConfig(audio_config=audio_config,
                            text_config=text_config, hidden_size=recipe.projector_hidden,
                            stack_factor=recipe.stack_factor, projector_ln_mid=True,
                            pad_token_id=text_config.pad_token_id if text_config.pad_token_id is not None
                            else text_config.eos_token_id)
    model = _empty_model(config, torch.float32)
    processor = UltravoxProcessor(WhisperFeatureExtractor.from_pretrained(str(audio_dir)),
                                  AutoTokenizer.from_pretrained(str(text_dir)), stack_factor=recipe.stack_factor,
                                  audio_context_size=config.audio_config.max_source_positions * 2)
    return model, processor
