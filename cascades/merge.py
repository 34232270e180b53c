"""Merging the shards of a behavioural run (`interp run|cascade --shard K/N`) into one
predictions file, equal to the file one process writes over the same manifest.

The shards' lines are concatenated in shard order with their `shard` field dropped, and
written to a temporary file renamed into place. Refused, each with one line: a file that is
not a shard, shards of other manifests or splits, of other systems (model fingerprint or
system name), a shard given twice or missing, an incomplete shard, overlapping items.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.shard import ShardInfo


@dataclass
class PredictionsMerge:
    path: Path
    n_shards: int
    n_items: int


def read_shard(path: Path) -> tuple[list[dict], ShardInfo]:
    """The lines of one shard's predictions file and the shard they record."""
    from interp.errors import path_problem
    from interp.manifest import read_jsonl
    from interp.shard import ShardInfo

    problem = path_problem(path, "predictions file")
    if problem:
        raise InterpError(f"{problem}; give the files `interp run --shard K/N` wrote")
    rows = [row for _, row in read_jsonl(path)]
    shards = {str(r.get("shard")) for r in rows}
    if not rows or not all(isinstance(r.get("shard"), dict) for r in rows):
        raise InterpError(f"{path} is not a shard's predictions file (its lines record no shard); give the files "
                          "`interp run --shard K/N` or `interp cascade --shard K/N` wrote")
    if len(shards) > 1:
        raise InterpError(f"{path} mixes lines of {len(shards)} shards; run each shard to its own --out")
    return rows, ShardInfo.from_dict(rows[0]["shard"])


def merge_predictions(shards: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> PredictionsMerge:
    """Join the finished shards of one run into the predictions file `out`."""
    import contextlib

    from interp.atomic import write_jsonl
    from interp.locks import OutputLock
    from interp.shard import check_coverage

    out = Path(out)
    paths = [Path(p) for p in shards]
    if not paths:
        raise InterpError("give the shards' predictions files to merge")
    if out.is_dir():
        raise InterpError(f"--out {out} is a folder; give the predictions file to write, e.g. {out / 'predictions.jsonl'}")
    if any(p.resolve() == out.resolve() for p in paths):
        raise InterpError(f"--out {out} is one of the shards; write the merged file to another path")
    with contextlib.ExitStack() as stack:
        stack.enter_context(OutputLock(out))
        if out.exists() and not overwrite:
            raise InterpError(f"{out} exists; pass --overwrite to replace it")
        for p in paths:
            stack.enter_context(OutputLock(p))  # refuses a shard still being written
        read = [read_shard(p) for p in paths]
        names = [str(p) for p in paths]
        infos = [info for _, info in read]
        order = check_coverage(infos, names)
        for i in order:
            rows, info = read[i]
            if len(rows) != info.stop - info.start:
                raise InterpError(f"{names[i]} (shard {info.label}) is incomplete: it holds {len(rows)} of its "
                                  f"{info.stop - info.start} items; finish it with the same command and --resume")
        first_rows = read[order[0]][0]
        for key, what in (("model_fingerprint", "model (fingerprint)"), ("system", "system name")):
            want = first_rows[0].get(key)
            for i in order:
                other = next((r for r in read[i][0] if r.get(key) != want), None)
                if other is not None:
                    raise InterpError(f"{names[i]} and {names[order[0]]} differ in {what} ({other.get(key)} vs {want}); "
                                      "merge the shards of one system's run")
        seen: dict[tuple, str] = {}
        merged = []
        for i in order:
            for r in read[i][0]:
                key = (str(r["id"]), r.get("snr_db"))
                if key in seen:
                    raise InterpError(f"item '{key[0]}' is in both {seen[key]} and {names[i]}: the shards overlap; "
                                      "merge the shards of one split")
                seen[key] = names[i]
                merged.append({k: v for k, v in r.items() if k != "shard"})
        write_jsonl(out, merged)
    return PredictionsMerge(out, len(paths), len(merged))
