"""A LoRA adapter saved by peft (`adapter_config.json` + `adapter_model.safetensors`), applied to
a model's linear layers without peft.

Why not peft itself: transformers 5's `load_adapter` refuses peft older than 0.22, and a checkpoint
such as Phi-4-multimodal only answers speech prompts as trained with its speech LoRA on. The math
is small and fixed, so it is done here: each targeted `nn.Linear` is wrapped in a `LoraLinear`
computing peft's vanilla LoRA forward, `base(x) + lora_B(lora_A(x)) * scaling` with
`scaling = lora_alpha / r` (`lora_alpha / sqrt(r)` under rsLoRA), in the adapter's dtype and
cast back to the base output's dtype, exactly as `peft.tuners.lora.layer.Linear.forward` does at
inference (dropout is the identity in eval mode). The adapter's weights take the base layer's dtype
and device, as they do under transformers' `load_adapter`. The adapter is kept unmerged, as transformers'
`load_adapter` recipe and the original remote code keep it, so it can be switched off exactly:
`with adapter.disabled(): ...` runs the base weights untouched.

Which modules are targeted follows peft's rules for `target_modules` (a string is a full regex
match on the module name; a list matches a name or a dotted suffix). Tensor names are accepted
in the three layouts in use: peft's `save_pretrained` (`base_model.model.<module>.lora_A.weight`),
transformers' conversion of Phi-4-multimodal (`<module>.lora_A.weight`) and the original
remote-code checkpoint (`<module>.lora_A.speech.weight`). A targeted module with no weights
(missing) or a weight that lands on no targeted module (unexpected) is an error naming them, and
an adapter whose B matrices are all zero (peft's initialisation: an untrained adapter that
changes nothing) is refused. Features beyond vanilla LoRA on linear layers (DoRA, LoRA bias,
modules_to_save, fan_in_fan_out, layer replication) are refused rather than half-applied.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from interp.errors import InterpError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# base_model.model.<module>.lora_A[.<adapter name>].weight
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


class LoraLinear(nn.Module):
    """A linear layer with a LoRA update beside it: peft's `lora.Linear` at inference, one adapter."""

    def __init__(self, base_layer: nn.Linear, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float):
        super().__init__()
        self.base_layer = base_layer  #: the original linear layer, weights untouched
        r = lora_A.shape[0]
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=lora_A.device, dtype=lora_A.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=lora_B.device, dtype=lora_B.dtype)
        with torch.no_grad():
            self.lora_A.weight.copy_(lora_A)
            self.lora_B.weight.copy_(lora_B)
        self.scaling = float(scaling)  #: lora_alpha / r (or / sqrt(r) under rsLoRA)
        self.enabled = True  #: False runs the base layer alone

    # Code that reads a linear layer's shape keeps working on the wrapper.
    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if not self.enabled:
            return result
        out_dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype)
        return (result + self.lora_B(self.lora_A(x)) * self.scaling).to(out_dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A: what merging this adapter would add to the base weight."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)


@dataclass
class LoraAdapter:
    """A LoRA adapter applied to a model: the wrapped modules and where it came from."""

    path: str  #: folder holding adapter_config.json and adapter_model.safetensors
    name: str  #: short name (e.g. "speech")
    r: int  #: rank from the config (per-module ranks may differ under rank_pattern)
    lora_alpha: float  #: alpha from the config
    modules: dict[str, LoraLinear] = field(default_factory=dict)  #: module name -> wrapper

    @property
    def enabled(self) -> bool:
        return all(m.enabled for m in self.modules.values())

    def set_enabled(self, on: bool) -> None:
        for m in self.modules.values():
            m.enabled = bool(on)

    @contextlib.contextmanager
    def disabled(self):
        """Run the base model: every wrapped layer computes its original output exactly."""
        before = {k: m.enabled for k, m in self.modules.items()}
        self.set_enabled(False)
        try:
            yield self
        finally:
            for k, m in self.modules.items():
                m.enabled = before[k]

    def describe(self) -> dict:
        return {"path": self.path, "name": self.name, "r": self.r, "lora_alpha": self.lora_alpha,
                "n_modules": len(self.modules), "enabled": self.enabled}


def read_adapter_config(folder: str | Path) -> dict:
    folder = Path(folder)
    cfg_file = folder / ADAPTER_CONFIG
    try:
        cfg = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise InterpError(f"{folder} has no {ADAPTER_CONFIG}; the LoRA adapter folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InterpError(f"{cfg_file} is not valid JSON; the LoRA adapter is damaged") from None
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InterpError(f"{cfg_file} is a {peft_type} adapter; only LoRA adapters are supported")
    unsupported = [k for k in ("use_dora", "lora_bias", "fan_in_fan_out") if cfg.get(k)]
    unsupported += [k for k in ("modules_to_save", "layer_replication", "target_parameters", "layers_to_transform")
                    if cfg.get(k)]
    if unsupported:
        raise InterpError(f"{cfg_file} uses {', '.join(unsupported)}, which this loader does not apply; "
                          "only vanilla LoRA on linear layers is supported")
    for k in ("r", "lora_alpha", "target_modules"):
        if cfg.get(k) in (None, "", []):
            raise InterpError(f"{cfg_file} has no '{k}'; the LoRA adapter config is incomplete")
    return cfg


def _targeted(cfg: dict, name: str) -> bool:
    """peft's `check_target_module_exists` for target_modules / exclude_modules."""
    def matches(spec) -> bool:
        if isinstance(spec, str):
            return re.fullmatch(spec, name) is not None
        return name in spec or any(name.endswith(f".{t}") for t in spec)

    exclude = cfg.get("exclude_modules")
    if exclude and matches(exclude):
        return False
    return matches(cfg["target_modules"])


def _pattern_value(pattern: dict, name: str, default):
    """peft's rank_pattern / alpha_pattern lookup: the first key matching the end of the module name."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _short(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" (+{len(names) - k} more)" if len(names) > k else "")


def apply_lora(model: nn.Module, folder: str | Path, name: str = "lora") -> LoraAdapter:
    """Wrap every linear layer the adapter in `folder` targets; return the applied adapter."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_adapter_config(folder)
    weights_file = folder / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise InterpError(f"{folder} has no {ADAPTER_WEIGHTS}; the LoRA adapter's weights are missing")
    tensors = load_file(str(weights_file))

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None or (m["name"] is not None and m["name"] not in (name, "default")):
            unexpected.append(key)
            continue
        pairs.setdefault(m["module"], {})[m["ab"]] = value

    modules = dict(model.named_modules())
    targeted = [n for n, mod in modules.items() if isinstance(mod, nn.Linear) and _targeted(cfg, n)]
    if not targeted:
        raise InterpError(f"the LoRA in {folder} targets {cfg['target_modules']!r}, which matches no linear layer "
                          f"of {type(model).__name__}; the adapter belongs to another model")
    unexpected += [f"{n}.lora_{ab}" for n, ab_map in pairs.items() if n not in targeted for ab in sorted(ab_map)]
    unexpected += [f"{n}.lora_{'B' if 'A' in ab_map else 'A'} (its pair is absent)" for n, ab_map in pairs.items()
                   if n in targeted and len(ab_map) != 2]
    missing = [n for n in targeted if n not in pairs]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} targeted layer(s) have no LoRA weights, e.g. {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {_short(unexpected)}")
        raise InterpError(f"the LoRA in {folder} does not fit {type(model).__name__}: {'; '.join(parts)}")

    r_default, alpha_default = int(cfg["r"]), float(cfg["lora_alpha"])
    if all(not torch.any(pairs[n]["B"]) for n in targeted) or all(not torch.any(pairs[n]["A"]) for n in targeted):
        raise InterpError(f"the LoRA in {folder} is all zeros (B @ A = 0 in every layer: an untrained adapter, "
                          "which would silently run the base model); use the released adapter weights")
    adapter = LoraAdapter(str(folder), name, r_default, alpha_default)
    for n in targeted:
        base = modules[n]
        a, b = pairs[n]["A"], pairs[n]["B"]
        r = int(_pattern_value(cfg.get("rank_pattern"), n, r_default))
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), n, alpha_default))
        if a.shape != (r, base.in_features) or b.shape != (base.out_features, r):
            raise InterpError(f"the LoRA in {folder} has shapes A {tuple(a.shape)}, B {tuple(b.shape)} for {n}, "
                              f"but rank {r} on a {base.in_features} -> {base.out_features} layer needs "
                              f"A {(r, base.in_features)}, B {(base.out_features, r)}")
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        w = base.weight
        wrapper = LoraLinear(base, a.to(device=w.device, dtype=w.dtype), b.to(device=w.device, dtype=w.dtype), scaling)
        parent_name, _, child = n.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, wrapper)
        adapter.modules[n] = wrapper
    return adapter
