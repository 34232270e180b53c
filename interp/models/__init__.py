"""Model-family adapters, one thin file each, and the registry that picks one for a path.

`load_model(path)` reads the checkpoint's `config.json`, finds the adapter whose
`model_types` include its `model_type`, and loads it. `FAMILIES` maps family names (as
used by `interp models make-tiny FAMILY`) to adapter classes.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from interp.errors import InterpError
from interp.models.base import AudioSpan, Batch, SpeechLM

# family name -> "module:Class"; imported lazily so a missing optional class only
# affects its own family.
_REGISTRY = {
    "qwen2-audio": "interp.models.qwen2_audio:Qwen2Audio",
    "ultravox": "interp.models.ultravox:Ultravox",
    "phi4-mm": "interp.models.phi4_multimodal:Phi4Multimodal",
    "voxtral": "interp.models.voxtral:Voxtral",
    "granite-speech": "interp.models.granite_speech:GraniteSpeech",
    "audioflamingo3": "interp.models.audioflamingo3:AudioFlamingo3",
    "whisper": "interp.models.whisper:Whisper",
}


def _available() -> dict[str, str]:
    out = {}
    for name, target in _REGISTRY.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out[name] = target
    return out


def family_names() -> list[str]:
    return list(_available())


def get_family(name: str) -> type[SpeechLM]:
    table = _available()
    if name not in table:
        raise InterpError(f"unknown model family '{name}'; supported: {', '.join(table)}")
    module, cls = table[name].split(":")
    return getattr(importlib.import_module(module), cls)


def families() -> dict[str, type[SpeechLM]]:
    return {name: get_family(name) for name in _available()}


def detect_family(path: str | Path) -> type[SpeechLM]:
    """The adapter class for a local checkpoint folder, from its config.json."""
    path = Path(path)
    supported = ", ".join(_available())
    config_file = path / "config.json"
    if not path.exists():
        raise InterpError(f"model path not found: {path}; give a local checkpoint folder of one of: {supported}")
    if not config_file.is_file():
        raise InterpError(f"{path} is not a checkpoint folder (no config.json); give a local checkpoint of one of: {supported}")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InterpError(f"{config_file} is not valid JSON; the checkpoint is damaged") from None
    model_type = config.get("model_type", "")
    for cls in families().values():
        if model_type in cls.model_types:
            return cls
        if model_type in cls.unsupported_model_types:
            raise InterpError(cls.unsupported_model_types[model_type].format(path=path))
    raise InterpError(f"{path} holds a '{model_type or 'unknown'}' model, which is not supported; supported families: {supported}")


#: Accelerate's ways to spread a model over devices (`from_pretrained(device_map=...)`)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def load_model(path: str | Path, dtype="auto", device: str = "auto", device_map=None, audio_model=None,
               text_model=None, max_memory: dict | None = None) -> SpeechLM:
    """Load a speech LLM (or Whisper) from a local folder with the right adapter, in `dtype`
    ("auto": `resolve_dtype`'s rule, bfloat16 on CUDA, float32 elsewhere).

    `device_map` ("auto", "balanced", "sequential" or a dict) spreads a model too large for one
    GPU over the visible ones (Accelerate's dispatch; `max_memory`, e.g. {0: "70GiB", 1: "70GiB"},
    caps each device); it replaces `device`.

    `audio_model` / `text_model`: local folders of the base models a checkpoint names by hub
    id (Ultravox's `audio_model_id` / `text_model_id`), where they are not in the HF cache."""
    from interp.models.base import resolve_device

    device = resolve_device(device)
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise InterpError(f"--device-map '{device_map}' is not one of {', '.join(DEVICE_MAPS)}")
    if max_memory and device_map is None:
        raise InterpError("--max-memory caps the devices of a device map; add --device-map auto")
    cls = detect_family(path)
    bases = {k: v for k, v in (("audio_model", audio_model), ("text_model", text_model)) if v is not None}
    if bases and not cls.names_base_models:
        raise InterpError(f"--audio-model / --text-model apply to checkpoints that name base models by id "
                          f"(Ultravox); {path} is a {cls.family} checkpoint")
    try:
        if max_memory:
            bases["max_memory"] = max_memory
        return cls.load(path, dtype=dtype, device=device, device_map=device_map, **bases)
    except InterpError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InterpError(f"cannot load {cls.family} checkpoint at {path}: {first}") from None


__all__ = ["AudioSpan", "Batch", "SpeechLM", "detect_family", "families", "family_names", "get_family", "load_model"]
