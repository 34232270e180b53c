"""The one layer parser: `--layers` specs and single layers, as every tool reads them.

A spec is 'all', a comma-separated list ('0,4,8', 'embed,-1') or a sequence of ints and names.
Block indices count from 0; negative ones count back from the model's last block, so -1 is
the last block wherever a layer is accepted (tracing, reading a store, probes, the lens,
erasers, interventions). 'embed' is the input of block 0 (embeddings, audio merged in).
Names come back as strings: 'embed' first, then block indices ascending.
"""

from __future__ import annotations

from typing import Sequence

from interp.errors import InterpError

EMBED = "embed"


def parse_layers(spec: str | int | Sequence, n_layers: int, embed_by_default: bool = True,
                 in_range: bool = True) -> list[str]:
    """'all' | '0,4,8' | 'embed,-1' | [0, -1] -> layer names of a model with `n_layers` blocks.

    `in_range=False` lets indices past the last block through unchanged, for callers that
    check names against what they hold (a store names the layers it has)."""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
    elif isinstance(spec, int):
        parts = [str(spec)]
    else:
        parts = [str(p) for p in spec]
    if parts == ["all"]:
        return ([EMBED] if embed_by_default else []) + [str(i) for i in range(n_layers)]
    out: set[int] = set()
    embed = False
    for p in parts:
        if p == EMBED:
            embed = True
            continue
        out.add(block_index(p, n_layers, in_range))
    if not out and not embed:
        raise InterpError("no layers selected; use 'all' or indices like 0,4,8")
    return ([EMBED] if embed else []) + [str(i) for i in sorted(out)]


def block_index(layer: int | str, n_layers: int, in_range: bool = True) -> int:
    """One block index, negative ones counted back from the last of `n_layers` blocks."""
    try:
        i = int(layer)
    except (TypeError, ValueError):
        raise InterpError(f"bad layer '{layer}'; use 'all' or comma-separated block indices like 0,4,8 "
                          "(and 'embed')") from None
    if not in_range and i >= n_layers:
        return i
    if not -n_layers <= i < n_layers:
        raise InterpError(f"layer {i} is out of range: the model has {n_layers} blocks (0-{n_layers - 1}, "
                          "or negative from the end)")
    return i % n_layers
