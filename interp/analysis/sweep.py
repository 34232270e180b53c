"""The probe sweep: one probe per layer for a target, every layer on the same folds.

`plan_probe` checks the request and builds the target and the outer folds once; `run_probe`
reads one layer's features at a time from the store (memory: the target plus one layer of the
selected rows) and scores each fold's probe, majority/mean baseline and shuffled-label control
(`interp.analysis.probing`), so every number on a curve is comparable to its neighbours.
Selectivity is the probe's score minus its control's. For `ctc` a layer's probe and control
heads of every fold train together (`interp.analysis.ctc.fit_ctc_heads`) and are scored by
text decodability, max(0, 1 - CER), against the medoid transcript of the training fold.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from interp.analysis.fitted_probe import fit_probe
from interp.analysis.probing import (ProbeConfig, can_stratify, control_labels, cross_validate, make_folds,
                                     one_thread_if_small)
from interp.analysis.targets import Target, build_target
from interp.atomic import json_ready
from interp.errors import InterpError
from interp.progress import Progress, stage
from interp.store import ActivationStore


@dataclass
class LayerScore:
    """One layer's probe score with its baselines, each as mean and standard deviation over folds."""

    layer: str
    score: float  #: mean over folds of the target's metric
    spread: float  #: standard deviation over folds
    fold_scores: list[float]
    baseline: float  #: majority class / training mean / medoid transcript
    baseline_spread: float
    control: float  #: shuffled-label control task, same probe and folds
    control_spread: float
    selectivity: float  #: score - control
    n_items: int
    n_positions: int
    extra: dict[str, float] = field(default_factory=dict)  #: macro-F1, CER, chosen C/alpha, ...


@dataclass
class ProbeResult:
    """A probe sweep: one LayerScore per layer, plus what was probed and how."""

    store: str
    target: str
    kind: str
    metric: str  #: accuracy | r2 | decodability
    baseline_name: str  #: majority | mean | medoid
    positions: str
    folds: int
    seed: int
    layers: list[LayerScore]
    n_items: int
    n_positions: int
    classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes: dict = field(default_factory=dict, repr=False)
    """Layer -> `FittedProbe` fitted on every unit after the cross-validation (not for ctc)."""

    def to_dict(self) -> dict:
        """Plain JSON-ready data (NaN, e.g. an undefined chosen C, becomes None); the fitted
        probes are saved apart (`FittedProbe.save`)."""
        out = json_ready(asdict(replace(self, probes={})))
        del out["probes"]
        return out

    def best(self) -> LayerScore:
        return max(self.layers, key=lambda s: -np.inf if np.isnan(s.score) else s.score)


METRIC = {"classification": ("accuracy", "majority"), "regression": ("r2", "mean"), "ctc": ("decodability", "medoid")}


@dataclass
class ProbePlan:
    """A checked probe sweep, ready to run: target, layers and the folds every layer shares."""

    store: ActivationStore
    target: Target
    layers: list[str]
    folds: list[tuple[np.ndarray, np.ndarray]]  #: (train, test) unit indices, grouped by item
    control: object  #: the shuffled-label control target, aligned with target.y
    config: ProbeConfig


def plan_probe(store: ActivationStore, target: str, layers: str | Sequence = "all", positions: str | None = None,
               kind: str = "auto", config: ProbeConfig = ProbeConfig()) -> ProbePlan:
    """Validate the request and build the target and folds; every bad-input error is raised here,
    before any fitting."""
    if store.n_items == 0:
        raise InterpError(f"store {store.path} holds no items; run `interp trace` to fill it")
    names = store.resolve_layers(layers)
    if config.ctc_method not in ("batched", "reference"):
        raise InterpError(f"unknown CTC method '{config.ctc_method}'; use batched or reference")
    tgt = build_target(store, target, positions, kind, max_positions=config.max_positions,
                       pitch_range=(config.pitch_fmin, config.pitch_fmax))
    folds = make_folds(tgt, config.folds, config.seed)
    if tgt.kind == "classification" and not can_stratify(tgt.y, tgt.groups, config.folds):
        tgt.notes.append(f"no class has {config.folds} items: folds are grouped but not stratified")
    return ProbePlan(store, tgt, names, folds, control_labels(tgt, folds, config.seed), config)


def run_probe(plan: ProbePlan, progress: Progress | None = None, keep_probes: bool = True) -> ProbeResult:
    """Fit and score the plan's probes layer by layer, one layer's features in memory at a time;
    with `keep_probes`, also fit each layer's probe on every unit (`ProbeResult.probes`), so
    its direction can be steered or ablated."""
    store, tgt, config = plan.store, plan.target, plan.config
    metric, baseline_name = METRIC[tgt.kind]
    n_positions = int(sum(len(r) for r in tgt.item_rows)) if tgt.kind == "ctc" else tgt.n_units
    bounds = np.concatenate([[0], np.cumsum([len(r) for r in tgt.item_rows])]) if tgt.kind == "ctc" else None
    notes = list(tgt.notes)
    advance = stage(progress, f"probe {tgt.name}", len(plan.layers), "layers")
    scores, probes = [], {}
    unconverged = 0
    jobs = ctc_jobs(plan, n_positions)
    in_workers = _ctc_layers_in_workers(plan, bounds, jobs, advance) if jobs > 1 else {}
    for layer in plan.layers:
        if layer in in_workers:
            scores.append(_summarise(layer, in_workers[layer], len(tgt.items), n_positions))
            continue
        X = _finite_features(store, tgt, layer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if tgt.kind == "ctc":
                per_fold = _score_ctc_layer(tgt, X, bounds, plan.folds, plan.control, config)
            else:
                per_fold = cross_validate(X, tgt.y, tgt.groups, tgt.kind, plan.folds, config, plan.control)
            if keep_probes and tgt.kind != "ctc":
                probes[layer] = fit_probe(X, tgt.y, tgt.groups, tgt.kind, config, layer, tgt.name,
                                          str(store.attrs.get("model_fingerprint", "")), tgt.classes or None)
        unconverged += sum("converge" in str(w.message).lower() for w in caught)
        del X
        score = _summarise(layer, per_fold, len(tgt.items), n_positions)
        scores.append(score)
        advance(1)
    if unconverged:
        notes.append(f"{unconverged} logistic fit(s) stopped at max_iter={config.max_iter} before converging")
    return ProbeResult(str(store.path), tgt.name, tgt.kind, metric, baseline_name, tgt.positions, config.folds,
                       config.seed, scores, len(tgt.items), n_positions, tgt.classes, notes, probes)


def probe(store: ActivationStore | str | Path, target: str, layers: str | Sequence = "all", positions: str | None = None,
          kind: str = "auto", config: ProbeConfig = ProbeConfig(), progress: Progress | None = None,
          keep_probes: bool = True) -> ProbeResult:
    """Fit and score one probe per layer for TARGET, with majority/mean and shuffled-label baselines
    on the same grouped folds (`plan_probe` then `run_probe`)."""
    own = not isinstance(store, ActivationStore)
    store = ActivationStore(store) if own else store
    try:
        return run_probe(plan_probe(store, target, layers, positions, kind, config), progress, keep_probes)
    finally:
        if own:
            store.close()


def _summarise(layer: str, per_fold: list[dict], n_items: int, n_positions: int) -> LayerScore:
    def stat(key):
        v = np.array([f[key] for f in per_fold], dtype=np.float64)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    score, spread = stat("score")
    base, base_sd = stat("baseline")
    ctrl, ctrl_sd = stat("control")
    extra = {}
    for key in per_fold[0]:
        if key not in ("score", "baseline", "control"):
            m, s = stat(key)
            extra[key] = m
            if key in ("macro_f1", "cer"):
                extra[f"{key}_spread"] = s
    return LayerScore(layer, score, spread, [float(f["score"]) for f in per_fold], base, base_sd, ctrl, ctrl_sd,
                      score - ctrl, n_items, n_positions, extra)


def _finite_features(store: ActivationStore, target: Target, layer: str) -> np.ndarray:
    X = layer_features(store, target, layer)
    if not np.all(np.isfinite(X)):
        raise InterpError(f"layer {layer} of {store.path} holds non-finite values (float16 overflow?); "
                          "re-trace with --dtype float32")
    return X


def layer_features(store: ActivationStore, target: Target, layer: str) -> np.ndarray:
    """One layer's features for the target's units, (n_units, d_model) float32."""
    if target.kind == "ctc":
        return store.read(layer, rows=np.concatenate(target.item_rows))
    if target.rows is None:
        return store.pooled(layer, target.items, how=target.positions)
    return store.read(layer, rows=target.rows)


# ---- CTC text decodability ---------------------------------------------------------------


def fit_ctc_head(seqs: Sequence[np.ndarray], targets: Sequence[np.ndarray], n_symbols: int,
                 config: ProbeConfig = ProbeConfig(), seed: int = 0):
    """Train one linear CTC head (blank = 0) on standardised states for `config.ctc_epochs`
    epochs, no validation split; returns a callable that decodes a list of (T_i, d) arrays into
    symbol sequences. The reference implementation (`interp.analysis.ctc_reference.fit_ctc_head`); sweeps use the
    batched `interp.analysis.ctc.fit_ctc_heads`."""
    from interp.analysis.ctc_reference import fit_ctc_head as reference

    return reference(seqs, targets, n_symbols, config.ctc_epochs, config.ctc_lr, config.ctc_weight_decay,
                     config.ctc_batch_items, seed, config.device)


def ctc_jobs(plan: ProbePlan, n_positions: int) -> int:
    """Worker processes for a CTC sweep: `ctc_jobs` if set; else, on a CPU, one per core (at most
    one per layer) when a layer holds at least SMALL_PROBLEM values (below that, starting a
    worker costs more than it saves). A head's epoch is a chain of small products and a
    sequential loss that a second thread barely speeds up; a second layer on the other core
    nearly doubles the sweep's throughput (benchmarks/bench_ctc.py)."""
    import os

    from interp.analysis.probing import SMALL_PROBLEM

    if plan.target.kind != "ctc" or plan.config.ctc_method != "batched" or len(plan.layers) < 2:
        return 1
    if plan.config.ctc_jobs:
        return min(plan.config.ctc_jobs, len(plan.layers))
    if plan.config.device != "cpu" or n_positions * plan.store.d_model < SMALL_PROBLEM:
        return 1
    return min(len(os.sched_getaffinity(0)), len(plan.layers))


def _ctc_layers_in_workers(plan: ProbePlan, bounds: np.ndarray, jobs: int, advance) -> dict[str, list[dict]]:
    """Every layer's per-fold CTC scores, `jobs` layers at a time in spawned worker processes
    that each open the store, read one layer and train its heads on one thread."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    args = (str(plan.store.path), plan.target, bounds, plan.folds, plan.control, plan.config)
    out = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_ctc_layer_worker, layer, *args): layer for layer in plan.layers}
        try:
            for done in as_completed(futures):
                out[futures[done]] = done.result()
                advance(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out


def _ctc_layer_worker(layer: str, path: str, target: Target, bounds, folds, y_ctrl, config: ProbeConfig) -> list[dict]:
    """One layer's CTC scores in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    with ActivationStore(path) as store:
        X = _finite_features(store, target, layer)
    return _score_ctc_layer(target, X, bounds, folds, y_ctrl, config)


def _medoid(seqs: Sequence[np.ndarray], rng: np.random.Generator, limit: int = 200) -> np.ndarray:
    """The training transcript with the least total edit distance to (up to `limit`) others."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    pick = rng.choice(len(seqs), size=min(limit, len(seqs)), replace=False)
    cand = [list(map(int, seqs[i])) for i in pick]
    d = cdist(cand, cand, scorer=Levenshtein.distance)
    return seqs[pick[int(np.argmin(d.sum(1)))]]


def _score_ctc_layer(target: Target, X: np.ndarray, bounds: np.ndarray, folds, y_ctrl, config: ProbeConfig) -> list[dict]:
    """Every fold's probe and control head of one layer, trained together (`fit_ctc_heads`):
    head 2k is fold k's probe, head 2k+1 its shuffled-transcript control."""
    import torch

    from interp.analysis.ctc import CTCHeadConfig, cer, fit_ctc_heads

    if config.ctc_method == "reference":
        return [_score_ctc_fold_reference(target, X, bounds, y_ctrl, tr, te, config, config.seed + k)
                for k, (tr, te) in enumerate(folds)]
    with one_thread_if_small(X.size):
        x = torch.as_tensor(X, dtype=torch.float32).to(config.device)
        train = [tr for tr, _ in folds for _ in (0, 1)]
        targets = [y for _ in folds for y in (target.y, y_ctrl)]
        head_config = CTCHeadConfig(epochs=config.ctc_epochs, lr=config.ctc_lr, start_lr=config.ctc_start_lr,
                                    patience=config.ctc_patience, weight_decay=config.ctc_weight_decay,
                                    batch_items=config.ctc_batch_items, val_fraction=config.ctc_val_fraction,
                                    seed=config.seed, device=config.device)
        heads = fit_ctc_heads(x, bounds, targets, train, len(target.classes), head_config)
        out = []
        for k, (train_k, test) in enumerate(folds):
            rows = torch.from_numpy(np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in test])).to(x.device)
            lengths = np.diff(bounds)[test].tolist()
            xs = x.index_select(0, rows)
            refs = [target.y[i] for i in test]
            probe_cer = cer(refs, heads.decode(xs, lengths, 2 * k), target.classes)
            control_cer = cer([y_ctrl[i] for i in test], heads.decode(xs, lengths, 2 * k + 1), target.classes)
            medoid = _medoid([target.y[i] for i in train_k], np.random.default_rng(config.seed + k))
            base_cer = cer(refs, [medoid] * len(test), target.classes)
            dec = lambda c: max(0.0, 1.0 - c)  # noqa: E731
            out.append({"score": dec(probe_cer), "baseline": dec(base_cer), "control": dec(control_cer),
                        "cer": probe_cer, "baseline_cer": base_cer, "control_cer": control_cer,
                        "epochs": float(heads.epochs[2 * k]), "control_epochs": float(heads.epochs[2 * k + 1])})
        return out


def _score_ctc_fold_reference(target: Target, X: np.ndarray, bounds: np.ndarray, y_ctrl, train, test,
                              config: ProbeConfig, seed: int) -> dict:
    """One fold with the reference heads (`fit_ctc_head`): probe, medoid and control."""
    from interp.analysis.ctc import cer

    with one_thread_if_small(X.size):
        seqs = [X[bounds[k]:bounds[k + 1]] for k in range(len(target.items))]
        tr_x, te_x = [seqs[k] for k in train], [seqs[k] for k in test]
        refs = [target.y[k] for k in test]
        probe_cer = cer(refs, fit_ctc_head(tr_x, [target.y[k] for k in train], len(target.classes), config, seed)(te_x),
                        target.classes)
        medoid = _medoid([target.y[k] for k in train], np.random.default_rng(seed))
        base_cer = cer(refs, [medoid] * len(test), target.classes)
        decode_ctrl = fit_ctc_head(tr_x, [y_ctrl[k] for k in train], len(target.classes), config, seed)
        control_cer = cer([y_ctrl[k] for k in test], decode_ctrl(te_x), target.classes)
    dec = lambda c: max(0.0, 1.0 - c)  # noqa: E731
    return {"score": dec(probe_cer), "baseline": dec(base_cer), "control": dec(control_cer), "cer": probe_cer,
            "baseline_cer": base_cer, "control_cer": control_cer}
