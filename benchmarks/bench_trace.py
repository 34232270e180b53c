"""Benchmark `interp trace` against plain forward passes and two peer ways of recording.

Reference model: a random Qwen2-Audio-class checkpoint (d_model 512, 8 decoder layers,
4-layer audio encoder), 64 five-second utterances, batch 8. Modes, each over the same
batches (audio loading and processor included in every mode):
  plain    forward passes, nothing recorded
  interp   interp.trace.trace(): all layers + embed, all positions, float16, streamed store
  nnsight  nnsight .save() of every layer, then h5py writes in the loop (no streaming)
  tl       TransformerLens TransformerBridge.run_with_cache, then h5py writes in the loop
`--memory` runs `interp trace` in subprocesses over 64 and 512 items and reports peak RSS.

    python benchmarks/bench_trace.py [--device cpu|cuda] [--items 64] [--memory]
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

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp.audio import load_audio, write_wav  # noqa: E402
from interp.manifest import read_manifest  # noqa: E402
from interp.models import load_model  # noqa: E402
from interp.testing import make_tiny  # noqa: E402
from interp.layers import parse_layers  # noqa: E402
from interp.trace import DEFAULT_INSTRUCTION, record, trace  # noqa: E402


def make_data(folder: Path, n: int, seconds: float = 5.0) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        t = np.arange(int(seconds * 16000)) / 16000
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.02 * rng.standard_normal(len(t))
        write_wav(folder / f"{i}.wav", wav.astype(np.float32))
        lines.append(json.dumps({"id": str(i), "audio": f"{i}.wav"}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def batches(rows, size):
    for s in range(0, len(rows), size):
        yield rows[s:s + size]


def run_plain(adapter, rows, bs):
    for chunk in batches(rows, bs):
        b = adapter.prepare([load_audio(r["audio"]) for r in chunk], [DEFAULT_INSTRUCTION] * len(chunk))
        with torch.no_grad():
            adapter.model(**b.inputs)
        _sync()


def run_nnsight_save(adapter, rows, bs, out):
    names = parse_layers("all", adapter.n_layers)
    with h5py.File(out, "w") as f:
        n = 0
        ds = {k: f.create_dataset(k, (0, adapter.d_model), maxshape=(None, adapter.d_model), dtype="f2",
                                  chunks=(256, adapter.d_model)) for k in names}
        for chunk in batches(rows, bs):
            b = adapter.prepare([load_audio(r["audio"]) for r in chunk], [DEFAULT_INSTRUCTION] * len(chunk))
            acts = record(adapter, b, names)
            mask = b.attention_mask.bool().cpu()
            for k, x in acts.items():
                rows_ = x.cpu()[mask].to(torch.float16).numpy()
                d = ds[k]
                d.resize((n + len(rows_), d.shape[1]))
                d[n:] = rows_
            n += int(mask.sum())


def run_tl(adapter, rows, bs, out):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(adapter.path, device=str(adapter.device), tokenizer=adapter.tokenizer,
                                                 dtype=adapter.dtype)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(adapter.n_layers)]
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f:
        n = 0
        ds = {k: f.create_dataset(k, (0, adapter.d_model), maxshape=(None, adapter.d_model), dtype="f2",
                                  chunks=(256, adapter.d_model)) for k in names}
        for chunk in batches(rows, bs):
            b = adapter.prepare([load_audio(r["audio"]) for r in chunk], [DEFAULT_INSTRUCTION] * len(chunk))
            inputs = dict(b.inputs)
            with torch.no_grad():
                _, cache = bridge.run_with_cache(inputs.pop("input_ids"), names_filter=lambda n: n in names, **inputs)
            mask = b.attention_mask.bool().cpu()
            for k in names:
                rows_ = cache[k].cpu()[mask].to(torch.float16).numpy()
                d = ds[k]
                d.resize((n + len(rows_), d.shape[1]))
                d[n:] = rows_
            n += int(mask.sum())
    return time.perf_counter() - t0


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args):
    _sync()
    t0 = time.perf_counter()
    extra = fn(*args)
    _sync()
    return extra if isinstance(extra, float) else time.perf_counter() - t0


def peak_rss_of_trace(model: Path, manifest: Path, items: int, device: str) -> float:
    code = (
        "import resource, sys; sys.argv=['interp','trace',%r,'--data',%r,'--out',%r,'--layers','all','--positions','all',"
        "'--dtype','float16','--batch-size','8','--limit','%d','--device',%r];\n"
        "import cli\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    ) % (str(model), str(manifest), str(manifest.parent / f"mem{items}.h5"), items, device)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = [l for l in out.stdout.splitlines() if l.startswith("PEAK")]
    if not line:
        raise RuntimeError(out.stderr[-2000:])
    return int(line[0].split()[1]) / 1024  # MiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="plain,interp,nnsight,tl")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS for 64 vs 512 items")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    model_dir = make_tiny("qwen2-audio", work / "model", d_model=args.d_model, n_layers=args.layers, encoder_layers=4,
                                     encoder_d_model=args.d_model)
    manifest = make_data(work / "data", max(args.items, 512 if args.memory else 0))
    rows = read_manifest(manifest, limit=args.items)
    adapter = load_model(model_dir, device=args.device)
    run_plain(adapter, rows[: args.batch_size], args.batch_size)  # warm-up
    results = {"device": args.device, "items": args.items, "batch_size": args.batch_size, "d_model": args.d_model,
               "decoder_layers": args.layers, "threads": torch.get_num_threads(), "seconds": {}}
    modes = args.modes.split(",")
    for rep in range(args.repeats):
        for mode in modes:
            out = work / f"{mode}.h5"
            out.unlink(missing_ok=True)
            if mode == "plain":
                t = timed(run_plain, adapter, rows, args.batch_size)
            elif mode == "interp":
                t = timed(lambda: trace(adapter, rows, out, layers="all", positions="all", dtype="float16",
                                        batch_size=args.batch_size) and None)
            elif mode == "nnsight":
                t = timed(run_nnsight_save, adapter, rows, args.batch_size, out)
            elif mode == "tl":
                t = timed(run_tl, adapter, rows, args.batch_size, out)
            results["seconds"].setdefault(mode, []).append(round(t, 3))
            print(f"repeat {rep} {mode:8s} {t:8.2f} s", flush=True)
    best = {m: min(v) for m, v in results["seconds"].items()}
    if "plain" in best:
        results["ratio_to_plain"] = {m: round(v / best["plain"], 3) for m, v in best.items()}
        print("ratio to plain (best of repeats):", results["ratio_to_plain"])
    if args.memory:
        results["peak_rss_mib"] = {n: round(peak_rss_of_trace(model_dir, manifest, n, args.device), 1) for n in (64, 512)}
        results["peak_rss_ratio_512_to_64"] = round(results["peak_rss_mib"][512] / results["peak_rss_mib"][64], 3)
        print("peak RSS MiB:", results["peak_rss_mib"], "ratio", results["peak_rss_ratio_512_to_64"])
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
