"""Ultravox checkpoint folders: load one without running its code; build and save one.

A released folder holds `config.json` (`model_type` "ultravox"), safetensors, tokenizer
files and the checkpoint's own Python code, which is never imported here. Its config may name
base models by hub id: `text_model_id` (the Llama; then `text_config` is left out) and
`audio_model_id` (the Whisper; then `audio_config` is left out). The folder's safetensors
hold what training changed: the projector always, the audio encoder when it was fine-tuned
(v0.5 and v0.6 releases), everything when no id is named. The model is assembled like the
released code does: base weights first, the folder's weights over them.

Base models named by id come from the local Hugging Face cache (offline: `HF_HUB_CACHE`, as
`huggingface_hub` lays it out), else, for the ids of models `interp models get` builds, from its
cache (converted on first use), or from a local folder given as `audio_model` / `text_model`
(the CLI's `--audio-model PATH` / `--text-model PATH`). The audio feature extractor comes from
the folder's own `preprocessor_config.json`, else from the Whisper model's folder, else is
Whisper's standard one for the config's mel count (every openai/whisper-* checkpoint uses
the same settings apart from that count).

`build_ultravox` assembles a new model from a Whisper encoder and a causal LM (a fresh
projector between them) and `save_ultravox` writes any `UltravoxModel` as a folder in the
released layout.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import torch

from interp.errors import InterpError
from interp.models.ultravox_modeling import UltravoxConfig, UltravoxModel, UltravoxProcessor

_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
#: Prefixes of a Whisper checkpoint's encoder weights (WhisperForConditionalGeneration, WhisperModel).
_WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.")
_PARTS = {"audio_tower.": "audio encoder", "multi_modal_projector.": "projector", "language_model.": "language model"}


def read_config(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        raise InterpError(f"{path}: no readable config.json; give an Ultravox checkpoint folder") from None


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def find_base_model(name: str | None) -> Path | None:
    """A base model's local folder: `name` itself if it is one, else its snapshot in the HF cache,
    else, for a model `interp models get` can build (openai/whisper-tiny.en,
    HuggingFaceTB/SmolLM2-135M-Instruct), its folder in that cache, converted on first use."""
    if not name:
        return None
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        pass
    from interp.models.pretrained import find_by_hub_id

    return find_by_hub_id(name)


def _given(path, option: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InterpError(f"{option} {path}: not a model folder (no config.json)")
    return path


def resolve_config(path: str | Path, audio_model=None, text_model=None) -> tuple[UltravoxConfig, Path | None, Path | None]:
    """The checkpoint's config with its base models' configs filled in, and the base models'
    folders (None where the config names no id). One InterpError line names every base model
    that is named by id but cannot be found."""
    from transformers import AutoConfig

    raw = read_config(path)
    if raw.get("model_type") != "ultravox":
        raise InterpError(f"{path} holds a '{raw.get('model_type')}' model, not Ultravox")
    if raw.get("num_projector_layers"):
        raise InterpError(f"{path}: transformer projectors (num_projector_layers) are not supported")
    audio_given, text_given = _given(audio_model, "--audio-model"), _given(text_model, "--text-model")
    missing = []
    dirs = {}
    for part, option, given in (("audio", "--audio-model", audio_given), ("text", "--text-model", text_given)):
        repo = raw.get(f"{part}_model_id")
        if not repo:
            dirs[part] = None
            continue
        dirs[part] = given or find_base_model(repo)
        if dirs[part] is None:
            what = "audio encoder" if part == "audio" else "language model"
            missing.append(f"its {what} '{repo}' ({option} PATH)")
    if missing:
        raise InterpError(f"{path} loads base weights by hub id and these are not in the local Hugging Face cache "
                          f"({hub_cache()}): {' and '.join(missing)}; download them there or give the folders with "
                          "the options named")
    fields = {k: v for k, v in raw.items() if k not in ("auto_map", "custom_pipelines", "architectures",
                                                          "transformers_version", "torch_dtype", "dtype")}
    for part in ("audio", "text"):
        if dirs[part] is not None:
            fields[f"{part}_config"] = AutoConfig.from_pretrained(dirs[part], trust_remote_code=False)
        elif not raw.get(f"{part}_config"):
            raise InterpError(f"{path}: config.json has neither {part}_model_id nor {part}_config")
    config = UltravoxConfig(**fields)
    return config, dirs["audio"], dirs["text"]


def _weight_files(folder: Path) -> list[Path]:
    for index in _WEIGHT_INDEXES:
        if (folder / index).is_file():
            shards = json.loads((folder / index).read_text())["weight_map"].values()
            return [folder / name for name in dict.fromkeys(shards)]
    return [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()][:1]


def _keys(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            return list(f.keys())
    return list(torch.load(file, map_location="cpu", weights_only=True, mmap=True).keys())


def _tensors(file: Path, names: Iterable[str]):
    names = list(names)
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            for name in names:
                yield name, f.get_tensor(name)
    else:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        for name in names:
            yield name, state[name]


def _whisper_encoder_key(key: str) -> str | None:
    for prefix in _WHISPER_ENCODER_PREFIXES:
        if key.startswith(prefix):
            return "audio_tower." + key[len(prefix):]
    if key.split(".")[0] in ("conv1", "conv2", "embed_positions", "layers", "layer_norm"):
        return "audio_tower." + key  # an encoder saved on its own
    return None


@contextmanager
def _empty_init(dtype: torch.dtype):
    """Build modules without running weight initialisers (every weight is loaded next)."""
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def _empty_model(config: UltravoxConfig, dtype: torch.dtype) -> UltravoxModel:
    config.dtype = config.audio_config.dtype = config.text_config.dtype = dtype
    with _empty_init(dtype):
        return UltravoxModel(config)


def load_ultravox(path: str | Path, dtype: torch.dtype = torch.float32, audio_model=None,
                  text_model=None) -> tuple[UltravoxModel, UltravoxProcessor]:
    """Model (eval mode, on CPU) and processor of an Ultravox checkpoint folder."""
    path = Path(path)
    config, audio_dir, text_dir = resolve_config(path, audio_model, text_model)
    model = _empty_model(config, dtype)
    expected = model.state_dict()
    # target key -> (file, key in file); the folder's own weights are read last and win
    plan: dict[str, tuple[Path, str]] = {}
    if audio_dir is not None:
        for file in _weight_files(audio_dir):
            for key in _keys(file):
                target = _whisper_encoder_key(key)
                if target is not None:
                    plan[target] = (file, key)
    if text_dir is not None:
        for file in _weight_files(text_dir):
            plan.update({"language_model." + key: (file, key) for key in _keys(file)})
    folder_files = _weight_files(path)
    if not folder_files:
        raise InterpError(f"{path}: no model.safetensors (or index of shards) in the checkpoint folder")
    unexpected = []
    for file in folder_files:
        for key in _keys(file):
            (plan.__setitem__(key, (file, key)) if key in expected else unexpected.append(key))
    if unexpected:
        raise InterpError(f"{path}: {len(unexpected)} weights this implementation has no place for, e.g. "
                          f"{unexpected[0]} (unmerged LoRA weights or another architecture)")
    tied = {"language_model.lm_head.weight"} if config.text_config.tie_word_embeddings else set()
    plan = {k: v for k, v in plan.items() if k in expected and k not in tied}
    missing = sorted(set(expected) - set(plan) - tied)
    if missing:
        parts = sorted({name for prefix, name in _PARTS.items() for k in missing if k.startswith(prefix)})
        raise InterpError(f"{path}: the weights of its {' and '.join(parts)} are missing ({len(missing)} tensors, "
                          f"e.g. {missing[0]}): the checkpoint is incomplete")
    by_file: dict[Path, dict[str, str]] = {}
    for target, (file, key) in plan.items():
        by_file.setdefault(file, {})[key] = target
    with torch.no_grad():
        for file, names in by_file.items():
            for key, tensor in _tensors(file, names):
                param = expected[names[key]]
                if param.shape != tensor.shape:
                    raise InterpError(f"{file}: {key} has shape {tuple(tensor.shape)}, the config gives "
                                      f"{tuple(param.shape)}")
                param.copy_(tensor)
    if tied:
        model.language_model.tie_weights()
    model.eval()
    # a Whisper folder given for a checkpoint that holds its encoder still serves its feature extractor
    audio_dir = audio_dir or _given(audio_model, "--audio-model")
    return model, load_processor(path, config, audio_dir, text_dir or _given(text_model, "--text-model"))


def load_processor(path: str | Path, config: UltravoxConfig, audio_dir: Path | None = None,
                   text_dir: Path | None = None) -> UltravoxProcessor:
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    path = Path(path)
    if audio_dir is None:  # weights in the folder; the Whisper it came from may still be at hand
        audio_dir = find_base_model(getattr(config.audio_config, "_name_or_path", None))
    for folder in (path, audio_dir):
        if folder is not None and (folder / "preprocessor_config.json").is_file():
            feature_extractor = WhisperFeatureExtractor.from_pretrained(folder)
            break
    else:
        feature_extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
    source = path if any((path / f).is_file() for f in _TOKENIZER_FILES) else text_dir
    if source is None:
        raise InterpError(f"{path}: no tokenizer files in the checkpoint folder")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    # as the released processor's from_pretrained sets them
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    # The encoder's window in mel frames: what fixie's pipeline passes; its processor's own
    # default (3000) is the same for every Whisper.
    window = config.audio_config.max_source_positions * 2
    return UltravoxProcessor(feature_extractor, tokenizer, stack_factor=config.stack_factor, audio_context_size=window,
                             audio_token_index=config.audio_token_index)


def build_ultravox(audio_encoder, language_model, *, hidden_size: int = 4096, stack_factor: int = 8,
                   norm_init: float = 0.4, projector_ln_mid: bool = True, audio_token_index: int | None = None,
                   seed: int | None = None) -> UltravoxModel:
    """A new UltravoxModel from a Whisper encoder (or a Whisper model holding one) and a causal
    LM, with a freshly initialised projector (the released code's init: normal(0, the LM's
    initializer_range) linears, norms at `norm_init`). The language model is used as given
    (not copied); the encoder's weights are copied into Ultravox's encoder class."""
    encoder = getattr(audio_encoder, "model", audio_encoder)
    encoder = getattr(encoder, "encoder", encoder)
    text_config = copy.deepcopy(language_model.config)
    config = UltravoxConfig(audio_config=copy.deepcopy(encoder.config), text_config=text_config,
                            hidden_size=hidden_size, stack_factor=stack_factor, norm_init=norm_init,
                            projector_ln_mid=projector_ln_mid, audio_token_index=audio_token_index,
                            pad_token_id=text_config.pad_token_id if text_config.pad_token_id is not None
                            else text_config.eos_token_id)
    dtype = next(language_model.parameters()).dtype
    with _empty_init(dtype):
        model = UltravoxModel(config)
    model.audio_tower.load_state_dict(encoder.state_dict())
    model.language_model = language_model
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for module in model.multi_modal_projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, config.initializer_range, generator=generator)
            elif hasattr(module, "variance_epsilon"):  # the projector's RMSNorms
                module.weight.fill_(norm_init)
    return model.eval()


def save_ultravox(model: UltravoxModel, processor: UltravoxProcessor, out: str | Path, *,
                  audio_model_id: str | None = None, text_model_id: str | None = None) -> Path:
    """Write `model` as a released Ultravox folder: config.json, model.safetensors, tokenizer
    and feature-extractor files. A part given an id (`audio_model_id`, `text_model_id`) is
    named by it and left out of the safetensors, as the released checkpoints do with their
    frozen Llama; its weights must then be those of the named model. Files are written to a
    temporary folder first and moved into `out`."""
    from safetensors.torch import save_file

    out = Path(out)
    config = copy.deepcopy(model.config)
    config.audio_model_id, config.text_model_id = audio_model_id, text_model_id
    config.dtype = next(model.parameters()).dtype
    skip = tuple(p for p, named in (("audio_tower.", audio_model_id), ("language_model.", text_model_id)) if named)
    if model.config.text_config.tie_word_embeddings:
        skip += ("language_model.lm_head.weight",)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ultravox-", dir=out))
    try:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config.released_dict(), indent=2, sort_keys=True) + "\n")
        processor.tokenizer.save_pretrained(tmp)
        processor.feature_extractor.save_pretrained(tmp)
        for file in tmp.iterdir():
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
