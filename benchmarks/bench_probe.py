"""Time a full probe sweep: all layers, audio-mean, 5 grouped folds, logistic probe + shuffled control.

The issue's size is 1,000 items x 33 layers (embed + 32 blocks) x 4096 dims, stored as one
pooled float16 row per item (what `interp trace --positions audio-mean` writes). The store
is written once by a child process, so the reported peak RSS is the sweep's alone.

Run: python benchmarks/bench_probe.py [--items 1000] [--layers 33] [--dim 4096] [--classes 4]
                                      [--folds 5] [--store PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_store(path: Path, items: int, layers: int, dim: int, classes: int, seed: int = 0) -> None:
    """Gaussian states with class means whose separation grows with depth (a probe has work to do)."""
    from interp.store import ItemRecord, StoreWriter

    names = ["embed"] + [str(i) for i in range(layers - 1)]
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)).astype(np.float32) / np.sqrt(dim)
    writer = StoreWriter.create(path, {"model_fingerprint": "bench", "positions": "audio-mean", "component": "decoder",
                                       "n_model_layers": layers - 1, "family": "synthetic"}, names, dim, "float16")
    for start in range(0, items, 100):
        records = []
        for i in range(start, min(items, start + 100)):
            label = i % classes
            resid = {name: (rng.normal(size=(1, dim)).astype(np.float32)
                            + 4.0 * (k / max(1, layers - 1)) * means[label]) for k, name in enumerate(names)}
            records.append(ItemRecord(id=f"b{i}", row={"id": f"b{i}", "label": f"c{label}"}, resid=resid,
                                      token_id=np.full(1, -1), index=np.full(1, -1), is_audio=np.ones(1, bool),
                                      time_start=np.zeros(1), time_end=np.ones(1), audio_seconds=1.0, truncated=False))
        writer.append(records)
    writer.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=33, help="stored layers, embed included")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--store", type=Path, default=None, help="reuse or create the store here")
    parser.add_argument("--json", type=Path, default=None, help="write the timings here")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    store = args.store or Path(tempfile.mkdtemp(prefix="bench_probe_")) / "store.h5"
    if args.write_only:
        write_store(store, args.items, args.layers, args.dim, args.classes)
        return
    if not store.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write-only", "--store", str(store), "--items", str(args.items),
                        "--layers", str(args.layers), "--dim", str(args.dim), "--classes", str(args.classes)], check=True)
        print(f"wrote {store} ({store.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")

    from interp.analysis.probing import ProbeConfig
    from interp.analysis.sweep import probe

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    per_layer = []

    def tick(n=1):
        per_layer.append(time.perf_counter() - t0)

    result = probe(store, "label", layers="all", positions="audio-mean", config=ProbeConfig(folds=args.folds),
                   progress=lambda *_: tick)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    one_layer = args.items * args.dim * 4 / 2**20
    first, last = result.layers[0], result.layers[-1]
    print(f"probe sweep: {args.items} items x {len(result.layers)} layers x {args.dim} dims, {args.folds} folds, "
          f"{args.classes} classes: {wall:.1f} s ({wall / len(result.layers):.2f} s/layer)")
    print(f"peak RSS {peak:.0f} MiB (after imports {rss_before:.0f} MiB; one layer of float32 features = {one_layer:.0f} MiB)")
    print(f"accuracy layer {first.layer}: {first.score:.3f} (control {first.control:.3f}); "
          f"layer {last.layer}: {last.score:.3f} (control {last.control:.3f}); notes: {result.notes or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"items": args.items, "layers": len(result.layers), "dim": args.dim,
                                         "folds": args.folds, "classes": args.classes, "wall_s": wall,
                                         "peak_rss_mib": peak, "rss_after_imports_mib": rss_before,
                                         "per_layer_cumulative_s": per_layer}, indent=2))


if __name__ == "__main__":
    main()
