"""Record the residual stream of a speech LLM with nnsight and stream it into a store.

`record` runs one nnsight trace over a prepared batch and returns the residual after each
requested block (and `embed`, the input of block 0: embeddings with audio merged in).
`trace` drives a whole manifest through it: batches are prepared and run on the main
thread while a writer thread appends finished batches to the store, so disk I/O overlaps
compute and memory holds at most a couple of batches whatever the number of items. The
instruction sent with each item's audio is `prompt` (text for all, a function of the manifest
row such as `tasks.speech_prompt`, or None: the row's own `instruction`, else a neutral one),
and the store records it per item. The module is callable: `interp.trace(model, rows, out)`.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from interp.audio import load_audio
from interp.errors import InterpError
from interp.layers import parse_layers
from interp.models.base import AudioSpan, Batch, SpeechLM
from interp.positions import TRACE, check_positions, select_positions
from interp.progress import Progress, stage
from interp.shard import Shard, ShardInfo, store_attrs
from interp.store import ActivationStore, ItemRecord, StoreWriter

STORE_DTYPES = ("float16", "float32")
DEFAULT_INSTRUCTION = "Listen to the audio and answer."
#: the instruction sent with each item: text for all, a function of the manifest row, or None (the row's own)
Prompt = Union[str, Callable[[dict], Optional[str]], None]


def layer_path(adapter: SpeechLM, component: str) -> str:
    if component == "decoder":
        return adapter.layers_path
    if component == "encoder":
        if adapter.encoder_layers_path is None:
            raise InterpError(f"{adapter.family} exposes no audio encoder layers; use --component decoder")
        return adapter.encoder_layers_path
    raise InterpError(f"unknown component '{component}'; use decoder or encoder")


def n_component_layers(adapter: SpeechLM, component: str) -> int:
    return len(adapter.module(layer_path(adapter, component)))


def _hidden(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def record(adapter: SpeechLM, batch: Batch, layers: Sequence[str], component: str = "decoder",
           return_logits: bool = False) -> dict[str, torch.Tensor]:
    """Residuals (batch, seq, d_model) at `layers` for one batch, from a single nnsight trace.

    For the encoder component the returned tensors are over encoder frames.
    """
    path = layer_path(adapter, component)
    if component == "encoder":
        inputs, _ = adapter.encoder_inputs(batch)
        from nnsight import NNsight

        parent, name = path.rsplit(".", 1)
        root = NNsight(adapter.module(parent))
        envoys = getattr(root, name)
    else:
        inputs = batch.inputs
        root = adapter.nnsight
        envoys = adapter.envoy(path)
    saved: dict[str, torch.Tensor] = {}
    with torch.no_grad(), root.trace(**inputs):
        # nnsight interleaves this code with the forward pass, so modules are visited in
        # execution order: block 0's input first, then block outputs in ascending order.
        if "embed" in layers:
            saved["embed"] = _hidden(envoys[0].input).save()
        for name in layers:
            if name != "embed":
                saved[name] = _hidden(envoys[int(name)].output).save()
        if return_logits:
            saved["logits"] = root.output.logits.save()
    return saved


def to_records(batch: Batch, acts: dict[str, torch.Tensor], rows: Sequence[dict], mode: str, store_dtype: str,
               component: str, encoder_spans: list[AudioSpan] | None = None) -> list[ItemRecord]:
    """Cut a batch's activations into per-item records for the positions mode."""
    np_dtype = np.float16 if store_dtype == "float16" else np.float32
    host = {k: v.detach().to("cpu", torch.float32) for k, v in acts.items() if k != "logits"}
    records = []
    for i, row in enumerate(rows):
        if component == "encoder":
            span = encoder_spans[i]
            sel = select_positions(mode, span, None, len(span.positions))
            token_ids = np.full(len(sel.positions), -1, dtype=np.int64)
        else:
            span = batch.audio[i]
            mask = batch.attention_mask[i].cpu().numpy()
            sel = select_positions(mode, span, mask, mask.shape[0])
            token_ids = batch.token_ids[i].cpu().numpy()[sel.positions]
        index = sel.positions.copy()
        if component == "decoder":
            # position within the unpadded sequence, whatever the padding side
            first = int(np.flatnonzero(batch.attention_mask[i].cpu().numpy())[0])
            index = index - first
        resid = {}
        for name, x in host.items():
            h = x[i, torch.as_tensor(sel.positions)]
            if sel.pooled:
                h = h.mean(0, keepdim=True)
            resid[name] = h.numpy().astype(np_dtype)
        if sel.pooled:
            token_ids, index = np.full(1, -1, np.int64), np.full(1, -1, np.int64)
        records.append(ItemRecord(
            id=str(row["id"]), row=row, resid=resid, token_id=token_ids.astype(np.int64), index=index.astype(np.int64),
            is_audio=sel.is_audio, time_start=sel.time_start, time_end=sel.time_end,
            audio_seconds=float(batch.durations[i]), truncated=bool(batch.truncated[i]) if batch.truncated else False))
    return records


def instruction_for(row: dict, prompt: Prompt = None) -> str:
    """The instruction sent with an item's audio: `prompt` when it is text; `prompt(row)` when it
    is a function (e.g. `tasks.speech_prompt`, the item's task prompt); else the row's own
    `instruction`; a neutral one where these give nothing."""
    if callable(prompt):
        return prompt(row) or row.get("instruction") or DEFAULT_INSTRUCTION
    return prompt or row.get("instruction") or DEFAULT_INSTRUCTION


@dataclass
class TraceSummary:
    path: Path
    n_items: int
    n_new: int
    n_rows: int
    layers: list[str]
    seconds: float
    truncated: list[str] = field(default_factory=list)
    non_finite: int = 0


class _Writer(threading.Thread):
    """Appends record batches to the store off the compute thread."""

    def __init__(self, writer: StoreWriter, on_done: Callable[[int], None] | None):
        super().__init__(daemon=True)
        self.writer, self.on_done = writer, on_done
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None

    def run(self):
        while True:
            records = self.queue.get()
            if records is None:
                return
            if self.error is None:
                try:
                    self.writer.append(records)
                    if self.on_done:
                        self.on_done(len(records))
                except BaseException as e:  # surfaced on the main thread
                    self.error = e

    def put(self, records):
        if self.error:
            raise self.error
        self.queue.put(records)

    def close(self):
        self.queue.put(None)
        self.join()
        if self.error:
            raise self.error


def trace(adapter: SpeechLM, rows: Sequence[dict], out: str | Path, layers: str | Sequence = "all",
          positions: str = "audio", dtype: str = "float16", batch_size: int = 8, resume: bool = False,
          overwrite: bool = False, prompt: Prompt = None, component: str = "decoder", command: str = "",
          shard: Shard | None = None, progress: Progress | None = None) -> TraceSummary:
    """Trace every manifest row through `adapter` and stream the residuals into the store `out`.

    The store is locked while it is written. `resume` continues a store traced by the same
    model (fingerprint), settings and manifest (ids and input fingerprints, in order);
    `overwrite` builds the new store beside an existing one and replaces it only on success.
    With `shard`, only that shard of `rows` is traced (`interp.shard`: a contiguous run cut on
    batch boundaries) and the store records which; `interp.store.merge` joins the shards.
    """
    from interp.errors import path_problem
    from interp.fingerprint import input_fingerprint
    from interp.locks import OutputLock

    out = Path(out)
    check_positions(positions, TRACE, "a store")
    if dtype not in STORE_DTYPES:
        raise InterpError(f"unknown store dtype '{dtype}'; use float16 or float32")
    if batch_size < 1:
        raise InterpError("--batch-size must be at least 1")
    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other; pick one")
    if component == "encoder" and positions == "text":
        raise InterpError("the encoder has only audio frames; use positions all, audio, last or audio-mean")
    if component == "decoder" and not adapter.audio_in_decoder and positions in ("audio", "audio-mean"):
        raise InterpError(f"{adapter.family}'s decoder residual holds no audio positions; use --component encoder "
                          f"for its audio frames, or --positions all|text|last for the decoder")
    names = parse_layers(layers, n_component_layers(adapter, component))
    if out.is_dir():
        raise InterpError(f"{out} is a folder; give a file path for the store, e.g. {out / 'acts.h5'}")
    manifest = rows

    with OutputLock(out, command or None):
        start = 0
        staged = False
        writer = None
        if out.exists() and not overwrite:
            if not resume:
                raise InterpError(f"{out} exists; pass --resume to complete it or --overwrite to replace it")
            writer = StoreWriter(out)
            batch_size = int(writer.attrs.get("batch_size", batch_size))  # a resume keeps the store's batches
        info = shard.info(manifest, adapter.batch_size(batch_size)) if shard is not None else None
        rows = info.select(manifest) if info is not None else manifest
        problems = [p for p in (path_problem(r["audio"], "audio file") for r in rows) if p]
        if problems:
            raise InterpError(f"{len(problems)} item(s) have no readable audio file, e.g. {problems[0]}; "
                              "fix the manifest's 'audio' paths")
        attrs = _store_attrs(adapter, names, positions, dtype, batch_size, prompt, component, command)
        attrs.update(store_attrs(info, manifest))
        instructions = [instruction_for(r, prompt) for r in rows]
        if writer is not None:
            _check_resumable(writer, attrs, rows, instructions)
            start = writer.resume()
        else:
            staged = out.exists()
            writer = StoreWriter.create(out, attrs, names, _width(adapter, component), dtype, replace=staged)
        advance = stage(progress, "trace", len(rows))
        advance(start)
        batch_size = adapter.batch_size(batch_size)

        t0 = time.perf_counter()
        thread = _Writer(writer, advance)
        thread.start()
        truncated, non_finite = [], 0
        try:
            try:
                for s in range(start, len(rows), batch_size):
                    chunk = rows[s:s + batch_size]
                    waves = [load_audio(r["audio"], adapter.sampling_rate) for r in chunk]
                    batch = adapter.prepare(waves, instructions[s:s + batch_size])
                    acts = record(adapter, batch, names, component)
                    enc_spans = adapter.encoder_inputs(batch)[1] if component == "encoder" else None
                    records = to_records(batch, acts, chunk, positions, dtype, component, enc_spans)
                    for rec, r, text in zip(records, chunk, instructions[s:s + batch_size]):
                        rec.input_fingerprint = input_fingerprint(r["audio"], text)
                        rec.instruction = text
                    for r, cut in zip(chunk, batch.truncated or []):
                        if cut:
                            truncated.append(str(r["id"]))
                    non_finite += sum(int((~np.isfinite(x)).sum()) for rec in records for x in rec.resid.values())
                    thread.put(records)
            finally:
                thread.close()
            writer.finish()
        except BaseException:
            if staged:
                writer.abandon()  # the old store stays as it was
            raise
    with ActivationStore(out) as store:
        n_items, n_rows = store.n_items, store.n_rows
    return TraceSummary(out, n_items, len(rows) - start, n_rows, names, time.perf_counter() - t0, truncated, non_finite)


def _width(adapter: SpeechLM, component: str) -> int:
    if component == "decoder":
        return adapter.d_model
    block = adapter.module(layer_path(adapter, component))[0]
    for m in block.modules():
        if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm"):
            return int(m.weight.shape[0])
    raise InterpError(f"cannot tell the width of {adapter.family}'s encoder")


def _store_attrs(adapter, names, positions, dtype, batch_size, prompt, component, command) -> dict:
    import platform

    import h5py
    import nnsight
    import transformers

    from interp.version import __version__

    return {
        "model_path": str(Path(adapter.path).resolve()), "model_class": type(adapter.model).__name__,
        "family": adapter.family, "model_fingerprint": adapter.fingerprint(), "model_dtype": adapter.runtime_dtype,
        "component": component, "positions": positions, "prompt": prompt if isinstance(prompt, str) else "", "batch_size": int(batch_size),
        "n_model_layers": int(n_component_layers(adapter, component)),
        "library_versions": {"interp": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                             "nnsight": nnsight.__version__, "h5py": h5py.__version__, "python": platform.python_version()},
        "command": command or " ".join(["interp"] + sys.argv[1:]),
        "layers_spec": names, "store_dtype": dtype,
    }


def _check_resumable(writer: StoreWriter, attrs: dict, rows: Sequence[dict], instructions: Sequence[str]) -> None:
    """Nothing if this run may continue the store of `writer`; else one line saying what differs."""
    import json

    from interp.fingerprint import check_model, input_fingerprint

    out = writer.path
    have = writer.attrs
    check_model(have, attrs["model_fingerprint"], attrs["model_dtype"], f"store {out}",
                f"the model at {attrs['model_path']}", "give the model it was traced with, or pass --overwrite")
    for key in ("component", "positions", "store_dtype", "prompt"):
        if str(have.get(key)) != str(attrs[key]):
            raise InterpError(f"cannot resume {out}: its {key} is '{have.get(key)}' but this run's is '{attrs[key]}'; "
                              f"use the same settings or --overwrite")
    if have.get("layers") != json.dumps(list(attrs["layers_spec"])):
        raise InterpError(f"cannot resume {out}: it holds layers {have.get('layers')}; use the same --layers or --overwrite")
    mine, theirs = ShardInfo.from_attrs(attrs), ShardInfo.from_attrs(have)
    if mine is not None or theirs is not None:
        why = mine.differs(theirs) if mine is not None else f"it is shard {theirs.label}, not the whole manifest"
        if why:
            raise InterpError(f"cannot resume {out}: {why}; give the same manifest, --shard and --batch-size, "
                              "or --overwrite")
    attrs["batch_size"] = int(have["batch_size"])
    done = writer.ids()
    if len(done) > len(rows):
        raise InterpError(f"cannot resume {out}: it holds {len(done)} items but the manifest has {len(rows)}; "
                          "give the manifest it was traced from (without a smaller --limit), or --overwrite")
    stored = writer.columns["input_fingerprint"]
    for i, (item_id, row) in enumerate(zip(done, rows)):
        if str(row["id"]) != item_id:
            raise InterpError(f"cannot resume {out}: item {i + 1} of the store is '{item_id}' but of the manifest "
                              f"'{row['id']}'; give the manifest it was traced from, or --overwrite")
        if stored[i] != input_fingerprint(row["audio"], instructions[i]):
            raise InterpError(f"cannot resume {out}: item '{item_id}' (number {i + 1}) differs from the one traced "
                              "(its audio file or instruction changed); give the manifest it was traced from, "
                              "or --overwrite")


class _CallableModule(type(sys)):
    """`interp.trace` is the module and, called, its `trace`: `interp.trace(model, rows, out)`
    as the package's API names it, while `from interp.trace import record` keeps working. (A
    plain package attribute could not be both: importing the submodule rebinds the name.)"""

    def __call__(self, *args, **kwargs) -> TraceSummary:
        return trace(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
