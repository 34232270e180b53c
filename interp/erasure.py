"""LEACE concept erasure of the residual stream: fit per layer from a store, apply during runs.

The shape follows concept-erasure's `leace.py`: statistics that stream, results that are
frozen. `fit_eraser` streams one layer of a store at a time (`ActivationStore.iter_batches`)
into concept-erasure's `LeaceFitter` (running moments in float64: memory O(d^2) per layer,
independent of the number of items) and freezes each layer's map into an `Eraser`: per
layer the d x r factors L, R (and a bias b when affine) of x -> x - ((x - b) R^T) L^T, plus
what it was fitted for (model config hash and family, width, layer, concept, positions).
`Erase(eraser)` (interp.interventions) applies it inside `interp.run`; an eraser refuses a
model, width or layer other than its own. `random_control` is the control of matched rank:
an orthogonal projection onto a seeded random subspace with the same rank per layer.

Concepts (`build_concept`) are values z attached to store rows:

- any item field (label, speaker, task, ...): one-hot classes, broadcast to the item's rows;
- `chars`: the transcript's bag-of-characters counts, broadcast to the item's rows;
- `ctc`: per audio position, the transcript characters aligned to it (fractional counts
  under a uniform alignment of the transcript over the item's audio positions);
- `energy`, `pitch`: per audio position, as in the probes (interp.probes);
- a `+` of several (e.g. `energy+pitch`, the acoustic control): the columns side by side,
  on the rows where all are defined.

Continuous columns are standardised before fitting: LEACE's subspace does not depend on
their scale, but its `svd_tol` cut on singular values does, and standardised it reads as
"drop directions correlated below 0.01".

`erase_experiment` is the study's causal test (PAPER.md, Table 7): fit (or load) erasers at
several layers, answer the task with the erasure kept on through generation, next to the
baseline, the random control and any extra control, and re-probe held-out activations.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from interp.errors import InterpError
from interp.store import ActivationStore

FORMAT = "interp-eraser"
FORMAT_VERSION = 1
FIT_POSITIONS = ("audio", "all")
SPECIAL_CONCEPTS = ("chars", "ctc", "energy", "pitch")
CONTROLS = {"random": "random subspace", "acoustic": "acoustic erased"}
ACOUSTIC = "energy+pitch"


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

    def factors(self, device=None, dtype=torch.float64):
        """(L, R, bias) cast to a device and dtype, for applying many times."""
        cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return cast(self.proj_left), cast(self.proj_right), cast(self.bias)

    def __call__(self, x):
        """Erase rows of a (..., d_model) tensor or array; numpy input is computed in float64."""
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
        from safetensors.torch import save_file

        from interp.atomic import atomic_path

        path = Path(path)
        tensors = {}
        for layer, e in self.layer_erasers.items():
            tensors[f"{layer}.proj_left"] = e.proj_left.detach().cpu().contiguous().clone()
            tensors[f"{layer}.proj_right"] = e.proj_right.detach().cpu().contiguous().clone()
            if e.bias is not None:
                tensors[f"{layer}.bias"] = e.bias.detach().cpu().contiguous().clone()
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"interp": json.dumps(self.describe(), default=_json_default)})
        return path

    @classmethod
    def load(cls, path, adapter=None) -> "Eraser":
        """Read an eraser written by `save`; with `adapter`, refuse it unless it fits that model."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise InterpError(f"eraser not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("interp", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, json.JSONDecodeError) as e:
            raise InterpError(f"cannot read eraser {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if meta.get("format") != FORMAT:
            raise InterpError(f"{path} is not an interp eraser (no format='{FORMAT}' metadata)")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise InterpError(f"{path} has eraser format {meta['format_version']}; this interp reads up to {FORMAT_VERSION}")
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
    the same rank as `eraser`'s (the span of Gaussian vectors, seeded by (seed, layer)); the
    bias, if any, is kept so the control differs from the eraser only in its subspace."""
    layers = {}
    for layer, e in eraser.layer_erasers.items():
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(layer)]).generate_state(1)[0]))
        g = torch.randn(e.d_model, e.rank, generator=gen, dtype=torch.float64)
        q = torch.linalg.qr(g).Q if e.rank else g
        layers[layer] = LayerEraser(q, q.T.clone(), e.bias)
    meta = dict(eraser.meta, seed=int(seed), control_of=eraser.concept)
    return replace(eraser, layer_erasers=layers, method="random", meta=meta)


# ---- concepts ------------------------------------------------------------------------------


@dataclass
class Concept:
    """A concept's value z on store rows: which rows carry one, and a function giving their z."""

    name: str
    """As given: a field, chars, ctc, energy, pitch or a '+' of them."""
    kind: str
    """classes (one-hot, probed by accuracy) | values (continuous, probed by R^2)."""
    rows: np.ndarray
    """Store rows with a value, ascending."""
    columns: list[str]
    """Names of z's columns (classes, characters, 'energy', ...)."""
    values: Callable[[np.ndarray], np.ndarray]
    """Sorted subset of `rows` -> (n, len(columns)) float64."""
    notes: list[str] = field(default_factory=list)
    """What was left out and why."""

    def z(self, rows: np.ndarray) -> np.ndarray:
        return self.values(np.asarray(rows, dtype=np.int64))

    def restrict(self, store: ActivationStore, items: np.ndarray) -> "Concept":
        """The same concept on the rows of `items` only."""
        keep = np.zeros(store.n_rows, dtype=bool)
        keep[store.rows(items)] = True
        return replace(self, rows=self.rows[keep[self.rows]])

    def items(self, store: ActivationStore) -> np.ndarray:
        """Item indices owning at least one of the rows."""
        return np.unique(store.row_items(self.rows))


def check_fit_store(store: ActivationStore, positions: str) -> None:
    """Refuse stores erasers cannot be fitted from: empty, encoder, pooled, or without audio for `positions=audio`."""
    if positions not in FIT_POSITIONS:
        raise InterpError(f"unknown positions '{positions}' to fit on; use audio or all")
    if store.n_items == 0:
        raise InterpError(f"store {store.path} holds no items; fill it with `interp trace`")
    if store.attrs.get("component", "decoder") != "decoder":
        raise InterpError(f"store {store.path} holds {store.attrs.get('component')} states; erasers act on the decoder's "
                          "residual stream: trace with --component decoder")
    if store.attrs.get("positions") in ("audio-mean", "last"):
        raise InterpError(f"store {store.path} holds one pooled state per item (positions '{store.attrs['positions']}'); "
                          "erasers are fitted per position: trace with --positions audio or all")
    if positions == "audio" and not store.positions["is_audio"].any():
        raise InterpError(f"store has no audio spans: {store.path.name} was traced with positions "
                          f"'{store.attrs.get('positions')}'; re-trace with --positions audio, or fit with --positions all")


def build_concept(store: ActivationStore, name: str, positions: str = "audio", config=None) -> Concept:
    """Resolve a concept name against the store (see the module docstring for the names)."""
    check_fit_store(store, positions)
    parts = [p.strip() for p in name.split("+") if p.strip()]
    if not parts:
        raise InterpError("empty concept; give an item field (e.g. label) or one of " + ", ".join(SPECIAL_CONCEPTS))
    built = [_one_concept(store, p, positions, config) for p in parts]
    if len(built) == 1:
        return built[0]
    rows = built[0].rows
    for c in built[1:]:
        rows = np.intersect1d(rows, c.rows, assume_unique=True)
    if len(rows) == 0:
        raise InterpError(f"concept '{name}': no store row has a value of all of {', '.join(parts)}")

    def values(r):
        return np.concatenate([c.values(r) for c in built], axis=1)

    columns = [f"{c.name}:{col}" for c in built for col in c.columns]
    notes = [n for c in built for n in c.notes]
    return Concept(name, "values", rows, columns, values, notes)


def _one_concept(store: ActivationStore, name: str, positions: str, config) -> Concept:
    from interp.probes import ProbeConfig, build_target

    config = config or ProbeConfig()
    audio_only = positions == "audio"
    if name in ("energy", "pitch"):
        tgt = build_target(store, name, "audio", config=config)
        rows, y = tgt.rows, np.asarray(tgt.y, dtype=np.float64)
        order = np.argsort(rows)
        rows, y = rows[order], y[order]
        notes = list(tgt.notes) + ([f"'{name}' is defined on audio positions only"] if positions == "all" else [])
        return Concept(name, "values", rows, [name], _lookup(rows, y[:, None]), notes)
    if name == "chars":
        # item-level counts; positions 'last' only selects the items, no activations are read
        tgt = build_target(store, "chars", "last")
        counts = np.asarray(tgt.y, dtype=np.float64)
        return _broadcast(store, "chars", "values", tgt.items, counts, tgt.classes, audio_only, list(tgt.notes))
    if name == "ctc":
        return _ctc_concept(store, positions)
    return _field_concept(store, name, audio_only)


def _lookup(rows: np.ndarray, table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def values(r):
        return table[np.searchsorted(rows, r)]

    return values


def _broadcast(store, name, kind, items, per_item, columns, audio_only, notes) -> Concept:
    """Every selected row of an item carries the item's value."""
    rows = store.rows(items, audio_only=audio_only)
    slot = np.full(store.n_items, -1, dtype=np.int64)
    slot[items] = np.arange(len(items))

    def values(r):
        return per_item[slot[store.row_items(r)]]

    return Concept(name, kind, rows, [str(c) for c in columns], values, notes)


def _field_concept(store: ActivationStore, name: str, audio_only: bool) -> Concept:
    try:
        values = store.field(name)
    except InterpError:
        raise InterpError(f"unknown concept '{name}': the store has no item field '{name}'; item fields: "
                          f"{', '.join(store.item_fields())}; computed concepts: {', '.join(SPECIAL_CONCEPTS)}") from None
    items, labels = [], []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and np.isnan(v) and name != "snr_db"):
            continue
        items.append(i)
        labels.append("clean" if isinstance(v, float) and np.isnan(v) else _class_name(v))
    classes, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    if len(classes) < 2:
        only = f" ('{classes[0]}')" if len(classes) else ""
        raise InterpError(f"concept '{name}' has one class{only} among {len(items)} items; erasing it needs at least two")
    notes = [f"{store.n_items - len(items)} item(s) without a value of '{name}' left out"] if len(items) < store.n_items else []
    onehot = np.eye(len(classes))[codes]
    return _broadcast(store, name, "classes", np.asarray(items, dtype=np.int64), onehot, classes, audio_only, notes)


def _class_name(v) -> str:
    """A class as text: 1.0 and 1 are the same class '1' (labels are stored as text)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def ctc_frame_targets(n_frames: int, codes: np.ndarray, n_symbols: int) -> np.ndarray:
    """(n_frames, n_symbols) fractional character counts per frame under a uniform alignment:
    character k of n covers frames [k T/n, (k+1) T/n); a frame gets the share of each
    character falling in it, so each character's shares sum to 1 over the frames."""
    n = len(codes)
    t = np.arange(n_frames, dtype=np.float64)[:, None]
    k = np.arange(n, dtype=np.float64)[None, :]
    width = n_frames / n
    overlap = np.clip(np.minimum(t + 1, (k + 1) * width) - np.maximum(t, k * width), 0, None) / width
    out = np.zeros((n_frames, n_symbols))
    np.add.at(out.T, codes, overlap.T)
    return out


def _ctc_concept(store: ActivationStore, positions: str) -> Concept:
    # The probe's CTC target (interp.probes) gives each item's transcript as character codes
    # (1-based, 0 = blank) over its audio rows; erasure needs a value per position, so the
    # characters are spread uniformly over the item's audio positions (speaking rate taken
    # as constant: the documented stand-in for a forced alignment).
    from interp.probes import build_target

    tgt = build_target(store, "ctc", "audio")
    n_sym = len(tgt.classes)
    first = {int(r[0]): (r, seq) for r, seq in zip(tgt.item_rows, tgt.y)}
    starts = np.array(sorted(first), dtype=np.int64)
    rows = np.concatenate(tgt.item_rows)
    order = np.argsort(rows)
    rows = rows[order]
    cache: dict[int, np.ndarray] = {}

    def values(r):
        out = np.zeros((len(r), n_sym))
        owner = starts[np.searchsorted(starts, r, side="right") - 1]
        for s in map(int, np.unique(owner)):
            item_rows, seq = first[s]
            if s not in cache:
                if len(cache) > 64:
                    cache.clear()
                cache[s] = ctc_frame_targets(len(item_rows), np.asarray(seq) - 1, n_sym)
            sel = owner == s
            out[sel] = cache[s][np.searchsorted(item_rows, r[sel])]
        return out

    notes = list(tgt.notes) + (["'ctc' is defined on audio positions only"] if positions == "all" else [])
    return Concept("ctc", "values", rows, list(tgt.classes), values, notes)


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
    n_model = int(store.attrs.get("n_model_layers") or 0) or (max(int(x) for x in store.layers if x != "embed") + 1)
    from interp.trace import parse_layers

    names = parse_layers(layers, n_model, embed_by_default=False)
    if "embed" in names:
        raise InterpError("erasure acts on block outputs; 'embed' is not a block: give block indices like 0,4,8")
    store.resolve_layers(",".join(names))
    return [int(x) for x in names]


def fit_eraser(store: ActivationStore | str | Path, concept: str | Concept, layers="all", *, positions: str = "audio",
               affine: bool = False, items: Sequence[int] | None = None, batch_items: int = 64, device: str = "cpu",
               constrain_cov_trace: bool = True, shrinkage: bool = True, svd_tol: float = 0.01,
               on_layer: Callable[[int], None] | None = None) -> Eraser:
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
            if on_layer:
                on_layer(layer)
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


# ---- re-probing ----------------------------------------------------------------------------


@dataclass
class ReprobeLayer:
    """A fresh probe's held-out score at one layer, on original and on erased activations."""

    layer: int
    original: float
    erased: dict[str, float]  #: condition (e.g. 'label erased', 'random subspace') -> score
    baseline: float  #: majority class accuracy, or 0 for R^2 (the training mean)


@dataclass
class ReprobeResult:
    concept: str
    metric: str  #: accuracy | r2
    baseline_name: str  #: majority | mean
    n_items: int
    n_rows: int
    folds: int
    layers: list[ReprobeLayer]


def _sample_rows(rows: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """A uniform random subset of rows (sorted). Uniform on purpose: the eraser's guarantee holds
    on the distribution of rows it was fitted on, and a per-item selection that over-weights some
    positions (say each item's first and last) can read back a concept encoded differently there."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))


def _span_coordinates(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows in an orthonormal basis of the training rows' span, when that is narrower than d.

    An L2-penalised linear model's weights lie in the span of its training rows, so fitting on
    these coordinates gives the same predictions at the same penalty (the exact change of
    variables `interp.probes` uses): a 4096-d state over 1,000 rows becomes a 1,000-d problem.
    """
    n, d = train.shape
    if d <= n:
        return train, test
    evals, U = np.linalg.eigh(train @ train.T)
    keep = evals > max(evals.max(), 1e-30) * 1e-9
    basis = train.T @ (U[:, keep] / np.sqrt(evals[keep]))  # (d, r) orthonormal
    return train @ basis, test @ basis


def probe_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, folds: int = 2, seed: int = 0) -> tuple[float, float]:
    """(probe score, baseline) of a fresh linear probe under grouped K-fold: logistic regression
    (C chosen by inner grouped CV) scored by accuracy against the training-majority class, or
    ridge (alpha by inner CV) scored by R^2 against the training mean."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    n_groups = len(np.unique(groups))
    if n_groups < 4:
        raise InterpError(f"re-probing needs at least 4 held-out items; have {n_groups}: raise --holdout or add items")

    def splitter(k, labels, g):
        # Stratified for classes: with few items, unstratified folds put different majorities
        # on the two sides, and the majority baseline stops being what a blind probe scores.
        k = min(k, len(np.unique(g)))
        if kind == "classes":
            return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(labels, labels, g))
        return list(GroupKFold(k, shuffle=True, random_state=seed).split(labels, groups=g))

    scores, bases = [], []
    # lbfgs on small problems is dominated by BLAS thread hand-offs; big ones keep the threads
    threads = 1 if X.size < 4_000_000 else None
    with warnings.catch_warnings(), threadpool_limits(threads, user_api="blas"):
        warnings.simplefilter("ignore")
        for train, test in splitter(folds, y, groups):
            scaler = StandardScaler().fit(X[train])
            xtr, xte = _span_coordinates(scaler.transform(X[train]), scaler.transform(X[test]))
            inner = splitter(3, y[train], groups[train])
            if kind == "classes":
                if len(np.unique(y[train])) < 2:
                    continue
                clf = LogisticRegressionCV(Cs=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], cv=inner, scoring="neg_log_loss", max_iter=300)
                clf.fit(xtr, y[train])
                scores.append(float((clf.predict(xte) == y[test]).mean()))
                bases.append(float((y[test] == np.bincount(y[train]).argmax()).mean()))
            else:
                reg = RidgeCV(alphas=[1e-1, 1.0, 1e1, 1e2, 1e3, 1e4], cv=inner).fit(xtr, y[train])
                scores.append(float(r2_score(y[test], reg.predict(xte), multioutput="variance_weighted")))
                mean = np.broadcast_to(y[train].mean(0), y[test].shape)
                bases.append(float(r2_score(y[test], mean, multioutput="variance_weighted")))
    if not scores:
        return float("nan"), float("nan")
    return float(np.mean(scores)), float(np.mean(bases))


def reprobe(store: ActivationStore, concept: Concept, erasers: Mapping[str, Eraser], layers: Sequence[int],
            folds: int = 2, seed: int = 0, max_rows: int | None = 2000,
            on_layer: Callable[[int], None] | None = None) -> ReprobeResult:
    """Train fresh probes for `concept` on the rows it covers (held-out items: restrict it
    first) at each layer: on the stored activations and on each eraser's output. At most
    `max_rows` rows, drawn uniformly, keep it affordable for wide models."""
    rows = _sample_rows(concept.rows, max_rows, seed)
    groups = store.row_items(rows)
    z = concept.z(rows)
    y = z.argmax(1) if concept.kind == "classes" else z
    out = []
    for layer in layers:
        X = store.read(str(layer), rows=rows, dtype=np.float64)
        original, base = probe_scores(X, y, groups, concept.kind, folds, seed)
        erased = {name: probe_scores(e(X, layer), y, groups, concept.kind, folds, seed)[0] for name, e in erasers.items()}
        out.append(ReprobeLayer(int(layer), original, erased, base))
        if on_layer:
            on_layer(layer)
    metric, base_name = ("accuracy", "majority") if concept.kind == "classes" else ("r2", "mean")
    return ReprobeResult(concept.name, metric, base_name, int(len(np.unique(groups))), int(len(rows)), folds, out)


# ---- the experiment ------------------------------------------------------------------------


@dataclass
class EraseResult:
    """Everything `interp erase` reports; `to_dict` is the JSON written beside the table."""

    model: dict
    concept: str
    layers: list[int]
    positions: str
    affine: bool
    store: str
    conditions: list[str]  #: baseline, '{concept} erased', then the controls
    erasers: dict[str, dict]  #: condition -> file, method, concept, ranks
    accuracy: list[dict]  #: accuracy_table rows (system = condition): n, accuracy, Wilson CI, unparsed
    predictions: dict[str, str]  #: condition -> predictions JSONL
    reprobe: ReprobeResult | None
    fit_items: int
    holdout_items: int
    eval_items: int
    eval_items_in_fit: int  #: evaluation items also used to fit (same id in the store's fit split)
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


Progress = Callable[[str, int], Callable[[int], None]]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "+-_." else "_" for ch in name)


def split_items(store: ActivationStore, concept: Concept, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit items, held-out items) among the items that carry the concept: a seeded `holdout`
    fraction kept out, drawn per class for class concepts so both sides keep the class mix."""
    if not 0.0 <= holdout < 1.0:
        raise InterpError(f"--holdout must be in [0, 1), got {holdout}")
    rng = np.random.default_rng(seed)
    items, first = np.unique(store.row_items(concept.rows), return_index=True)
    strata = concept.z(concept.rows[first]).argmax(1) if concept.kind == "classes" else np.zeros(len(items), np.int64)
    held = [rng.permutation(items[strata == s])[: int(round(holdout * (strata == s).sum()))] for s in np.unique(strata)]
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(items, held), held


def _load_or_fit(path: Path, adapter, store, concept: Concept, layers, positions, affine, refit, fit_items, device,
                 advance) -> tuple[Eraser, bool]:
    if path.exists() and not refit:
        eraser = Eraser.load(path)
        try:
            eraser.check(adapter, [])
        except InterpError as e:
            raise InterpError(f"{e}; or pass --refit") from None
        missing = [l for l in layers if l not in eraser.layer_erasers]
        if missing:
            raise InterpError(f"eraser {path} has no layer {missing[0]} (it was fitted at layers "
                              f"{_layer_list(eraser.layers)}); pass --refit to fit it at these layers, or choose "
                              "another --out")
        fitted_on = eraser.meta.get("store_id")
        if fitted_on != store.identity:
            raise InterpError(f"{path} was fitted on another store ({eraser.meta.get('store') or 'unknown'}, id "
                              f"{fitted_on or 'missing'}), not {store.path} (id {store.identity}); pass --refit to fit "
                              "it on this store, or choose another --out")
        for what, have, want in (("concept", eraser.concept, concept.name), ("positions", eraser.positions, positions),
                                 ("affine", eraser.affine, affine)):
            if have != want:
                raise InterpError(f"{path} was fitted with {what} {have!r}, not {want!r}; pass --refit to fit it again "
                                  "or choose another --out")
        for _ in layers:
            advance(1)
        return eraser, True
    eraser = fit_eraser(store, concept, layers, positions=positions, affine=affine, items=fit_items, device=device,
                        on_layer=lambda _: advance(1))
    eraser.save(path)
    return eraser, False


def erase_experiment(adapter, rows: Sequence[dict], store: ActivationStore, concept: str, layers, out, *,
                     positions: str = "audio", affine: bool = False, controls: Sequence[str] = ("random",),
                     batch_size: int = 8, max_new_tokens: int = 32, seed: int = 0, holdout: float = 0.25,
                     refit: bool = False, reprobe_folds: int = 2, progress: Progress | None = None) -> EraseResult:
    """Fit (or load from `out/erasers`) erasers of `concept` at `layers`, then answer `rows`
    for the baseline, the concept erased, and each control, with the erasure on at every
    position through generation; re-probe the held-out store items. Writes the erasers and
    one predictions file per condition under `out`; the report is `write_erase_report`."""
    from cascades.runner import accuracy_table, answer_speech
    from interp.atomic import write_jsonl
    from interp.interventions import Erase

    progress = progress or (lambda _desc, _total: (lambda _n: None))
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise InterpError(f"unknown control '{unknown[0]}'; use {', '.join(CONTROLS)}")
    if batch_size < 1:
        raise InterpError("--batch-size must be at least 1")
    if not rows:
        raise InterpError("the manifest holds no items to answer")
    no_task = [str(r.get("id")) for r in rows if not r.get("task")]
    if no_task:
        raise InterpError(f"{len(no_task)} manifest item(s) have no 'task' (e.g. '{no_task[0]}'); the behavioural "
                          "evaluation needs the task of every item")
    from tasks import get_task

    for name in sorted({str(r["task"]) for r in rows}):
        get_task(name)  # an unknown task fails here, before any fitting
    out = Path(out)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    check_fit_store(store, positions)
    from interp.fingerprint import check_model

    check_model(store.attrs, adapter.fingerprint(), adapter.runtime_dtype, f"store {store.path.name}",
                f"the model at {adapter.path}", "give the model the store was traced with")
    layer_ids = resolve_fit_layers(store, layers)
    target = build_concept(store, concept, positions)
    fit_items, held = split_items(store, target, holdout, seed)
    notes = list(target.notes)
    fit_concept = target.restrict(store, fit_items)
    acoustic = build_concept(store, ACOUSTIC, "audio") if "acoustic" in controls else None

    erasers: dict[str, Eraser] = {}
    info: dict[str, dict] = {}
    name = f"{target.name} erased"
    folder = out / "erasers"
    n_fit = len(layer_ids) * (2 if acoustic is not None else 1)
    advance = progress("fitting erasers", n_fit)
    eraser, loaded = _load_or_fit(folder / f"{_slug(target.name)}.safetensors", adapter, store, fit_concept, layer_ids,
                                  positions, affine, refit, fit_items, adapter.device, advance)
    erasers[name] = eraser
    if "random" in controls:
        erasers[CONTROLS["random"]] = random_control(eraser, seed)
        erasers[CONTROLS["random"]].save(folder / "random.safetensors")
    if acoustic is not None:
        erasers[CONTROLS["acoustic"]], _ = _load_or_fit(folder / "acoustic.safetensors", adapter, store,
                                                       acoustic.restrict(store, fit_items), layer_ids, "audio", affine,
                                                       refit, fit_items, adapter.device, advance)
    seconds["fit"] = time.perf_counter() - t0
    for cond, e in erasers.items():
        file = {name: f"{_slug(target.name)}.safetensors", CONTROLS["random"]: "random.safetensors",
                CONTROLS["acoustic"]: "acoustic.safetensors"}[cond]
        info[cond] = {"file": str(folder / file), "method": e.method, "concept": e.concept,
                      "ranks": {str(k): v for k, v in e.ranks.items() if k in layer_ids},
                      "loaded": bool(loaded) if cond == name else None}
    if loaded:
        notes.append(f"erasers loaded from {folder} (pass --refit to fit them again)")

    result_reprobe = None
    t1 = time.perf_counter()
    if len(held):
        held_concept = target.restrict(store, held)
        if len(held_concept.items(store)) >= 4:
            probe_erasers = {c: e for c, e in erasers.items() if c != CONTROLS["acoustic"]}
            result_reprobe = reprobe(store, held_concept, probe_erasers, layer_ids, folds=reprobe_folds, seed=seed,
                                     on_layer=lambda _l, a=progress("re-probing", len(layer_ids)): a(1))
        else:
            notes.append(f"re-probe skipped: {len(held_concept.items(store))} held-out item(s) carry the concept, fewer than 4")
    else:
        notes.append("re-probe skipped: --holdout 0 leaves no held-out items")
    seconds["reprobe"] = time.perf_counter() - t1

    conditions = ["baseline"] + list(erasers)
    preds_paths: dict[str, str] = {}
    all_preds: list[dict] = []
    for cond in conditions:
        t2 = time.perf_counter()
        ivs = [] if cond == "baseline" else [Erase(erasers[cond], layers=layer_ids)]
        preds = answer_speech(adapter, list(rows), system=cond, interventions=ivs, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, on_items_done=progress(f"answering: {cond}", len(rows)))
        path = out / "predictions" / f"{_slug(cond.replace(' ', '_'))}.jsonl"
        write_jsonl(path, preds)
        preds_paths[cond] = str(path)
        all_preds.extend(preds)
        seconds[f"answer: {cond}"] = time.perf_counter() - t2
    fit_ids = set(np.asarray(store.items["id"])[fit_items].tolist())
    in_fit = sum(str(r["id"]) in fit_ids for r in rows)
    if in_fit:
        notes.append(f"{in_fit} of {len(rows)} evaluation item(s) were also used to fit the erasers")
    seconds["total"] = time.perf_counter() - t0
    model = {"path": str(adapter.path), "family": adapter.family, "model_fingerprint": adapter.fingerprint(),
             "d_model": adapter.d_model, "n_layers": adapter.n_layers}
    return EraseResult(model, target.name, layer_ids, positions, affine, str(store.path), conditions, info,
                       accuracy_table(all_preds), preds_paths, result_reprobe, int(len(fit_items)), int(len(held)),
                       len(rows), int(in_fit), {k: round(v, 3) for k, v in seconds.items()}, notes)


# ---- the report ----------------------------------------------------------------------------


def _column_key(row: dict) -> tuple:
    return (row["task"], row.get("snr_db"))


def column_title(task: str, snr) -> str:
    try:
        from tasks import get_task

        title = get_task(task).title
    except (ImportError, InterpError, KeyError):
        title = task
    return title if snr is None else f"{title} @ {snr:g} dB"


def accuracy_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{100 * row['accuracy']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def table7(result: EraseResult) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 7 layout: one row per condition, one column per task (accuracy %,
    Wilson 95% interval). Returns (header, rows)."""
    columns = sorted({_column_key(r) for r in result.accuracy}, key=lambda k: (k[0], k[1] is not None, k[1] or 0))
    cell = {(r["system"], _column_key(r)): r for r in result.accuracy}
    n = {k: max((r["n"] for r in result.accuracy if _column_key(r) == k), default=0) for k in columns}
    header = ["condition"] + [f"{column_title(*k)} (n={n[k]})" for k in columns]
    body = [[cond] + [accuracy_cell(cell.get((cond, k))) for k in columns] for cond in result.conditions]
    return header, body


def markdown_report(result: EraseResult) -> str:
    def table(header, body):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])

    name = Path(result.model["path"]).name
    parts = [f"# Erasure of '{result.concept}' in {name}", "",
             f"LEACE at layers {_layer_list(result.layers)}, fitted on {result.positions} positions of "
             f"`{Path(result.store).name}` ({result.fit_items} items), affine {'on' if result.affine else 'off'}, "
             "applied at every position of the prompt and of each generated token.", "",
             "## Accuracy (%) with Wilson 95% intervals", "", table(*table7(result)), "",
             "## Erased rank per layer", ""]
    header = ["eraser"] + [str(l) for l in result.layers]
    parts.append(table(header, [[c] + [str(e["ranks"].get(str(l), "-")) for l in result.layers]
                                for c, e in result.erasers.items()]))
    rp = result.reprobe
    if rp is not None:
        names = list(rp.layers[0].erased) if rp.layers else []
        parts += ["", f"## Fresh probe on held-out activations ({rp.metric}; {rp.n_items} items, {rp.n_rows} positions, "
                      f"{rp.folds}-fold grouped CV)", ""]
        fmt = (lambda v: f"{100 * v:.1f}") if rp.metric == "accuracy" else (lambda v: f"{v:.3f}")
        body = [[str(l.layer), fmt(l.original)] + [fmt(l.erased[k]) for k in names] + [fmt(l.baseline)] for l in rp.layers]
        parts.append(table(["layer", "original"] + names + [rp.baseline_name], body))
    if result.notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(parts) + "\n"


def write_erase_report(result: EraseResult, out) -> dict[str, Path]:
    """out/erase.json, out/erase.md and out/erase.png."""
    from interp.atomic import write_json, write_text
    from interp.plots import write_erase_plot

    out = Path(out)
    paths = {"json": out / "erase.json", "markdown": out / "erase.md", "plot": out / "erase.png"}
    write_json(paths["json"], result.to_dict())
    write_text(paths["markdown"], markdown_report(result))
    write_erase_plot(result, paths["plot"])
    return paths


def _layer_list(layers) -> str:
    return ",".join(str(l) for l in layers)


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, MappingProxyType):
        return dict(o)
    return str(o)
