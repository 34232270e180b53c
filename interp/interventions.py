"""Interventions: where (sites, positions, generation steps) and what (a function of the rows).

An intervention is a small frozen object: the sites it acts at (`interp.sites` names such as
`blocks.3.attn.hook_out`; `layers=[i]` is shorthand for `blocks.{i}.hook_resid_post`), the
`positions` it touches ("audio", "text", "generated", "all", or explicit sequence indices),
the generation `steps` it acts on ("all", "prompt", "generated", or step numbers), and an
`edit` that maps the selected rows to new rows. `interp.run` binds each to the model
(`bind`: a resolved copy, the original is never changed) and applies the list inside one
nnsight trace, to a forward pass or to every step of `generate`. At each site the
interventions listed for it run in list order; sites are visited in the order the model
computes them.

Positions are resolved per item of a padded batch from the adapter's audio spans, so
"audio" touches exactly each item's audio positions; padding is never touched. During
generation, step 0 is the prompt (audio and text positions); every later step is one
generated position per item. Explicit indices count within each item's unpadded prompt
(negative ones from its end, so -1 is the last prompt token), whatever the padding side.
Sites of the audio encoder and projector run on the prompt only and take positions "all".

`Patch` with tensors overwrites rows of the prompt it was recorded from, so it acts on the
prompt only (`steps="prompt"`, its default); asking it to act on generated steps is an error
(a callable source can act anywhere). `Erase` applies a fitted eraser
(`interp.analysis.leace.Eraser`) with the eraser's own formula; like every intervention it
refuses, before the model runs, a site or layer the model does not have, and it refuses an
eraser fitted for another model, width or layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from interp.errors import InterpError
from interp.positions import INTERVENTION, StepContext, position_masks
from interp.sites import Site, resid_post, resolve_site

STEPS = ("all", "prompt", "generated")
__all__ = ["Ablate", "Edit", "Erase", "Intervention", "MeanAblate", "Patch", "Record", "StepContext", "Steer", "Zero",
           "position_masks", "random_basis"]


@dataclass(frozen=True)
class Intervention:
    """Base class: subclasses implement `edit(rows, key, ctx) -> rows` on (n, width) rows, where
    `key` is the block index for a block's output site and the site's name otherwise."""

    layers: Sequence[int] = ()
    positions: str | Sequence[int] = "audio"
    sites: Sequence[str] = ()
    steps: str | Sequence[int] = "all"
    bound: tuple = field(default=(), repr=False, compare=False)  #: resolved `Site`s, set by `bind`

    def __post_init__(self):
        if isinstance(self.positions, str) and self.positions not in INTERVENTION:
            raise InterpError(f"unknown positions '{self.positions}'; use one of {', '.join(INTERVENTION)} or explicit "
                              "indices")
        if isinstance(self.steps, str) and self.steps not in STEPS:
            raise InterpError(f"unknown steps '{self.steps}'; use one of {', '.join(STEPS)} or step numbers")
        object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
        object.__setattr__(self, "sites", (self.sites,) if isinstance(self.sites, str) else tuple(self.sites))
        if not isinstance(self.positions, str):
            object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
        if not isinstance(self.steps, str):
            object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))

    # ---- binding to a model ----------------------------------------------------------------

    def bind(self, adapter) -> "Intervention":
        """A copy with its sites resolved for `adapter`'s model (negative layers counted from the
        end); InterpError, before the model runs, for what cannot apply."""
        names = [resid_post(l) for l in self.layers] + list(self.sites)
        if not names:
            raise InterpError(f"{type(self).__name__} has no layers or sites; give block indices "
                              f"(0-{adapter.n_layers - 1}) or site names")
        sites = tuple({s.name: s for s in (resolve_site(adapter, n) for n in names)}.values())
        for s in sites:
            if s.prompt_only and self.positions != "all":
                raise InterpError(f"site {s.name} is over the audio encoder's frames, not the prompt's positions; "
                                  "use positions='all' there")
            if s.prompt_only and self.steps == "generated":
                raise InterpError(f"site {s.name} runs on the prompt only; it has no generated steps")
        layers = tuple(sorted({s.layer for s in sites if s.key == s.layer}))
        return replace(self, layers=layers, bound=tuple(sorted(sites, key=lambda s: s.order)))

    def check(self, adapter) -> "Intervention":
        """`bind`: the resolved copy this intervention runs as."""
        return self.bind(adapter)

    # ---- applying ----------------------------------------------------------------------------

    def acts_at(self, step: int) -> bool:
        """Whether this intervention acts on generation step `step` (0: the prompt)."""
        if self.steps == "all":
            return True
        if self.steps == "prompt":
            return step == 0
        if self.steps == "generated":
            return step > 0
        return step in self.steps

    def mask(self, ctx: StepContext, shape: tuple[int, int]) -> torch.Tensor:
        if ctx.masks is None:  # a site over encoder frames: every row
            return torch.ones(shape, dtype=torch.bool)
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

    def edit(self, rows: torch.Tensor, key, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, hidden: torch.Tensor, site: Site | int | str, ctx: StepContext) -> torch.Tensor:
        """Return `hidden` (batch, seq, d) with the selected rows edited (out of place); `site`
        is a resolved Site or its key (a block index for a block's output)."""
        m = self.mask(ctx, hidden.shape[:2]).to(hidden.device)
        if not bool(m.any()):
            return hidden
        out = hidden.clone()
        out[m] = self.edit(hidden[m], _key(site), ctx).to(hidden.dtype)
        return out


def _key(site: Site | int | str):
    return site.key if isinstance(site, Site) else site


def _keyed(table: dict, iv: Intervention, adapter, what: str) -> dict:
    """`table` keyed as the bound sites are (block index, negative ones resolved, or site name);
    every site must have an entry."""
    out = {}
    for k, v in table.items():
        site = resolve_site(adapter, resid_post(k) if isinstance(k, int) or str(k).lstrip("-").isdigit() else k)
        out[site.key] = v
    missing = [s.key for s in iv.bound if s.key not in out]
    if missing:
        raise InterpError(f"{what} has nothing for {'layer' if isinstance(missing[0], int) else 'site'} {missing[0]}; "
                          "give one entry per intervened layer or site")
    return out


def _check_width(v, adapter, what: str) -> None:
    width = v.shape[-1] if hasattr(v, "shape") and len(v.shape) else None
    if width is not None and width != adapter.d_model and not callable(v):
        raise InterpError(f"{what} has width {width} but the model's d_model is {adapter.d_model}")


@dataclass(frozen=True)
class Record(Intervention):
    """Keep the selected rows (a copy) per site and step in `saved` (keyed by block index for
    block outputs, by site name otherwise), or hand them to `sink(key, step, rows, mask)`."""

    sink: Callable[[object, int, torch.Tensor, torch.Tensor], None] | None = None
    saved: dict = field(default_factory=dict)

    def apply(self, hidden, site, ctx):
        m = self.mask(ctx, hidden.shape[:2]).to(hidden.device)
        rows = hidden[m].detach().to("cpu", torch.float32)
        if self.sink is not None:
            self.sink(_key(site), ctx.step, rows, m.cpu())
        else:
            self.saved.setdefault(_key(site), []).append((ctx.step, m.cpu(), rows))
        return hidden


@dataclass(frozen=True)
class Zero(Intervention):
    """Set the selected rows to zero."""

    def edit(self, rows, key, ctx):
        return torch.zeros_like(rows)


@dataclass(frozen=True)
class MeanAblate(Intervention):
    """Replace the selected rows by a fixed mean vector per layer or site (e.g. from a store)."""

    means: dict = field(default_factory=dict)  #: layer or site name -> (width,) tensor

    def bind(self, adapter):
        bound = super().bind(adapter)
        means = _keyed(self.means, bound, adapter, "means")
        for key, v in means.items():
            if isinstance(key, int):
                _check_width(v, adapter, f"the mean of layer {key}")
        return replace(bound, means=means)

    def edit(self, rows, key, ctx):
        return torch.as_tensor(self.means[key]).to(rows.device, rows.dtype).expand_as(rows)


@dataclass(frozen=True)
class Steer(Intervention):
    """Add alpha x vector to the selected rows (e.g. a fitted probe's `direction()`)."""

    vector: torch.Tensor | None = None
    alpha: float = 1.0

    def bind(self, adapter):
        bound = super().bind(adapter)
        if self.vector is None:
            raise InterpError("Steer needs a vector of width d_model")
        vector = torch.as_tensor(self.vector)
        if any(s.stream == "decoder" for s in bound.bound):
            _check_width(vector, adapter, "the steering vector")
        return replace(bound, vector=vector)

    def edit(self, rows, key, ctx):
        return rows + self.alpha * self.vector.to(rows.device, rows.dtype)


def random_basis(d_model: int, rank: int, seed: int, layer: int) -> torch.Tensor:
    """(d_model, rank) float64 orthonormal basis of the span of `rank` Gaussian vectors, seeded
    by (seed, layer): the one random-subspace control. `Ablate(rank=k, seed=s)` removes it at
    each of its layers and `interp.analysis.leace.random_control(eraser, seed=s)` builds the
    matched-rank control eraser from it, so the same seed is the same subspace in both."""
    import numpy as np

    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(layer)]).generate_state(1)[0]))
    g = torch.randn(d_model, rank, generator=gen, dtype=torch.float64)
    return torch.linalg.qr(g).Q if rank else g


@dataclass(frozen=True)
class Ablate(Intervention):
    """Project out a subspace: given directions (k, d), or a seeded random one of rank k.

    With `rank` and no `directions`, each layer's subspace is `random_basis(d_model, rank,
    seed, layer)`: the random control of erasure experiments.
    """

    directions: torch.Tensor | None = None
    rank: int | None = None
    seed: int = 0
    bases: dict = field(default_factory=dict, repr=False)  #: key -> (d, k) orthonormal basis, set by `bind`

    def bind(self, adapter):
        bound = super().bind(adapter)
        if self.directions is None and not self.rank:
            raise InterpError("Ablate needs directions or a rank for a random subspace")
        if self.directions is not None:
            directions = torch.as_tensor(self.directions)
            if directions.shape[-1] != adapter.d_model:
                raise InterpError(f"ablation directions have width {directions.shape[-1]} but the model's d_model is "
                                  f"{adapter.d_model}")
            q, _ = torch.linalg.qr(directions.reshape(-1, adapter.d_model).to(torch.float64).T)
            bases = {s.key: q for s in bound.bound}
        else:
            bases = {s.key: random_basis(adapter.d_model, self.rank, self.seed, s.layer or 0) for s in bound.bound}
        return replace(bound, bases=bases)

    def basis(self, key) -> torch.Tensor:
        """(d_model, k) orthonormal basis of the subspace removed at a layer or site (after `bind`)."""
        return self.bases[key]

    def edit(self, rows, key, ctx):
        q = self.bases[key].to(rows.device)
        x = rows.to(torch.float64)
        return (x - (x @ q) @ q.T).to(rows.dtype)


@dataclass(frozen=True)
class Patch(Intervention):
    """Overwrite the selected rows with activations taken from another run or a store.

    `source[layer]` (or `source[site]`) is a (batch, seq, d) tensor aligned with this batch's
    prompt (another run's residuals, e.g. from `interp.trace.record`, or `Patch.from_store`),
    or a callable (rows, key, ctx) -> rows. A tensor holds the prompt's positions only, so
    tensor sources act on the prompt (`steps="prompt"`, the default).
    """

    source: dict = field(default_factory=dict)
    steps: str | Sequence[int] = "prompt"

    def bind(self, adapter):
        bound = super().bind(adapter)
        source = _keyed(self.source, bound, adapter, "source")
        later = self.steps in ("all", "generated") or (not isinstance(self.steps, str) and any(s > 0 for s in self.steps))
        tensors = [k for k, v in source.items() if not callable(v)]
        if later and tensors:
            raise InterpError(f"Patch's source for {tensors[0]} is a tensor over the prompt's positions; it cannot "
                              "apply to generated steps: use steps='prompt', or a callable source")
        return replace(bound, source=source)

    def apply(self, hidden, site, ctx):
        src = self.source[_key(site)]
        if callable(src):
            return super().apply(hidden, site, ctx)
        m = self.mask(ctx, hidden.shape[:2]).to(hidden.device)
        out = hidden.clone()
        out[m] = src.to(hidden.device, hidden.dtype)[m]
        return out

    def edit(self, rows, key, ctx):
        return self.source[key](rows, key, ctx)

    @classmethod
    def from_store(cls, store, batch, ids, layers, positions: str | Sequence[int] = "audio") -> "Patch":
        """Patch this batch with residuals recorded in a store (`interp trace --positions all`).

        Item `ids[i]` of the store patches item `i` of `batch`: each stored row goes to the
        batch position of its `positions/index` (its place in the unpadded prompt), so the
        store's items must have been traced with the same prompt layout (same model, same
        instruction, audio of the same length, e.g. a clean/noisy pair of one utterance).
        """
        if store.attrs.get("positions") != "all" or store.attrs.get("component", "decoder") != "decoder":
            raise InterpError("Patch.from_store needs a decoder store traced with --positions all")
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


@dataclass(frozen=True)
class Edit(Intervention):
    """Any function of the selected rows: `fn(rows, key) -> rows` (key: block index or site name)."""

    fn: Callable[[torch.Tensor, object], torch.Tensor] | None = None

    def edit(self, rows, key, ctx):
        return self.fn(rows, key)


@dataclass(frozen=True, init=False)
class Erase(Intervention):
    """Apply a fitted eraser (`interp.analysis.leace.Eraser`) at its layers, with the eraser's
    own formula x -> x - ((x - b) R^T) L^T (`LayerEraser.__call__`).

    `layers` defaults to every layer the eraser was fitted at; naming a layer it was not
    fitted at is an error. Positions default to "all" and steps to "all" (the prompt and every
    generated token): erasure kept on through generation, so no later position can re-read
    the concept.
    """

    eraser: object = None

    def __init__(self, eraser, layers: Sequence[int] | None = None, positions: str | Sequence[int] = "all",
                 steps: str | Sequence[int] = "all", sites: Sequence[str] = (), bound: tuple = ()):
        if eraser is None or not hasattr(eraser, "layer_erasers"):
            raise InterpError("Erase needs a fitted eraser (interp.fit_eraser or interp.Eraser.load)")
        if sites:
            raise InterpError("an eraser acts on the residual it was fitted on: give its layers, not sites")
        for name, value in (("eraser", eraser), ("layers", eraser.layers if layers is None else layers),
                            ("positions", positions), ("sites", ()), ("steps", steps), ("bound", bound)):
            object.__setattr__(self, name, value)
        self.__post_init__()

    def bind(self, adapter):
        bound = super().bind(adapter)
        self.eraser.check(adapter, list(bound.layers))
        return bound

    def edit(self, rows, key, ctx):
        return self.eraser(rows, key)
