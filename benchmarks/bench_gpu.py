"""GPU benchmark: tracing and erasure during generation on a 7B-shaped speech LLM, and sharded
throughput on two GPUs.

The model is a Qwen2-Audio-class model of the released 7B shape (decoder: width 4096, 32
layers, 32 heads, MLP 11008, vocabulary 156032; audio encoder: width 1280, 32 layers, 20
heads), built from its config with random bfloat16 weights on the GPU, so nothing is
downloaded; the tokenizer and processor are those of the tiny test checkpoint (ids below its
vocabulary). Random weights cost the same FLOPs as trained ones.

Each mode runs once over the same batches (audio loading and the processor included in all):

trace (every decoder layer, audio positions, float16 on disk where a mode writes):
  plain     HF forward passes, nothing recorded
  interp    `interp.trace` (nnsight, streamed store, writer thread)
  nnsight   nnsight `.save()` of every layer, rows moved to the host, no store
  hooks     TransformerLens-style caching: a forward hook per layer copies its output to the host
erasure during generation (a rank-8 eraser at 8 layers, every step, greedy, 32 new tokens):
  plain     HF `generate`, no intervention
  interp    `interp.run(..., [Erase(eraser)], generate=True)`
  nnsight   a hand-written nnsight generation trace editing the same layers every step
  hooks     forward hooks applying the same formula, then HF `generate`
sharded (with 2 GPUs or more): `interp trace` of a saved copy of the model, one process on one
GPU against `torchrun --nproc_per_node 2` (each rank its shard, rank 0 merges); items/s.

Without CUDA it prints one line and exits 0. `--tiny --allow-cpu` runs every mode on a tiny
model on the CPU, to check the script itself.

    python benchmarks/bench_gpu.py [--items 32] [--batch-size 8] [--out results.json]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SEVEN_B = dict(text=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=11008, vocab_size=156032),
               audio=dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return round(time.perf_counter() - t0, 3)


def build(work: Path, tiny: bool, device: str):
    """(adapter, folder of the tiny checkpoint whose processor it uses)."""
    from transformers import AutoConfig, Qwen2AudioForConditionalGeneration

    from interp.models import load_model
    from interp.models.qwen2_audio import Qwen2Audio
    from interp.testing import make_tiny

    folder = make_tiny("qwen2-audio", work / "tiny", seed=0)
    if tiny:
        return load_model(folder, device=device), folder
    tiny_config = AutoConfig.from_pretrained(folder)
    # fresh configs of the 7B shape (fields derived at init, such as layer_types, follow the new depth)
    text = {k: v for k, v in tiny_config.text_config.to_dict().items() if k not in ("layer_types", "head_dim")}
    audio = tiny_config.audio_config.to_dict()
    config = type(tiny_config)(audio_config={**audio, **SEVEN_B["audio"]}, text_config={**text, **SEVEN_B["text"]},
                               audio_token_id=tiny_config.audio_token_id)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2AudioForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    processor = Qwen2Audio.processor_class().from_pretrained(str(folder))
    return Qwen2Audio(model, processor, folder), folder


def batches(adapter, rows, size, padding_side="right"):
    from interp.audio import load_audio
    from interp.trace import DEFAULT_INSTRUCTION

    for s in range(0, len(rows), size):
        chunk = rows[s:s + size]
        yield adapter.prepare([load_audio(r["audio"], adapter.sampling_rate) for r in chunk],
                              [DEFAULT_INSTRUCTION] * len(chunk), padding_side=padding_side)


def bench_trace(adapter, rows, bs, work) -> dict:
    from interp.layers import parse_layers
    from interp.trace import _hidden, record, trace

    names = [str(i) for i in range(adapter.n_layers)]

    def plain():
        with torch.no_grad():
            for b in batches(adapter, rows, bs):
                adapter.model(**b.inputs)

    def nnsight():
        for b in batches(adapter, rows, bs):
            acts = record(adapter, b, names)
            {k: v.to("cpu", torch.float16) for k, v in acts.items()}

    def hooks():
        cache = {}
        handles = [layer.register_forward_hook(lambda m, a, o, i=i: cache.__setitem__(i, _hidden(o).detach().to("cpu", torch.float16)))
                   for i, layer in enumerate(adapter.layers)]
        try:
            with torch.no_grad():
                for b in batches(adapter, rows, bs):
                    adapter.model(**b.inputs)
                    cache.clear()
        finally:
            for h in handles:
                h.remove()

    def interp_trace():
        out = work / "trace.h5"
        out.unlink(missing_ok=True)
        trace(adapter, rows, out, layers=parse_layers("all", adapter.n_layers, embed_by_default=False),
              positions="audio", dtype="float16", batch_size=bs)

    plain()  # warm-up: kernels, allocator
    return {"plain": timed(plain), "interp": timed(interp_trace), "nnsight": timed(nnsight), "hooks": timed(hooks)}


def random_eraser(adapter, layers, rank=8):
    from interp.analysis.leace import Eraser, LayerEraser

    g = torch.Generator().manual_seed(0)
    erasers = {}
    for i in layers:
        q, _ = torch.linalg.qr(torch.randn(adapter.d_model, rank, generator=g, dtype=torch.float64))
        erasers[i] = LayerEraser(q, q.T.contiguous())
    return Eraser(erasers, "random", adapter.fingerprint(), adapter.family, adapter.d_model)


def bench_erase(adapter, rows, bs, max_new_tokens) -> dict:
    from interp.forward import run
    from interp.interventions import Erase
    from interp.trace import _hidden

    layers = list(range(0, adapter.n_layers, max(1, adapter.n_layers // 8)))[:8]
    eraser = random_eraser(adapter, layers)
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    prepared = list(batches(adapter, rows, bs, padding_side="left"))

    def plain():
        for b in prepared:
            run(adapter, b, [], generate=True, **kwargs)

    def interp_erase():
        for b in prepared:
            run(adapter, b, [Erase(eraser)], generate=True, **kwargs)

    def edit(value):
        hidden = _hidden(value)
        return hidden, (lambda new: (new,) + tuple(value[1:]) if isinstance(value, tuple) else new)

    def nnsight():
        from interp.decoding import greedy_kwargs

        gen = greedy_kwargs(**adapter.generate_kwargs(), **kwargs)
        gen.setdefault("pad_token_id", adapter.tokenizer.pad_token_id)
        for b in prepared:
            with torch.no_grad(), adapter.nnsight.trace(**b.inputs, fn=adapter.model.generate, **gen) as tracer:
                for _ in tracer.all():
                    for i in layers:
                        envoy = adapter.envoy(adapter.layers_path)[i]
                        value = envoy.output
                        hidden, rebuild = edit(value)
                        envoy.output = rebuild(eraser.layer_erasers[i](hidden))

    def hooks():
        def hook(m, a, o, i):
            hidden, rebuild = edit(o)
            return rebuild(eraser.layer_erasers[i](hidden))

        handles = [adapter.layers[i].register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i)) for i in layers]
        try:
            plain()
        finally:
            for h in handles:
                h.remove()

    plain()
    return {"plain": timed(plain), "interp": timed(interp_erase), "nnsight": timed(nnsight), "hooks": timed(hooks)}


def bench_sharded(adapter, folder, manifest, work, bs) -> dict:
    """`interp trace` of a saved copy: one process on one GPU, then torchrun with 2 ranks."""
    ckpt = work / "model"
    adapter.model.save_pretrained(ckpt)
    adapter.processor.save_pretrained(ckpt)
    interp = str(Path(sys.executable).with_name("interp"))
    common = ["--data", str(manifest), "--layers", "all", "--positions", "audio", "--batch-size", str(bs)]
    out = {}
    for name, cmd, env in (
            ("one_gpu", [interp, "trace", str(ckpt), "--out", str(work / "one.h5"), *common],
             {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}),
            ("torchrun_2_gpus", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 "--no-python", interp, "trace", str(ckpt), "--out", str(work / "two.h5"), *common],
             dict(os.environ))):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        out[name] = round(time.perf_counter() - t0, 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each utterance")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of the 7B shape (checks the script)")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA (with --tiny)")
    ap.add_argument("--skip-sharded", action="store_true")
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("bench_gpu: no CUDA device is visible; nothing to measure (CPU figures: benchmarks/bench_trace.py, "
              "bench_shard.py)")
        return
    from bench_trace import make_data
    from interp.manifest import read_manifest

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    adapter, folder = build(work, args.tiny, device)
    manifest = make_data(work / "data", args.items, seconds=args.seconds)
    rows = read_manifest(manifest)
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "model": "tiny" if args.tiny else "7B-shaped qwen2-audio",
           "d_model": adapter.d_model, "decoder_layers": adapter.n_layers, "items": args.items, "seconds_per_item": args.seconds,
           "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
           "torch": torch.__version__}
    res["trace_s"] = bench_trace(adapter, rows, args.batch_size, work)
    res["erase_generate_s"] = bench_erase(adapter, rows, args.batch_size, args.max_new_tokens)
    for key in ("trace_s", "erase_generate_s"):
        plain = res[key]["plain"]
        res[key.replace("_s", "_ratio_to_plain")] = {k: round(v / plain, 3) for k, v in res[key].items()}
    if device == "cuda":
        res["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    if not args.skip_sharded and torch.cuda.device_count() >= 2:
        res["sharded_trace_s"] = bench_sharded(adapter, folder, manifest, work, args.batch_size)
        res["sharded_speedup"] = round(res["sharded_trace_s"]["one_gpu"] / res["sharded_trace_s"]["torchrun_2_gpus"], 2)
    elif not args.skip_sharded:
        res["sharded_trace_s"] = "skipped: needs 2 GPUs"
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
