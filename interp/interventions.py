"""Interventions on the residual stream: where (layers, positions) and what (a function).

An intervention is a small object: `layers` it acts on, the `positions` it touches
("audio", "text", "generated", "all", or explicit sequence indices) and an `edit` that maps
the selected residual rows to new rows. `interp.run` applies a list of them inside one
nnsight trace, to a forward pass or to every step of `generate` (the prefill and each new
token), so they compose: at each layer the interventions listed for it run in list order.

Positions are resolved per item of a padded batch from the adapter's audio spans, so
"audio" touches exactly each item's audio positions; padding is never touched. During
generation, step 0 is the prompt (audio and text positions); every later step is one
generated position per item. Explicit indices count within each item's unpadded prompt
(negative ones from its end, so -1 is the last prompt token), whatever the padding side.

`Erase` applies a fitted eraser (`interp.analysis.leace.Eraser`, LEACE or its random control) at
each of its layers; like every intervention it refuses, before the model runs, a layer the
model does not have, and it refuses an eraser fitted for another model, width or layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from interp.errors import InterpError

POSITIONS = ("audio", "text", "generated", "all")


@dataclass
class StepContext:
    """What an intervention needs to know about the current forward pass."""

    step: int  #: 0 for the prompt (or a plain forward), k for the k-th generated token
    masks: dict[str, torch.Tensor]  #: position kind -> (batch, seq) bool mask for this step


def position_masks(batch, step: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Boolean (batch, seq) masks of audio, text, generated and all (non-padding) positions."""
    n = len(batch)
    device = batch.attention_mask.device
    if step == 0:
        real = batch.attention_mask.bool()[:, :seq_len]
        audio = torch.zeros_like(real)
        padding = torch.zeros_like(real)  # placeholders past the audio's end: neither audio nor text
        for i, span in enumerate(batch.audio):
            audio[i, torch.as_tensor(span.positions, device=device)] = True
            padding[i, torch.as_tensor(span.padding, device=device, dtype=torch.long)] = True
        return {"audio": audio, "text": real & ~audio & ~padding, "generated": torch.zeros_like(real), "all": real}
    ones = torch.ones(n, seq_len, dtype=torch.bool, device=device)
    zeros = torch.zeros_like(ones)
    return {"audio": zeros, "text": zeros, "generated": ones, "all": ones}


@dataclass
class Intervention:
    """Base class: subclasses implement `edit(rows, layer, ctx) -> rows` on (n, d_model) rows."""

    layers: Sequence[int | str]
    positions: str | Sequence[int] = "audio"

    def __post_init__(self):
        if isinstance(self.positions, str) and self.positions not in POSITIONS:
            raise InterpError(f"unknown positions '{self.positions}'; use one of {', '.join(POSITIONS)} or explicit indices")
        self.layers = [int(l) for l in self.layers]

    def mask(self, ctx: StepContext, shape: tuple[int, int]) -> torch.Tensor:
        if isinstance(self.positions, str):
            return ctx.masks[self.positions]
        m = torch.zeros(shape, dtype=torch.bool, device=ctx.masks["all"].device)
        if ctx.step == 0:
            # Explicit indices are per item, within its real (unpadded) prompt: with left
            # padding index 0 of a short item is not column 0 of the batch.
            for i, real in enumerate(ctx.masks["all"]):
                cols = torch.nonzero(real).flatten()
                n = len(cols)
                keep = [p + n if p < 0 else p for p in self.positions if -n <= p < n]
                if keep:
                    m[i, cols[torch.as_tensor(keep, dtype=torch.long, device=cols.device)]] = True
        return m

    def edit(self, rows: torch.Tensor, layer: int, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def check(self, adapter) -> None:
        """Raise InterpError if this intervention cannot apply to `adapter`."""
        n = adapter.n_layers
        if not self.layers:
            raise InterpError(f"{type(self).__name__} has no layers; give at least one block index (0-{n - 1})")
        bad = [l for l in self.layers if not -n <= l < n]
        if bad:
            raise InterpError(f"layer {bad[0]} is out of range: the model has {n} blocks (0-{n - 1})")
        self.layers = sorted({l % n for l in self.layers})

    def apply(self, hidden: torch.Tensor, layer: int, ctx: StepContext) -> torch.Tensor:
        """Return `hidden` (batch, seq, d) with the selected rows edited (out of place)."""
        m = self.mask(ctx, hidden.shape[:2])
        if not bool(m.any()):
            return hidden
        out = hidden.clone()
        out[m] = self.edit(hidden[m], layer, ctx).to(hidden.dtype)
        return out


@dataclass
class Record(Intervention):
    """Keep the selected rows (a copy) per layer and step in `self.saved`, or hand them to `sink`."""

    sink: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None
    saved: dict = field(default_factory=dict)

    def apply(self, hidden, layer, ctx):
        m = self.mask(ctx, hidden.shape[:2])
        rows = hidden[m].detach().to("cpu", torch.float32)
        if self.sink is not None:
            self.sink(layer, ctx.step, rows, m.cpu())
        else:
            self.saved.setdefault(layer, []).append((ctx.step, m.cpu(), rows))
        return hidden


@dataclass
class Zero(Intervention):
    """Set the selected residual rows to zero."""

    def edit(self, rows, layer, ctx):
        return torch.zeros_like(rows)


@dataclass
class MeanAblate(Intervention):
    """Replace the selected rows by a fixed mean vector per layer (e.g. from a store)."""

    means: dict = field(default_factory=dict)  #: layer -> (d_model,) tensor

    def check(self, adapter):
        super().check(adapter)
        self.means = _per_layer(self.means, self.layers, adapter, "means")
        for layer, v in self.means.items():
            _check_width(v, adapter, f"the mean of layer {layer}")

    def edit(self, rows, layer, ctx):
        return self.means[layer].to(rows.device, rows.dtype).expand_as(rows)


@dataclass
class Steer(Intervention):
    """Add alpha x vector to the selected rows."""

    vector: torch.Tensor | None = None
    alpha: float = 1.0

    def check(self, adapter):
        super().check(adapter)
        if self.vector is None:
            raise InterpError("Steer needs a vector of width d_model")
        self.vector = torch.as_tensor(self.vector)
        _check_width(self.vector, adapter, "the steering vector")

    def edit(self, rows, layer, ctx):
        return rows + self.alpha * self.vector.to(rows.device, rows.dtype)


@dataclass
class Ablate(Intervention):
    """Project out a subspace: given directions (k, d), or a seeded random one of rank k.

    With `rank` and no `directions`, the subspace is drawn at `check` time as the span of
    k Gaussian vectors (the random control for erasure experiments).
    """

    directions: torch.Tensor | None = None
    rank: int | None = None
    seed: int = 0

    def check(self, adapter):
        super().check(adapter)
        if self.directions is None:
            if not self.rank:
                raise InterpError("Ablate needs directions or a rank for a random subspace")
            g = torch.Generator().manual_seed(self.seed)
            self.directions = torch.randn(self.rank, adapter.d_model, generator=g, dtype=torch.float64)
        if self.directions.shape[-1] != adapter.d_model:
            raise InterpError(f"ablation directions have width {self.directions.shape[-1]} but the model's d_model is {adapter.d_model}")
        q, _ = torch.linalg.qr(self.directions.to(torch.float64).T)
        self._basis = q  # (d, k) orthonormal

    def edit(self, rows, layer, ctx):
        q = self._basis.to(rows.device)
        x = rows.to(torch.float64)
        return (x - (x @ q) @ q.T).to(rows.dtype)


@dataclass
class Patch(Intervention):
    """Overwrite the selected rows with activations taken from another run or a store.

    `source[layer]` is either a (batch, seq, d) tensor aligned with this batch (another
    run's residuals, e.g. from `interp.trace.record`) or a callable (rows, layer, ctx) -> rows.
    """

    source: dict = field(default_factory=dict)

    def check(self, adapter):
        super().check(adapter)
        self.source = _per_layer(self.source, self.layers, adapter, "source")

    def apply(self, hidden, layer, ctx):
        src = self.source[layer]
        if callable(src):
            return super().apply(hidden, layer, ctx)
        if ctx.step != 0:
            return hidden
        m = self.mask(ctx, hidden.shape[:2])
        out = hidden.clone()
        out[m] = src.to(hidden.device, hidden.dtype)[m]
        return out

    def edit(self, rows, layer, ctx):
        return self.source[layer](rows, layer, ctx)

    @classmethod
    def from_store(cls, store, batch, ids, layers, positions: str | Sequence[int] = "audio") -> "Patch":
        """Patch this batch with residuals recorded in a store (`interp trace --positions all`).

        Item `ids[i]` of the store patches item `i` of `batch`: each stored row goes to the
        batch position of its `positions/index` (its place in the unpadded prompt), so the
        store's items must have been traced with the same prompt layout (same model, same
        instruction, audio of the same length, e.g. a clean/noisy pair of one utterance).
        """
        if store.attrs.get("positions") != "all" or store.attrs.get("component", "decoder") != "decoder":
            raise InterpError(
                "Patch.from_store needs a decoder store traced with --positions all")
        if len(ids) != len(batch):
            raise InterpError(f"{len(ids)} store ids for a batch of {len(batch)}; give one id per batch item")
        index = {str(i): k for k, i in enumerate(store.ids)}
        missing = [i for i in ids if str(i) not in index]
        if missing:
            raise InterpError(f"item '{missing[0]}' is not in the store {store.path}")
        mask = batch.attention_mask.bool().cpu()
        sources = {}
        for layer in layers:
            full = torch.zeros(*mask.shape, store.d_model, dtype=torch.float32)
            for b, item_id in enumerate(ids):
                rows = store.rows([index[str(item_id)]])
                where = torch.as_tensor(store.positions["index"][rows]) + int(torch.nonzero(mask[b])[0])
                if len(rows) != int(mask[b].sum()):
                    raise InterpError(f"store item '{item_id}' has {len(rows)} positions but batch item {b} has "
                                      f"{int(mask[b].sum())}; patch between items of the same prompt length")
                full[b, where] = store.read(layer, rows=rows, torch=True)
            sources[int(layer)] = full
        return cls(layers=[int(l) for l in layers], positions=positions, source=sources)


@dataclass
class Edit(Intervention):
    """Any function of the selected rows: `fn(rows, layer) -> rows`."""

    fn: Callable[[torch.Tensor, int], torch.Tensor] | None = None

    def edit(self, rows, layer, ctx):
        return self.fn(rows, layer)


@dataclass(init=False)
class Erase(Intervention):
    """Apply a fitted eraser (`interp.analysis.leace.Eraser`) at its layers: x -> x - ((x - b) R^T) L^T.

    `layers` defaults to every layer the eraser was fitted at; naming a layer it was not
    fitted at is an error. Positions default to "all" (prompt and every generated token):
    erasure kept on through generation, so no later position can re-read the concept.
    """

    eraser: object = None

    def __init__(self, eraser, layers: Sequence[int] | None = None, positions: str | Sequence[int] = "all"):
        if eraser is None or not hasattr(eraser, "layer_erasers"):
            raise InterpError("Erase needs a fitted eraser (interp.fit_eraser or interp.Eraser.load)")
        self.eraser = eraser
        self.layers = list(eraser.layers) if layers is None else list(layers)
        self.positions = positions
        self._factors: dict = {}
        self.__post_init__()

    def check(self, adapter):
        super().check(adapter)
        self.eraser.check(adapter, self.layers)

    def edit(self, rows, layer, ctx):
        key = (layer, rows.device)
        if key not in self._factors:
            # cast once per device (the eraser keeps float64); applied in float32 at least
            e = self.eraser.layer_erasers[layer]
            self._factors[key] = e.factors(rows.device, torch.float32)
        left, right, bias = self._factors[key]
        if left.shape[1] == 0:
            return rows  # rank 0: the identity, untouched
        x = rows.to(torch.promote_types(rows.dtype, torch.float32))
        delta = x - bias if bias is not None else x
        return x - (delta @ right.T) @ left.T


def _per_layer(table: dict, layers: Sequence[int], adapter, what: str) -> dict:
    """`table` keyed by block index with negative keys resolved; every layer must be there."""
    n = adapter.n_layers
    out = {}
    for k, v in table.items():
        k = int(k)
        if not -n <= k < n:
            raise InterpError(f"{what} names layer {k}, which is out of range: the model has {n} blocks (0-{n - 1})")
        out[k % n] = v
    missing = [l for l in layers if l not in out]
    if missing:
        raise InterpError(f"{what} has nothing for layer {missing[0]}; give one entry per intervened layer")
    return out


def _check_width(v, adapter, what: str) -> None:
    width = v.shape[-1] if hasattr(v, "shape") and len(v.shape) else None
    if width is not None and width != adapter.d_model and not callable(v):
        raise InterpError(f"{what} has width {width} but the model's d_model is {adapter.d_model}")
