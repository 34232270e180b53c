"""Time the CTC text-decodability sweep (`interp probe --target ctc`): all layers, 5 grouped folds,
probe + shuffled-transcript control + medoid baseline.

The issue's size is 1,000 items x 9 layers x d 1280 (Whisper-large's encoder width), one row
per audio position as `interp trace --component encoder --positions audio` stores it: Whisper's
encoder gives 50 positions a second and drops those after the audio ends, so a 5 s clip is
250 positions. Transcripts are word sequences drawn from the bundled task samples (50-90
characters, about 5 s of speech at 3.5 positions per character, 2-5 positions each), and every
position holds its character's direction with a strength that grows with depth (0 at the first
layer) over isotropic Gaussian noise, so decodability runs from chance to high across the layers.
The store is float16, as `interp trace` writes it, written by a child process so that the
reported peak RSS is the sweep's alone.

Run: python benchmarks/bench_ctc.py [--items 1000] [--layers 9] [--dim 1280] [--folds 5]
                                    [--method batched|reference] [--epochs N] [--jobs N] [--threads N]
                                    [--store PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_STRENGTH = 5.0  #: the last layer's character signal, in units of the noise's standard deviation


def vocabulary() -> list[str]:
    """Words of the bundled SST-2 and AG News samples, normalised as probes read transcripts."""
    from interp.text import normalise_text

    samples = ROOT / "tasks" / "samples"
    with open(samples / "sst2.tsv", newline="") as f:
        text = [r["sentence"] for r in csv.DictReader(f, delimiter="\t")]
    with open(samples / "agnews.csv", newline="") as f:
        text += [" ".join(r[1:]) for r in csv.reader(f)]
    return sorted(set(normalise_text(" ".join(text)).split()))


def write_store(path: Path, items: int, layers: int, dim: int, seed: int = 0, chars: tuple[int, int] = (50, 90),
                frames_per_char: tuple[int, int] = (2, 5)) -> None:
    from interp.store import ItemRecord, StoreWriter

    rng = np.random.default_rng(seed)
    words = vocabulary()
    alphabet = sorted(set("".join(words)) | {" "})
    direction = rng.standard_normal((len(alphabet), dim)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    names = [str(k) for k in range(layers)]
    strength = np.linspace(0.0, MAX_STRENGTH, layers)
    writer = StoreWriter.create(path, {"config_hash": "bench-ctc", "family": "synthetic", "component": "encoder",
                                       "positions": "audio", "n_model_layers": layers}, names, dim, "float16")
    records = []
    for i in range(items):
        n_chars, text = rng.integers(chars[0], chars[1] + 1), ""
        while len(text) < n_chars:
            text = f"{text} {rng.choice(words)}".strip()
        codes = np.array([alphabet.index(c) for c in text])
        per_frame = np.repeat(codes, rng.integers(frames_per_char[0], frames_per_char[1] + 1, size=len(codes)))
        T = len(per_frame)
        resid = {name: rng.standard_normal((T, dim), dtype=np.float32) + strength[k] * direction[per_frame]
                 for k, name in enumerate(names)}
        start = np.arange(T) * 0.02
        records.append(ItemRecord(f"b{i}", {"id": f"b{i}", "transcript": text}, resid, np.full(T, -1), np.arange(T),
                                  np.ones(T, bool), start, start + 0.02, T * 0.02, False))
        if len(records) == 20:
            writer.append(records)
            records = []
    if records:
        writer.append(records)
    writer.finish()


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the sweep's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--method", choices=("batched", "reference"), default="batched")
    parser.add_argument("--epochs", type=int, default=None, help="ctc_epochs (default: ProbeConfig's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--jobs", type=int, default=0, help="ctc_jobs: layers at once in worker processes (0: one per core)")
    parser.add_argument("--store", type=Path, default=None, help="reuse or create the store here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    store = args.store or Path(tempfile.mkdtemp(prefix="bench_ctc_")) / "store.h5"
    if args.write_only:
        write_store(store, args.items, args.layers, args.dim)
        return
    if not store.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write-only", "--store", str(store), "--items", str(args.items),
                        "--layers", str(args.layers), "--dim", str(args.dim)], check=True)
        print(f"wrote {store} ({store.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")

    import torch

    from interp.analysis.probing import ProbeConfig
    from interp.analysis.sweep import probe
    from interp.store import ActivationStore

    if args.threads:
        torch.set_num_threads(args.threads)
    with ActivationStore(store) as s:
        n_rows, n_items = int(s.n_rows), int(s.n_items)
    config = ProbeConfig(folds=args.folds, ctc_method=args.method, device=args.device, ctc_jobs=args.jobs,
                         **({"ctc_epochs": args.epochs} if args.epochs else {}))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    per_layer = []

    def tick(n=1):
        per_layer.append(time.perf_counter() - t0)
        print(f"  layer {len(per_layer)} done at {per_layer[-1]:.0f} s", flush=True)

    result = probe(store, "ctc", layers="all", config=config, progress=lambda *_: tick)
    for score in result.layers:
        print(f"  layer {score.layer}: decodability {score.score:.3f} +- {score.spread:.3f} (control {score.control:.3f}, "
              f"medoid {score.baseline:.3f}; epochs {score.extra.get('epochs', float('nan')):.1f})")
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child: a worker (ctc_jobs)
    one_layer = n_rows * args.dim * 4 / 2**20
    print(f"ctc sweep ({args.method}): {n_items} items ({n_rows} positions, {n_rows / n_items:.0f} per item) x "
          f"{len(result.layers)} layers x {args.dim} dims, {args.folds} folds: {wall:.1f} s wall "
          f"({wall / len(result.layers):.1f} s/layer), {cpu:.0f} s CPU, torch threads {torch.get_num_threads()}")
    print(f"peak RSS {peak:.0f} MiB, largest child process (the workers) {worker_peak:.0f} MiB (after imports {rss_before:.0f} MiB; "
          f"one layer of float32 states = {one_layer:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps({
            "method": args.method, "items": n_items, "positions": n_rows, "layers": len(result.layers), "dim": args.dim,
            "folds": args.folds, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak, "worker_peak_rss_mib": worker_peak,
            "rss_after_imports_mib": rss_before, "jobs": args.jobs,
            "per_layer_cumulative_s": per_layer, "threads": torch.get_num_threads(),
            "decodability": {s.layer: s.score for s in result.layers},
            "decodability_spread": {s.layer: s.spread for s in result.layers},
            "control": {s.layer: s.control for s in result.layers},
            "medoid": {s.layer: s.baseline for s in result.layers},
            "epochs": {s.layer: s.extra.get("epochs") for s in result.layers},
            "notes": result.notes}, indent=2))


if __name__ == "__main__":
    main()
