"""LEACE erasers of the residual stream: fitted per layer from a store, frozen, applied in runs.

The shape follows concept-erasure's `leace.py`: statistics that stream, results that are
frozen. `fit_eraser` streams one layer of a store at a time (`ActivationStore.iter_batches`)
into concept-erasure's `LeaceFitter` (running moments in float64: memory O(d^2) per layer,
independent of the number of items) and freezes each layer's map into an `Eraser`: per layer
the d x r factors L, R (and a bias b when affine) of x -> x - ((x - b) R^T) L^T, plus what it
was fitted for (model fingerprint and family, width, layer, concept, positions). `LayerEraser`
is the one place that formula is written; `Erase(eraser)` (interp.interventions) applies it
inside `interp.run`, and an eraser refuses a model, width or layer other than its own.
`random_control` is the control of matched rank: the projection off a seeded random subspace
(`interp.interventions.random_basis`, the subspace `Ablate(rank=k, seed=...)` removes) with
the same rank per layer.

Continuous concept columns are standardised before fitting: LEACE's subspace does not depend
on their scale, but its `svd_tol` cut on singular values does, and standardised it reads as
"drop directions correlated below 0.01".
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from interp.analysis.concepts import Concept, build_concept, check_fit_store
from interp.errors import InterpError
from interp.progress import Progress, stage
from interp.store import ActivationStore

FORMAT = "interp-eraser"
FORMAT_VERSION = 1


# ---- the frozen result ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LayerEraser:
    """One layer's eraser x -> x - ((x - bias) @ proj_right.T) @ proj_left.T: identity minus rank r.

    As in concept-erasure's `LeaceEraser` the d x d map is kept implicitly as two thin
    factors, compacted here to the rank actually erased (columns with zero singular value,
    which `LeaceFitter` zeroes rather than drops, are removed).
    """

    proj_left: torch.Tensor
    """(d_model, rank) float64: the erased directions' images."""
    proj_right: torch.Tensor
    """(rank, d_model) float64: reads the erased coordinates off a (centred) state."""
    bias: torch.Tensor | None = None
    """(d_model,) mean of the fitting rows when fitted affine; None applies the map unshifted."""

    @property
    def rank(self) -> int:
        """Number of directions erased."""
        return int(self.proj_left.shape[1])

    @property
    def d_model(self) -> int:
        """Width of the residual this eraser applies to."""
        return int(self.proj_left.shape[0])

    @property
    def P(self) -> torch.Tensor:
        """The d x d linear part, identity minus L R (for inspection; never formed to apply)."""
        return torch.eye(self.d_model, dtype=self.proj_left.dtype) - self.proj_left @ self.proj_right

    def __post_init__(self):
        object.__setattr__(self, "_casts", {})

    def factors(self, device=None, dtype=torch.float64):
        """(L, R, bias) on a device in a dtype, cast once and kept (applied at every generation step)."""
        key = (str(device), dtype)
        if key not in self._casts:
            cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
            self._casts[key] = (cast(self.proj_left), cast(self.proj_right), cast(self.bias))
        return self._casts[key]

    def __call__(self, x):
        """Erase rows of a (..., d_model) tensor or array, in at least float32 (numpy input in
        float64); the result has the input's dtype. The one place the formula is written."""
        if isinstance(x, np.ndarray):
            return self(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()
        if self.rank == 0:
            return x
        left, right, bias = self.factors(x.device, torch.promote_types(x.dtype, torch.float32))
        x_ = x.to(left.dtype)
        delta = x_ - bias if bias is not None else x_
        return (x_ - (delta @ right.T) @ left.T).to(x.dtype)


@dataclass(frozen=True, eq=False)
class Eraser:
    """Erasers of one concept at several layers of one model: frozen, saved with safetensors.

    >>> eraser = fit_eraser(store, "label", layers=[0, 8, 16])
    >>> interp.run(model, batch, [Erase(eraser)], generate=True)
    """

    layer_erasers: Mapping[int, LayerEraser]
    """Block index -> that layer's eraser."""
    concept: str
    """What was erased: an item field, chars, ctc, energy, pitch, or a '+' of them."""
    model_fingerprint: str
    """`SpeechLM.fingerprint()` of the model whose residuals were fitted."""
    family: str
    """Model family of that model (informative; the fingerprint decides)."""
    d_model: int
    """Residual width."""
    affine: bool = False
    """Whether the map re-centres on the fitting mean (the bias term)."""
    positions: str = "audio"
    """Rows it was fitted on: audio positions or all stored positions."""
    method: str = "leace"
    """leace | random (the matched-rank control) | identity."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Provenance: store, items and rows fitted, concept columns, seed, ..."""

    def __post_init__(self):
        object.__setattr__(self, "layer_erasers", MappingProxyType({int(k): v for k, v in sorted(self.layer_erasers.items())}))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        for layer, e in self.layer_erasers.items():
            if e.d_model != self.d_model:
                raise InterpError(f"eraser layer {layer} has width {e.d_model}, not the eraser's d_model {self.d_model}")

    @property
    def layers(self) -> list[int]:
        """Block indices this eraser was fitted at, ascending."""
        return list(self.layer_erasers)

    @property
    def ranks(self) -> dict[int, int]:
        """Erased rank per layer."""
        return {layer: e.rank for layer, e in self.layer_erasers.items()}

    def __call__(self, x, layer: int):
        """Erase rows of `x` with the eraser of `layer`."""
        if layer not in self.layer_erasers:
            raise InterpError(f"eraser '{self.concept}' has no layer {layer}; it was fitted at layers {_layer_list(self.layers)}")
        return self.layer_erasers[layer](x)

    def check(self, adapter, layers: Sequence[int] | None = None) -> None:
        """Refuse a model of another width or config, or layers this eraser was not fitted at."""
        if int(adapter.d_model) != self.d_model:
            raise InterpError(f"eraser '{self.concept}' was fitted on residuals of width {self.d_model}, but the model's "
                              f"d_model is {adapter.d_model}: it belongs to another model")
        mine = adapter.fingerprint()
        if not self.model_fingerprint:
            raise InterpError(f"eraser '{self.concept}' has no model fingerprint (fitted by an older interp), so its "
                              "model cannot be checked; fit it again (interp erase --refit)")
        if mine != self.model_fingerprint:
            raise InterpError(f"eraser '{self.concept}' was fitted for another model ({self.family}, fingerprint "
                              f"{self.model_fingerprint}); this is {adapter.family}, fingerprint {mine}: fit it from a "
                              "store traced with this model")
        missing = [l for l in (layers if layers is not None else self.layers) if l not in self.layer_erasers]
        if missing:
            raise InterpError(f"eraser '{self.concept}' has no layer {missing[0]}; it was fitted at layers "
                              f"{_layer_list(self.layers)}")

    def describe(self) -> dict:
        """Metadata as plain JSON types (everything but the factors)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "concept": self.concept, "method": self.method,
                "model_fingerprint": self.model_fingerprint, "family": self.family, "d_model": self.d_model, "affine": self.affine,
                "positions": self.positions, "layers": self.layers, "ranks": {str(k): v for k, v in self.ranks.items()},
                "meta": dict(self.meta)}

    def save(self, path) -> Path:
        """Write one .safetensors file: `{layer}.proj_left|proj_right|bias` plus the metadata as JSON."""
        from interp.atomic import write_safetensors

        tensors = {}
        for layer, e in self.layer_erasers.items():
            tensors[f"{layer}.proj_left"], tensors[f"{layer}.proj_right"] = e.proj_left, e.proj_right
            if e.bias is not None:
                tensors[f"{layer}.bias"] = e.bias
        return write_safetensors(path, tensors, self.describe())

    @classmethod
    def load(cls, path, adapter=None) -> "Eraser":
        """Read an eraser written by `save`; with `adapter`, refuse it unless it fits that model."""
        from interp.atomic import read_safetensors

        tensors, meta = read_safetensors(path, "eraser", FORMAT, FORMAT_VERSION)
        layers = {int(l): LayerEraser(tensors[f"{l}.proj_left"], tensors[f"{l}.proj_right"], tensors.get(f"{l}.bias"))
                  for l in meta["layers"]}
        eraser = cls(layers, meta["concept"], meta.get("model_fingerprint", ""), meta["family"], int(meta["d_model"]),
                     bool(meta["affine"]), meta["positions"], meta["method"], meta.get("meta", {}))
        if adapter is not None:
            eraser.check(adapter)
        return eraser

    @classmethod
    def identity(cls, adapter, layers: Sequence[int]) -> "Eraser":
        """An eraser of rank 0 at `layers`: applying it changes nothing (a test of the plumbing)."""
        d = adapter.d_model
        empty = {int(l) % adapter.n_layers: LayerEraser(torch.zeros(d, 0, dtype=torch.float64),
                                                         torch.zeros(0, d, dtype=torch.float64)) for l in layers}
        return cls(empty, "nothing", adapter.fingerprint(), adapter.family, d, method="identity")


def random_control(eraser: Eraser, seed: int = 0) -> Eraser:
    """The matched-rank control: per layer, the orthogonal projection off a random subspace of
    the same rank as `eraser`'s (`interp.interventions.random_basis(d, rank, seed, layer)`, the
    subspace `Ablate(rank=..., seed=seed)` removes); the bias, if any, is kept so the control
    differs from the eraser only in its subspace."""
    from interp.interventions import random_basis

    layers = {}
    for layer, e in eraser.layer_erasers.items():
        q = random_basis(e.d_model, e.rank, seed, layer)
        layers[layer] = LayerEraser(q, q.T.clone(), e.bias)
    meta = dict(eraser.meta, seed=int(seed), control_of=eraser.concept)
    return replace(eraser, layer_erasers=layers, method="random", meta=meta)


# ---- fitting -------------------------------------------------------------------------------


def _prefetch(iterable: Iterable, depth: int = 2):
    """Iterate in a background thread, `depth` items ahead: reading the next batch from disk
    overlaps the covariance update of this one (torch releases the GIL in matmul)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = object()
    error: list[BaseException] = []
    cancelled = threading.Event()

    def work():
        try:
            for x in iterable:
                if cancelled.is_set():
                    return
                q.put(x)
        except BaseException as e:  # surfaced in the consumer
            error.append(e)
        finally:
            q.put(stop)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is stop:
                break
            yield x
    finally:
        cancelled.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
    if error:
        raise error[0]


def _z_scale(concept: Concept, batch_rows: int = 65536) -> np.ndarray:
    """Per-column standard deviation of z over the concept's rows (1 for one-hot classes)."""
    k = len(concept.columns)
    if concept.kind == "classes":
        return np.ones(k)
    n, s, ss = 0, np.zeros(k), np.zeros(k)
    for i in range(0, len(concept.rows), batch_rows):
        z = concept.z(concept.rows[i:i + batch_rows])
        n += len(z)
        s += z.sum(0)
        ss += (z * z).sum(0)
    var = np.maximum(ss / max(n, 1) - (s / max(n, 1)) ** 2, 0.0)
    return np.sqrt(var)


def resolve_fit_layers(store: ActivationStore, layers) -> list[int]:
    """Block indices for a layers spec, checked against the model's depth and the store."""
    from interp.layers import parse_layers

    names = parse_layers(layers, store.n_model_layers, embed_by_default=False)
    if "embed" in names:
        raise InterpError("erasure acts on block outputs; 'embed' is not a block: give block indices like 0,4,8")
    store.resolve_layers(names)
    return [int(x) for x in names]


def fit_eraser(store: ActivationStore | str | Path, concept: str | Concept, layers="all", *, positions: str = "audio",
               affine: bool = False, items: Sequence[int] | None = None, batch_items: int = 64, device: str = "cpu",
               constrain_cov_trace: bool = True, shrinkage: bool = True, svd_tol: float = 0.01,
               progress: Progress | None = None) -> Eraser:
    """Fit a LEACE eraser of `concept` at each of `layers` from the store's rows (of `items`).

    One layer at a time, the store is streamed in batches of `batch_items` items into a
    float64 `LeaceFitter`, so memory holds one d x d covariance and one batch whatever the
    number of items.

    `affine` (off by default) adds the bias term that re-centres erased states on the mean
    of the fitting rows. The paper turned it off for erasure during generation: the mean
    is that of audio-position states, and adding it back at every generated text token
    pushed those tokens off their distribution until the model collapsed. Without it, the
    erased coordinates are projected out rather than reset to the audio mean; the guarantee
    (no linear predictor of the concept beats a constant on the fitting distribution)
    holds either way, because a constant shift leaves every covariance unchanged.
    """
    from concept_erasure import LeaceFitter

    own = not isinstance(store, ActivationStore)
    store = ActivationStore(store) if own else store
    try:
        check_fit_store(store, positions)
        layer_ids = resolve_fit_layers(store, layers)
        c = concept if isinstance(concept, Concept) else build_concept(store, concept, positions)
        if items is not None:
            c = c.restrict(store, np.asarray(items, dtype=np.int64))
        if len(c.rows) < 2:
            raise InterpError(f"concept '{c.name}' has fewer than two rows to fit on")
        scale = _z_scale(c)
        keep_cols = scale > 1e-12
        if not keep_cols.any():
            raise InterpError(f"concept '{c.name}' takes a single value on the fitting rows; nothing to erase")
        if c.kind == "classes" and keep_cols.sum() < 2:
            raise InterpError(f"concept '{c.name}' has one class on the fitting rows; erasing it needs at least two")
        scale = np.where(keep_cols, scale, 1.0)
        fit_items = c.items(store)
        audio_only = positions == "audio"
        d = store.d_model
        out: dict[int, LayerEraser] = {}
        advance = stage(progress, f"fitting erasers of '{c.name}'", len(layer_ids), "layers")
        for layer in layer_ids:
            fitter = LeaceFitter(d, int(keep_cols.sum()), affine=affine, constrain_cov_trace=constrain_cov_trace,
                                 shrinkage=shrinkage, svd_tol=svd_tol, device=device, dtype=torch.float64)
            for _, rows, x in _prefetch(store.iter_batches(layer, fit_items, batch_items, audio_only=audio_only)):
                pos = np.searchsorted(c.rows, rows)
                ok = (pos < len(c.rows)) & (c.rows[np.minimum(pos, len(c.rows) - 1)] == rows)
                if not ok.any():
                    continue
                if not ok.all():
                    rows, x = rows[ok], x[ok]
                z = (c.z(rows) / scale)[:, keep_cols]
                fitter.update(torch.from_numpy(x).to(device), torch.from_numpy(z).to(device))
            if not np.isfinite(fitter.mean_x.cpu().numpy()).all():
                raise InterpError(f"layer {layer} of {store.path} holds non-finite values (float16 overflow?); "
                                  "re-trace with --dtype float32")
            out[layer] = _freeze(fitter.eraser)
            advance(1)
        meta = {"store": str(store.path), "store_id": store.identity, "n_items": int(len(fit_items)), "n_rows": int(len(c.rows)),
                "columns": [col for col, k in zip(c.columns, keep_cols) if k], "notes": list(c.notes),
                "model_path": store.attrs.get("model_path", ""), "svd_tol": svd_tol, "shrinkage": shrinkage,
                "constrain_cov_trace": constrain_cov_trace}
        return Eraser(out, c.name, str(store.attrs.get("model_fingerprint", "")), str(store.attrs.get("family", "")), d,
                      affine, positions, "leace", meta)
    finally:
        if own:
            store.close()


def _freeze(e) -> LayerEraser:
    """A concept-erasure `LeaceEraser` as a compact LayerEraser (float64, on the CPU)."""
    left = e.proj_left.detach().to("cpu", torch.float64)
    right = e.proj_right.detach().to("cpu", torch.float64)
    # Columns LeaceFitter zeroed (singular values under svd_tol), or near-zero ones of the
    # trace-constrained refit (an SVD of I - P with d columns), erase nothing: drop them.
    weight = left.norm(dim=0) * right.norm(dim=1)
    keep = weight > max(float(weight.max()) if len(weight) else 0.0, 1e-300) * 1e-9
    bias = None if e.bias is None else e.bias.detach().to("cpu", torch.float64)
    return LayerEraser(left[:, keep].contiguous(), right[keep].contiguous(), bias)


def _layer_list(layers) -> str:
    return ",".join(str(l) for l in layers)
