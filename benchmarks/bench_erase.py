"""Benchmark LEACE erasure: streaming fits from a store, and forward passes with erasers on.

1. Fit: nine erasers (one per stored layer) from a synthetic 1,000-item store (d_model 512,
   float16 as `interp trace` writes by default, a planted 4-class label), against a raw read
   of the same rows through the same reader (`ActivationStore.iter_batches`, no fitting) and
   a plain h5py read of whole datasets. Throughput is store bytes read per second. Peak RSS
   of a fit is measured in fresh subprocesses over the first 250 and all 1,000 items.
2. Forward: the reference model of `bench_trace.py` (a random Qwen2-Audio-class checkpoint:
   d_model 512, 8 decoder layers, 4-layer encoder), batch 8 of 5-s audio; a plain forward
   pass against one with nine erasers applied through `interp.run` (rank 32 each: one at
   every block and a second at the last block), and the same for greedy generation.

    python benchmarks/bench_erase.py [--items 1000] [--positions 64] [--device cpu|cuda] [--repeats 5] [--out FILE]
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

from interp.analysis.leace import Eraser, LayerEraser, fit_eraser  # noqa: E402
from interp.store import ActivationStore, ItemRecord, StoreWriter  # noqa: E402

N_LAYERS = 9


def make_store(path: Path, n_items: int, positions: int, d: int = 512, seed: int = 0) -> Path:
    """A store shaped like `interp trace --positions all`: 4 text rows then `positions` audio rows per item."""
    rng = np.random.default_rng(seed)
    layers = [str(i) for i in range(N_LAYERS)]
    dirs = rng.standard_normal((N_LAYERS, 4, d)).astype(np.float32)
    writer = StoreWriter.create(path, {"model_fingerprint": "bench", "family": "synthetic", "component": "decoder",
                                       "positions": "all", "n_model_layers": N_LAYERS}, layers, d, "float16")
    n = positions + 4
    is_audio = np.r_[np.zeros(4, bool), np.ones(positions, bool)]
    t = np.where(is_audio, (np.cumsum(is_audio) - 1) * 0.04, np.nan)
    for s in range(0, n_items, 50):
        records = []
        for i in range(s, min(s + 50, n_items)):
            label = int(rng.integers(4))
            resid = {}
            for k, layer in enumerate(layers):
                x = rng.standard_normal((n, d), dtype=np.float32)
                x[is_audio] += dirs[k, label]
                resid[layer] = x
            row = {"id": str(i), "label": str(label), "task": "agnews"}
            records.append(ItemRecord(str(i), row, resid, np.zeros(n, np.int64), np.arange(n), is_audio, t, t + 0.04,
                                      positions * 0.04, False))
        writer.append(records)
    writer.finish()
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def fit_child(store: str, items: int, device: str) -> None:
    """Subprocess body: fit nine erasers over the first `items` items; print time and peak RSS."""
    with ActivationStore(store) as s:
        before = _rss_mb()
        t0 = time.perf_counter()
        eraser = fit_eraser(s, "label", "all", items=np.arange(items), device=device)
        seconds = time.perf_counter() - t0
    print(json.dumps({"items": items, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rss_before_fit_mb": before,
                      "ranks": eraser.ranks}))


def bench_fit(folder: Path, n_items: int, positions: int, device: str) -> dict:
    path = folder / "store.h5"
    t0 = time.perf_counter()
    make_store(path, n_items, positions)
    made = time.perf_counter() - t0
    with ActivationStore(path) as s:
        rows = s.rows(audio_only=True)
        nbytes = len(rows) * s.d_model * 2 * N_LAYERS  # float16 on disk
        # raw reads of the same rows, twice each (the first warms the page cache for everyone)
        raw = []
        for _ in range(2):
            t0 = time.perf_counter()
            for layer in s.layers:
                for _b in s.iter_batches(layer, batch_items=64, audio_only=True):
                    pass
            raw.append(time.perf_counter() - t0)
        whole = []
        for _ in range(2):
            t0 = time.perf_counter()
            with h5py.File(path, "r") as f:
                for layer in s.layers:
                    f["resid"][layer][:]
            whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        eraser = fit_eraser(s, "label", "all", device=device)
        fit_s = time.perf_counter() - t0
    mem = {}
    for items in (n_items // 4, n_items):
        out = subprocess.run([sys.executable, __file__, "--child-fit", str(path), "--items", str(items), "--device", device],
                             capture_output=True, text=True, check=True)
        mem[items] = json.loads(out.stdout.strip().splitlines()[-1])
    mb = nbytes / 1e6
    return {"items": n_items, "audio_rows": int(len(rows)), "layers": N_LAYERS, "d_model": 512, "store_mb_read": round(mb, 1),
            "store_write_s": round(made, 2), "raw_read_s": round(min(raw), 3), "raw_read_mb_s": round(mb / min(raw), 1),
            "h5py_whole_read_s": round(min(whole), 3), "h5py_whole_read_mb_s": round(mb / min(whole), 1),
            "fit_s": round(fit_s, 3), "fit_mb_s": round(mb / fit_s, 1), "fit_vs_raw_read": round(fit_s / min(raw), 2),
            "ranks": eraser.ranks, "device": device,
            "peak_rss_mb": {str(k): round(v["peak_rss_mb"], 1) for k, v in mem.items()},
            "rss_before_fit_mb": {str(k): round(v["rss_before_fit_mb"], 1) for k, v in mem.items()},
            "fit_s_subprocess": {str(k): round(v["seconds"], 2) for k, v in mem.items()}}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_forward(folder: Path, device: str, repeats: int, rank: int = 32, new_tokens: int = 8) -> dict:
    from interp.interventions import Erase
    from interp.models import load_model
    from interp.testing import make_tiny
    from interp.forward import run

    model_dir = make_tiny("qwen2-audio", folder / "model", d_model=512, n_layers=8, encoder_layers=4, encoder_d_model=512)
    adapter = load_model(model_dir, device=device)
    rng = np.random.default_rng(0)
    t = np.arange(5 * 16000) / 16000
    waves = [(0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
             for _ in range(8)]
    batch = adapter.prepare(waves, ["Listen to the audio and answer."] * 8, padding_side="left")
    d, h = adapter.d_model, adapter.fingerprint()

    def eraser(layers, seed):
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64)).Q
        return Eraser({l: LayerEraser(q, q.T.clone()) for l in layers}, "bench", h, adapter.family, d)

    nine = [Erase(eraser(range(8), 0)), Erase(eraser([7], 1))]  # 8 + 1 = nine eraser applications per pass

    def timed(fn):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        return time.perf_counter() - t0

    fwd_plain, fwd_erase, gen_plain, gen_erase = [], [], [], []
    timed(lambda: run(adapter, batch))  # warm-up
    timed(lambda: run(adapter, batch, nine))
    kw = dict(generate=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    for _ in range(repeats):  # interleaved, so drifting load hits both alike
        fwd_plain.append(timed(lambda: run(adapter, batch)))
        fwd_erase.append(timed(lambda: run(adapter, batch, nine)))
    for _ in range(max(1, repeats // 2)):
        gen_plain.append(timed(lambda: run(adapter, batch, **kw)))
        gen_erase.append(timed(lambda: run(adapter, batch, nine, **kw)))
    med = lambda v: float(np.median(v))  # noqa: E731
    return {"device": device, "batch": 8, "audio_seconds": 5, "seq_len": int(batch.token_ids.shape[1]),
            "eraser_rank": rank, "erasers": 9, "repeats": repeats,
            "forward_plain_s": round(med(fwd_plain), 4), "forward_erased_s": round(med(fwd_erase), 4),
            "forward_ratio": round(med(fwd_erase) / med(fwd_plain), 3),
            "forward_plain_all_s": [round(v, 4) for v in fwd_plain], "forward_erased_all_s": [round(v, 4) for v in fwd_erase],
            "generate_new_tokens": new_tokens, "generate_plain_s": round(med(gen_plain), 4),
            "generate_erased_s": round(med(gen_erase), 4), "generate_ratio": round(med(gen_erase) / med(gen_plain), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--positions", type=int, default=64, help="audio positions per item")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child-fit")
    args = ap.parse_args()
    if args.child_fit:
        fit_child(args.child_fit, args.items, args.device)
        return
    result = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_fit:
            result["fit"] = bench_fit(Path(tmp), args.items, args.positions, args.device)
            print(json.dumps(result["fit"], indent=2), flush=True)
        if not args.skip_forward:
            result["forward"] = bench_forward(Path(tmp), args.device, args.repeats)
            print(json.dumps(result["forward"], indent=2), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
