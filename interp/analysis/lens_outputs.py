"""What the logit lens writes: JSON Lines per item and layer, and the implicit-cascade manifest.

`emit_manifest` writes a manifest whose transcripts are one layer's lens text, ready for
`interp cascade --transcripts PATH`; `layers_with_emit` makes sure that layer is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from interp.analysis.lens import LensResult, TokenForms
from interp.errors import InterpError


def write_lens(result: LensResult, path: str | Path, tokenizer) -> Path:
    """One JSON line per (item, layer), written atomically."""
    from interp.atomic import write_jsonl

    write_jsonl(path, result.rows(TokenForms(tokenizer)))
    return Path(path)


def emit_manifest(result: LensResult, layer: str | int, path: str | Path) -> Path:
    """A manifest whose `transcript` is LAYER's lens text, for `interp cascade --transcripts`.

    Other fields are kept; the original transcript moves to `transcript_reference` and
    `lens_layer` records the layer.
    """
    from interp.manifest import write_manifest

    layer = str(layer)
    if layer not in result.layers:
        raise InterpError(f"--emit-text {layer} is not among the lens layers ({', '.join(result.layers)}); add it to --layers")
    if result.positions not in ("audio", "all"):
        raise InterpError(f"--emit-text reads audio positions; use --positions audio or all (not {result.positions})")
    out = []
    for item in result.items:
        row = dict(item.row)
        row["transcript_reference"] = row.get("transcript")
        row["transcript"] = item.text[layer]
        row["lens_layer"] = layer
        out.append(row)
    write_manifest(path, out)
    return Path(path)


def layers_with_emit(layers: str | Sequence, emit_text: str | int | None, n_layers: int) -> tuple[str | Sequence, str | None]:
    """(the layers to read, the emit layer's name): the layer whose lens text becomes a manifest's
    transcripts (`emit_manifest`) is read whatever `layers` says."""
    from interp.layers import parse_layers

    if emit_text is None:
        return layers, None
    emit = parse_layers(str(emit_text), n_layers)[0]
    if isinstance(layers, str) and layers.strip() == "all":
        return layers, emit
    names = parse_layers(layers, n_layers, embed_by_default=False)
    return (names if emit in names else names + [emit]), emit
