"""Merging the shards of `interp erase --shard K/N` into the report one process writes.

Each shard fits (or loads) the erasers, re-probes the held-out store items and answers its
part of the manifest under every condition; all of that but the answers depends on the store
and the seed only. The merge refuses shards whose erasers differ by a byte, or whose model,
concept, layers, fit or re-probe differ; joins each condition's predictions with
`cascades.merge.merge_predictions` (which checks that the shards cover one manifest once);
copies the erasers; and recomputes the accuracy table from the joined predictions. The
report equals a single process's but for timings and paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from interp.errors import InterpError

#: fields of a shard's erase.json that every shard must share
SHARED = ("model", "concept", "layers", "positions", "affine", "store", "conditions", "reprobe", "fit_items",
          "holdout_items")


def _read(folder: Path) -> dict:
    report = folder / "erase.json"
    if not report.is_file():
        raise InterpError(f"{folder} holds no erase.json; give the --out folders that `interp erase --shard K/N` wrote")
    result = json.loads(report.read_text())
    if not result.get("shard"):
        raise InterpError(f"{folder} is not a shard's erase run (its erase.json records no shard); give the folders "
                          "`interp erase --shard K/N` wrote")
    return result


def merge_erase(shards: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Join the finished shards of one `interp erase` run into the folder `out` (report,
    predictions, erasers); returns the report's JSON path."""
    from cascades.agreement import accuracy_table
    from cascades.merge import merge_predictions
    from interp.experiments.erase import EraseResult, _slug, in_fit_note
    from interp.experiments.erase_report import write_erase_report
    from interp.locks import OutputLock
    from interp.manifest import read_jsonl
    from interp.models.pretrained import sha256_file

    folders, out = [Path(s) for s in shards], Path(out)
    if not folders:
        raise InterpError("give the shards' erase folders to merge")
    if any(f.resolve() == out.resolve() for f in folders):
        raise InterpError(f"--out {out} is one of the shards; merge into another folder")
    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file; give a folder for the merged report")
    from interp.shard import ShardInfo, check_coverage

    results = [_read(f) for f in folders]
    order = check_coverage([ShardInfo.from_dict(r["shard"]) for r in results], [str(f) for f in folders])
    folders, results = [folders[i] for i in order], [results[i] for i in order]
    first = results[0]
    names = {cond: Path(e["file"]).name for cond, e in first["erasers"].items()}
    first_hashes = {cond: sha256_file(folders[0] / "erasers" / name) for cond, name in names.items()}
    for folder, r in zip(folders[1:], results[1:]):
        for key in SHARED:
            if r.get(key) != first.get(key):
                raise InterpError(f"{folder} and {folders[0]} differ in {key}; merge the shards of one erase run "
                                  "(same model, store, concept, layers, seed and holdout)")
        for cond, name in names.items():
            if sha256_file(folder / "erasers" / name) != first_hashes[cond]:
                raise InterpError(f"the '{cond}' erasers of {folder} and {folders[0]} differ; run every shard with the "
                                  "same store, seed and holdout (or --refit them all)")
    with OutputLock(out):
        if (out / "erase.json").exists() and not overwrite:
            raise InterpError(f"{out} holds an erase report; pass --overwrite to replace it")
        paths, preds = {}, []
        for cond in first["conditions"]:
            name = f"{_slug(cond.replace(' ', '_'))}.jsonl"
            merged = out / "predictions" / name
            merged.parent.mkdir(parents=True, exist_ok=True)
            merge_predictions([f / "predictions" / name for f in folders], merged, overwrite=True)
            paths[cond] = str(merged)
            preds += [row for _, row in read_jsonl(merged)]
        (out / "erasers").mkdir(parents=True, exist_ok=True)
        erasers = {}
        for cond, e in first["erasers"].items():
            name = names[cond]
            tmp = out / "erasers" / f".{name}.merge"
            shutil.copyfile(folders[0] / "erasers" / name, tmp)
            tmp.replace(out / "erasers" / name)
            erasers[cond] = {**e, "file": str(out / "erasers" / name)}
        n = sum(r["eval_items"] for r in results)
        in_fit = sum(r["eval_items_in_fit"] for r in results)
        own = {in_fit_note(r["eval_items_in_fit"], r["eval_items"]) for r in results}
        notes = [x for x in first["notes"] if x not in own] + ([in_fit_note(in_fit, n)] if in_fit else [])
        seconds = {f"shard {r['shard']['index']}: {k}": v for r in results for k, v in r["seconds"].items()}
        result = EraseResult.from_dict({**first, "erasers": erasers, "accuracy": accuracy_table(preds),
                                        "predictions": paths, "eval_items": n, "eval_items_in_fit": in_fit,
                                        "seconds": seconds, "notes": notes, "shard": None})
        return write_erase_report(result, out)["json"]
