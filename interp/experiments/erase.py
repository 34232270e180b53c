"""The erasure experiment, the study's causal test (PAPER.md, Table 7): `interp erase`.

`erase_experiment` fits (or loads) LEACE erasers of a concept at several layers from a store
(`interp.analysis.leace`), answers the task with the erasure kept on at every position through
generation (`cascades.runner.answer_speech`, the same runner as `interp run`), next to the
baseline, the matched-rank random control and any extra control (the acoustic one erases
energy and pitch), and re-probes held-out store items (`interp.analysis.reprobe`). The report
(tables, JSON, figure) is `interp.experiments.erase_report`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from interp.analysis.concepts import Concept, build_concept, check_fit_store
from interp.analysis.leace import Eraser, _layer_list, fit_eraser, random_control, resolve_fit_layers
from interp.analysis.reprobe import ReprobeResult, reprobe
from interp.errors import InterpError
from interp.progress import Progress
from interp.store import ActivationStore

CONTROLS = {"random": "random subspace", "acoustic": "acoustic erased"}
ACOUSTIC = "energy+pitch"


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
    shard: dict | None = None  #: `interp.shard.ShardInfo` of a shard's run (`--shard K/N`); None for the whole manifest

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EraseResult":
        from interp.analysis.reprobe import ReprobeLayer

        d = dict(d)
        if d.get("reprobe") is not None:
            d["reprobe"] = ReprobeResult(**{**d["reprobe"], "layers": [ReprobeLayer(**l) for l in d["reprobe"]["layers"]]})
        return cls(**d)


def in_fit_note(in_fit: int, n: int) -> str:
    return f"{in_fit} of {n} evaluation item(s) were also used to fit the erasers"


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
                 progress: Progress | None) -> tuple[Eraser, bool]:
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
        return eraser, True
    eraser = fit_eraser(store, concept, layers, positions=positions, affine=affine, items=fit_items, device=device,
                        progress=progress)
    eraser.save(path)
    return eraser, False


def erase_experiment(adapter, rows: Sequence[dict], store: ActivationStore, concept: str, layers, out, *,
                     positions: str = "audio", affine: bool = False, controls: Sequence[str] = ("random",),
                     batch_size: int = 8, max_new_tokens: int = 32, seed: int = 0, holdout: float = 0.25,
                     refit: bool = False, reprobe_folds: int = 2, shard=None,
                     progress: Progress | None = None) -> EraseResult:
    """Fit (or load from `out/erasers`) erasers of `concept` at `layers`, then answer `rows`
    for the baseline, the concept erased, and each control, with the erasure on at every
    position through generation; re-probe the held-out store items. Writes the erasers and
    one predictions file per condition under `out`; the report is `write_erase_report`.
    `shard` (`interp.shard.ShardInfo`): `rows` are that shard of the manifest, and every
    prediction records it, for `interp.experiments.erase_merge`."""
    from cascades.agreement import accuracy_table
    from cascades.runner import answer_speech
    from interp.atomic import write_jsonl
    from interp.interventions import Erase
    from tasks import check_task_rows

    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise InterpError(f"unknown control '{unknown[0]}'; use {', '.join(CONTROLS)}")
    if batch_size < 1:
        raise InterpError("--batch-size must be at least 1")
    if not rows:
        raise InterpError("the manifest holds no items to answer")
    check_task_rows(rows)  # an item without a task, or an unknown task, fails here, before any fitting
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
    eraser, loaded = _load_or_fit(folder / f"{_slug(target.name)}.safetensors", adapter, store, fit_concept, layer_ids,
                                  positions, affine, refit, fit_items, adapter.device, progress)
    erasers[name] = eraser
    if "random" in controls:
        erasers[CONTROLS["random"]] = random_control(eraser, seed)
        erasers[CONTROLS["random"]].save(folder / "random.safetensors")
    if acoustic is not None:
        erasers[CONTROLS["acoustic"]], _ = _load_or_fit(folder / "acoustic.safetensors", adapter, store,
                                                       acoustic.restrict(store, fit_items), layer_ids, "audio", affine,
                                                       refit, fit_items, adapter.device, progress)
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
                                     progress=progress)
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
                              max_new_tokens=max_new_tokens, progress=progress)
        if shard is not None:
            preds = [{**p, "shard": shard.to_dict()} for p in preds]
        path = out / "predictions" / f"{_slug(cond.replace(' ', '_'))}.jsonl"
        write_jsonl(path, preds)
        preds_paths[cond] = str(path)
        all_preds.extend(preds)
        seconds[f"answer: {cond}"] = time.perf_counter() - t2
    fit_ids = set(np.asarray(store.items["id"])[fit_items].tolist())
    in_fit = sum(str(r["id"]) in fit_ids for r in rows)
    if in_fit:
        notes.append(in_fit_note(in_fit, len(rows)))
    seconds["total"] = time.perf_counter() - t0
    model = {"path": str(adapter.path), "family": adapter.family, "model_fingerprint": adapter.fingerprint(),
             "d_model": adapter.d_model, "n_layers": adapter.n_layers}
    return EraseResult(model, target.name, layer_ids, positions, affine, str(store.path), conditions, info,
                       accuracy_table(all_preds), preds_paths, result_reprobe, int(len(fit_items)), int(len(held)),
                       len(rows), int(in_fit), {k: round(v, 3) for k, v in seconds.items()}, notes,
                       shard.to_dict() if shard is not None else None)
