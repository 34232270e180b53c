"""Benchmark sharded tracing: what splitting a trace into shards and merging them costs.

Reference model: a random Qwen2-Audio-class checkpoint (d_model 512, 8 decoder layers, 4-layer
audio encoder of width 512), `--items` five-second utterances, batch 8, every layer and `embed`
at every position in float16. Each mode runs `interp trace` as a user would (fresh processes,
model loading included):
  single     one process over the whole manifest
  shards     N processes one after another (`--shard K/N`), then `interp store merge`
  torchrun   N processes at once under torchrun (each rank its shard; rank 0 merges)
The merge is also timed alone (the command, and `merge_stores` in this process, without the
interpreter's start-up), with the store's size, to give its throughput. The merged store
is checked to equal the single process's, dataset by dataset.

    python benchmarks/bench_shard.py [--items 32] [--shards 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_trace import make_data  # noqa: E402
from interp.testing import make_tiny  # noqa: E402

INTERP = str(Path(sys.executable).with_name("interp"))


def timed(cmd: list, cwd: Path, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return time.perf_counter() - t0


def same_datasets(a: Path, b: Path) -> bool:
    def walk(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        return out

    x, y = walk(a), walk(b)
    return sorted(x) == sorted(y) and all(
        (x[k].tolist() == y[k].tolist()) if x[k].dtype == object else x[k].tobytes() == y[k].tobytes() for k in x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    model = make_tiny("qwen2-audio", work / "model", d_model=512, n_layers=8, encoder_layers=4, encoder_d_model=512)
    manifest = make_data(work / "data", args.items)
    common = ["--data", manifest, "--layers", "all", "--positions", "all", "--dtype", "float16",
              "--batch-size", str(args.batch_size), "--device", "cpu"]
    n = args.shards
    res = {"items": args.items, "shards": n, "batch_size": args.batch_size, "cpu_cores": os.cpu_count(), "seconds": {}}

    res["seconds"]["single"] = timed([INTERP, "trace", model, "--out", work / "single.h5", *common], work)
    shard_times = [timed([INTERP, "trace", model, "--out", work / f"s{k}.h5", *common, "--shard", f"{k}/{n}"], work)
                   for k in range(n)]
    merge = timed([INTERP, "store", "merge", *(work / f"s{k}.h5" for k in range(n)), "--out", work / "merged.h5"], work)
    from interp.store.merge import merge_stores

    t0 = time.perf_counter()
    merge_stores([work / f"s{k}.h5" for k in range(n)], work / "merged2.h5")
    res["seconds"]["merge_in_process"] = round(time.perf_counter() - t0, 3)
    res["seconds"]["shards_each"] = [round(t, 2) for t in shard_times]
    res["seconds"]["merge"] = round(merge, 3)
    res["seconds"]["shards_sequential_plus_merge"] = round(sum(shard_times) + merge, 2)
    res["seconds"]["torchrun"] = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                        str(n), "--no-python", INTERP, "trace", model, "--out", work / "tr.h5", *common],
                                       work, env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))})
    res["seconds"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in res["seconds"].items()}
    size = (work / "merged.h5").stat().st_size
    res["store_mib"] = round(size / 2**20, 1)
    res["merge_mib_per_s"] = round(size / 2**20 / res["seconds"]["merge_in_process"], 1)
    res["merged_equals_single"] = same_datasets(work / "single.h5", work / "merged.h5")
    res["torchrun_equals_single"] = same_datasets(work / "single.h5", work / "tr.h5")
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
