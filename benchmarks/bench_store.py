"""Benchmark the crash-safe store writer and the appended predictions file.

Store: batches of 8 items x 80 positions x 10 layers (embed + 9 blocks) x d_model 1024 in
float16 (13 MB a batch), appended by `StoreWriter` (immutable part + atomic index rename per
batch, fsyncs included) against the format-1 way, in-place h5py appends to resizable datasets
with no fsync; then the finishing copy into one file. The index rewrite's cost is measured
alone at the study's scale (6,300 items) and beyond.

Predictions: 6,300 lines in batches of 8, appended (`PredictionsFile`) against rewriting the
whole file atomically per batch (the earlier behaviour): time and bytes written.

    python benchmarks/bench_store.py [--batches 60] [--folder /tmp]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp.store import ITEM_FIELDS, POSITION_FIELDS, ItemRecord, StoreWriter, _index_image  # noqa: E402

LAYERS = ["embed"] + [str(i) for i in range(9)]
D, ROWS, BATCH = 1024, 80, 8


def records(first: int, rng) -> list[ItemRecord]:
    out = []
    for i in range(first, first + BATCH):
        row = {"id": f"item-{i:06d}", "audio": f"/data/audio/item-{i:06d}.wav", "task": "agnews", "label": "World",
               "transcript": "a headline about the world and its markets, read aloud " * 2, "speaker": "en-us"}
        out.append(ItemRecord(
            id=row["id"], row=row, resid={l: rng.standard_normal((ROWS, D)).astype(np.float16) for l in LAYERS},
            token_id=np.arange(ROWS), index=np.arange(ROWS), is_audio=np.ones(ROWS, bool),
            time_start=np.arange(ROWS) * 0.04, time_end=np.arange(ROWS) * 0.04 + 0.04, audio_seconds=3.2,
            truncated=False, input_fingerprint="0123456789abcdef"))
    return out


def bench_appends(folder: Path, n_batches: int) -> dict:
    rng = np.random.default_rng(0)
    batches = [records(b * BATCH, rng) for b in range(4)]  # reused: generating data is not what is timed
    mb = sum(r.resid[l].nbytes for r in batches[0] for l in LAYERS) / 1e6
    w = StoreWriter.create(folder / "new.h5", {"positions": "audio"}, LAYERS, D, "float16")
    t0 = time.perf_counter()
    per = []
    for b in range(n_batches):
        t = time.perf_counter()
        w.append(batches[b % 4])
        per.append(time.perf_counter() - t)
    appended = time.perf_counter() - t0
    t0 = time.perf_counter()
    w.finish()
    finished = time.perf_counter() - t0

    # format 1: resizable datasets appended in place (no fsync; not crash-safe)
    t0 = time.perf_counter()
    with h5py.File(folder / "old.h5", "w") as f:
        ds = {l: f.create_dataset(f"resid/{l}", (0, D), maxshape=(None, D), dtype="f2", chunks=(256, D)) for l in LAYERS}
        pos = {k: f.create_dataset(f"positions/{k}", (0,), maxshape=(None,), dtype=dt, chunks=(4096,))
               for k, dt in POSITION_FIELDS.items()}
    for b in range(n_batches):
        recs = batches[b % 4]
        with h5py.File(folder / "old.h5", "a") as f:
            n = f["resid/embed"].shape[0]
            for l in LAYERS:
                d = f[f"resid/{l}"]
                d.resize((n + BATCH * ROWS, D))
                d[n:] = np.concatenate([r.resid[l] for r in recs])
            for k in POSITION_FIELDS:
                p = f[f"positions/{k}"]
                p.resize((n + BATCH * ROWS,))
                p[n:] = np.concatenate([getattr(r, k) for r in recs])
    in_place = time.perf_counter() - t0
    del ds, pos
    total = mb * n_batches
    return {"batches": n_batches, "mb_per_batch": round(mb, 1), "total_mb": round(total),
            "append_s": round(appended, 2), "append_mb_s": round(total / appended),
            "commit_ms_first10": round(1000 * float(np.median(per[:10])), 1),
            "commit_ms_last10": round(1000 * float(np.median(per[-10:])), 1),
            "finish_s": round(finished, 2), "finish_mb_s": round(total / finished),
            "format1_in_place_s": round(in_place, 2), "format1_mb_s": round(total / in_place)}


def bench_index(sizes=(1000, 6300, 25000)) -> dict:
    out = {}
    for n in sizes:
        row = {"id": "item-000001", "audio": "/data/audio/item-000001.wav", "task": "agnews", "label": "World",
               "transcript": "a headline about the world and its markets, read aloud " * 2}
        columns = {k: [] for k in ITEM_FIELDS}
        for i in range(n):
            columns["id"].append(f"item-{i:06d}")
            for k in ("task", "label", "transcript"):
                columns[k].append(row[k])
            columns["meta"].append(json.dumps(row))
            columns["input_fingerprint"].append("0123456789abcdef")
            for k in ("snr_db", "audio_seconds"):
                columns[k].append(0.0)
            columns["truncated"].append(False)
            columns["n_positions"].append(ROWS)
        offsets = np.arange(n + 1) * ROWS
        parts = [(f"part-{k:06d}.h5", BATCH, BATCH * ROWS) for k in range(n // BATCH)]
        t0 = time.perf_counter()
        image = _index_image({"n_items": n}, columns, offsets, parts)
        out[n] = {"ms": round(1000 * (time.perf_counter() - t0), 1), "index_kb": round(len(image) / 1024)}
    return out


def bench_predictions(folder: Path, n: int = 6300) -> dict:
    from cascades.predictions import PredictionsFile
    from interp.atomic import write_jsonl

    line = {"id": "", "task": "agnews", "system": "model", "snr_db": None, "output": "World", "prediction": "world",
            "label": "World", "correct": True, "n_generated_tokens": 3, "seconds": 0.5}
    rows = [dict(line, id=f"item-{i:06d}") for i in range(n)]
    t0 = time.perf_counter()
    with PredictionsFile(folder / "append.jsonl") as p:
        for s in range(0, n, BATCH):
            p.add(rows[s:s + BATCH])
    append_s = time.perf_counter() - t0
    size = (folder / "append.jsonl").stat().st_size
    t0 = time.perf_counter()
    done, written = [], 0
    for s in range(0, n, BATCH):
        done.extend(rows[s:s + BATCH])
        write_jsonl(folder / "rewrite.jsonl", done)
        written += (folder / "rewrite.jsonl").stat().st_size
    rewrite_s = time.perf_counter() - t0
    return {"lines": n, "append_s": round(append_s, 2), "append_mb_written": round(size / 1e6, 1),
            "rewrite_s": round(rewrite_s, 2), "rewrite_mb_written": round(written / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--folder", default=None, help="where to write (default: a temporary folder)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.folder))
    try:
        result = {"appends": bench_appends(folder, args.batches), "index": bench_index(),
                  "predictions": bench_predictions(folder)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
