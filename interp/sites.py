"""Named sites: where in a model an intervention reads or writes, in TransformerLens' words.

A site name says what a place is, not where a family keeps it; each family's adapter
declares the modules (`layers_path`, `attn_name`, `mlp_name`, `encoder_layers_path`,
`projector_path`) and `resolve_site` turns a name into the module and whether its input or
output is meant:

- `blocks.{i}.hook_resid_pre`: the residual entering decoder block i (its input);
- `blocks.{i}.hook_resid_post`: the residual leaving decoder block i (its output; what
  `interp trace` stores as layer i, and what `layers=[i]` of an intervention means);
- `blocks.{i}.attn.hook_out`, `blocks.{i}.mlp.hook_out`: what block i's self-attention and
  MLP add to the residual (their outputs, before the residual sum);
- `audio_encoder.blocks.{i}`: the output of audio-encoder block i (over encoder frames);
- `projector.hook_out`: the audio projector's output, the audio embeddings before they
  replace the placeholder tokens.

Block indices may be negative (from the end), as everywhere (`interp.layers`). Decoder sites
run at every generation step; the audio encoder and projector run on the prompt only
(`Site.prompt_only`), so an intervention there acts once, on the prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from interp.errors import InterpError
from interp.layers import block_index

PATTERNS = ("blocks.{i}.hook_resid_pre", "blocks.{i}.hook_resid_post", "blocks.{i}.attn.hook_out",
            "blocks.{i}.mlp.hook_out", "audio_encoder.blocks.{i}", "projector.hook_out")
_BLOCK = re.compile(r"^blocks\.(-?\d+)\.(hook_resid_pre|hook_resid_post|attn\.hook_out|mlp\.hook_out)$")
_ENCODER = re.compile(r"^audio_encoder\.blocks\.(-?\d+)$")
#: execution order inside decoder block i: its input, attention, MLP, its output
_IN_BLOCK = {"hook_resid_pre": 0, "attn.hook_out": 1, "mlp.hook_out": 2, "hook_resid_post": 3}


@dataclass(frozen=True)
class Site:
    """A resolved site of one model."""

    name: str
    """Canonical name, block index resolved (`blocks.3.hook_resid_post`)."""
    module: str
    """Dotted path of the module from the model (as the adapter declares it)."""
    io: str
    """"input" or "output": which side of the module is the site."""
    stream: str
    """"decoder", "encoder" or "projector"."""
    layer: int | None
    """Block index (decoder or encoder), None for the projector."""
    order: tuple
    """Where the model computes it in a forward pass (sites are visited in this order)."""

    @property
    def prompt_only(self) -> bool:
        """The audio encoder and projector run on the prompt only, not on generated tokens."""
        return self.stream != "decoder"

    @property
    def key(self):
        """How per-site tables (means, sources, records) name it: the block index for a block's
        output (the `layers=[...]` shorthand), else the site's name."""
        return self.layer if self.name.endswith("hook_resid_post") else self.name


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def resolve_site(adapter, name: str) -> Site:
    """The module and side of `name` in `adapter`'s model; one line naming the choices otherwise."""
    name = str(name).strip()
    m = _BLOCK.match(name)
    if m:
        i = block_index(m.group(1), adapter.n_layers)
        part = m.group(2)
        block = f"{adapter.layers_path}.{i}"
        if part.startswith("hook_resid"):
            module, io = block, "input" if part == "hook_resid_pre" else "output"
        else:
            child = adapter.attn_name if part.startswith("attn") else adapter.mlp_name
            if child is None:
                raise InterpError(f"{adapter.family} has no {part.split('.')[0]} module to hook in its blocks; "
                                  "use blocks.{i}.hook_resid_pre or hook_resid_post")
            module, io = f"{block}.{child}", "output"
        return Site(f"blocks.{i}.{part}", module, io, "decoder", i, (2, i, _IN_BLOCK[part]))
    m = _ENCODER.match(name)
    if m:
        if adapter.encoder_layers_path is None:
            raise InterpError(f"{adapter.family} exposes no audio encoder layers")
        i = block_index(m.group(1), len(adapter.module(adapter.encoder_layers_path)))
        return Site(f"audio_encoder.blocks.{i}", f"{adapter.encoder_layers_path}.{i}", "output", "encoder", i, (0, i))
    if name == "projector.hook_out":
        if adapter.projector_path is None:
            raise InterpError(f"{adapter.family} has no audio projector (its decoder reads audio by cross-attention)")
        return Site(name, adapter.projector_path, "output", "projector", None, (1,))
    raise InterpError(f"unknown site '{name}'; use one of {', '.join(PATTERNS)} (i a block index)")
