"""The logit lens: read each layer's residual stream through the model's own output head.

For a residual h at layer L the lens is `unembed(final_norm(h))`, with the final norm run
as a module on h itself, so its statistics (RMS, or mean and variance) are those of layer
L. Reusing the last layer's cached scale for every layer (TransformerLens issue #1076)
mis-scales early layers; `lens_logits` cannot do that because it never sees a cache. Any
fixed logit post-processing of the decoder's config (Granite's `logits_scaling`, Gemma's
`final_logit_softcapping`) is applied after, so the last layer's lens equals the model's
own logits.

Two sources feed the same code: `lens_live` runs a manifest through the model with
`interp.trace.record` (the one way this toolkit records a model), and `lens_store` reads
residuals from an activation store and needs only the norm and unembedding. Both return
a `LensResult`: per item and layer the top-k tokens and probabilities per position, the
lens text (top-1 tokens at audio positions, consecutive repeats collapsed) and
bag-of-tokens precision/recall against the transcript (defined in docs/lens.md). What the
lens writes (JSON Lines, the implicit-cascade manifest) is `interp.analysis.lens_outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.positions import LENS, check_positions
from interp.progress import Progress, stage
from interp.store import ActivationStore
from interp.trace import Prompt


# ---- the lens itself -----------------------------------------------------------------------


def _text_config(adapter: SpeechLM):
    config = adapter.model.config
    getter = getattr(config, "get_text_config", None)
    return getter() if getter else config


def lens_logits(adapter: SpeechLM, resid: torch.Tensor) -> torch.Tensor:
    """Lens logits (..., vocab) for residuals (..., d_model) taken anywhere in the decoder."""
    # the final norm's device: under a device map it is on the last GPU, not the first
    device = next(adapter.final_norm.parameters(), next(adapter.model.parameters())).device
    x = resid.to(device=device, dtype=adapter.dtype)
    with torch.no_grad():
        # The norm module recomputes its statistics on x: this layer's, not the last one's.
        logits = adapter.unembed(adapter.final_norm(x))
        cfg = _text_config(adapter)
        scaling = getattr(cfg, "logits_scaling", None)
        if scaling not in (None, 1, 1.0):
            logits = logits / scaling
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    return logits


def lens_topk(adapter: SpeechLM, resid: torch.Tensor, k: int = 5, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Top-k token ids (n, k) and their probabilities (n, k) for residuals (n, d_model).

    Positions go through in chunks so that (chunk x vocab) logits bound the memory.
    """
    ids, probs = [], []
    for s in range(0, resid.shape[0], chunk):
        logp = lens_logits(adapter, resid[s:s + chunk]).float().log_softmax(-1)
        p, i = logp.topk(min(k, logp.shape[-1]), dim=-1)
        ids.append(i.cpu().numpy().astype(np.int32))
        probs.append(p.exp().cpu().numpy())
    if not ids:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    return np.concatenate(ids), np.concatenate(probs).astype(np.float32)


# ---- tokens as text ------------------------------------------------------------------------


class TokenForms:
    """Decoded text of single token ids and their normalised forms for bag-of-tokens matching.

    The form of a token is its decoded text, stripped of whitespace and case-folded; special
    tokens, whitespace-only tokens and partial UTF-8 byte tokens (decoding to U+FFFD) have
    the empty form and are not counted. So ' The', 'the' and 'THE' match; 'the' and 'then' do not.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._text: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id not in self._text:
            self._text[token_id] = self.tokenizer.decode([token_id])
        return self._text[token_id]

    def form(self, token_id: int) -> str:
        if int(token_id) in self.special:
            return ""
        f = self.text(token_id).strip().casefold()
        return "" if "\ufffd" in f else f

    def transcript_forms(self, transcript: str) -> set[str]:
        """Forms of the transcript's tokens, tokenised as it stands and after a leading space
        (byte-level BPEs split a word differently at the start of a text)."""
        out: set[str] = set()
        for text in (transcript, " " + transcript):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.update(self.form(i) for i in ids)
        out.discard("")
        return out

    def lens_text(self, top1: Sequence[int]) -> str:
        """Top-1 ids with consecutive repeats collapsed, decoded without special tokens."""
        ids = [int(t) for k, t in enumerate(top1) if k == 0 or int(t) != int(top1[k - 1])]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def bag_of_tokens(top1: Sequence[int], transcript: str, forms: TokenForms) -> tuple[float | None, float | None]:
    """(precision, recall) of the distinct top-1 token forms against the transcript's token forms.

    precision = |D & T| / |D|, recall = |D & T| / |T|, with D the distinct non-empty forms of
    the top-1 tokens and T those of the transcript; None where the denominator is empty.
    """
    d = {forms.form(t) for t in top1}
    d.discard("")
    t = forms.transcript_forms(transcript) if transcript else set()
    hit = len(d & t)
    return (hit / len(d) if d else None), (hit / len(t) if t else None)


# ---- results -------------------------------------------------------------------------------


@dataclass
class LensItem:
    """One item's lens read-out at the selected positions of every layer."""

    id: str
    row: dict  #: the manifest row
    transcript: str
    index: np.ndarray  #: position within the item's unpadded sequence
    is_audio: np.ndarray
    time_start: np.ndarray
    time_end: np.ndarray
    top_ids: dict[str, np.ndarray] = field(default_factory=dict)  #: layer -> (n_positions, k)
    top_probs: dict[str, np.ndarray] = field(default_factory=dict)  #: layer -> (n_positions, k)
    text: dict[str, str] = field(default_factory=dict)  #: layer -> lens text over the scored positions
    precision: dict[str, float | None] = field(default_factory=dict)
    recall: dict[str, float | None] = field(default_factory=dict)

    @property
    def scored(self) -> np.ndarray:
        """Positions that bag-of-tokens and lens text use: the audio ones, or all when none is audio."""
        return self.is_audio if self.is_audio.any() else np.ones_like(self.is_audio)


@dataclass
class LensResult:
    """The logit lens over a set of items: per-item read-outs and per-layer bag-of-tokens scores."""

    family: str
    model_path: str
    source: str  #: "live" (manifest run through the model) or the store's path
    positions: str
    layers: list[str]
    top_k: int
    items: list[LensItem]
    precision: dict[str, float] = field(default_factory=dict)  #: layer -> mean over items
    recall: dict[str, float] = field(default_factory=dict)  #: layer -> mean over items
    n_scored: dict[str, int] = field(default_factory=dict)  #: items with a defined precision per layer

    def summary(self) -> list[dict]:
        return [{"layer": layer, "precision": self.precision.get(layer), "recall": self.recall.get(layer),
                 "n_items": self.n_scored.get(layer, 0)} for layer in self.layers]

    def rows(self, forms: TokenForms) -> list[dict]:
        """JSON Lines rows, one per (item, layer)."""
        out = []
        for item in self.items:
            for layer in self.layers:
                ids = item.top_ids[layer]
                out.append({
                    "id": item.id, "layer": layer, "transcript": item.transcript, "text": item.text[layer],
                    "precision": item.precision[layer], "recall": item.recall[layer],
                    "index": item.index.tolist(), "is_audio": item.is_audio.tolist(),
                    "time_start": [None if np.isnan(t) else round(float(t), 4) for t in item.time_start],
                    "time_end": [None if np.isnan(t) else round(float(t), 4) for t in item.time_end],
                    "top_ids": ids.tolist(), "top_tokens": [[forms.text(t) for t in row] for row in ids],
                    "top_probs": np.round(item.top_probs[layer].astype(np.float64), 5).tolist(),
                })
        return out


def _finish(result: LensResult, forms: TokenForms) -> LensResult:
    """Lens text and bag-of-tokens per item and layer, then the per-layer means."""
    for item in result.items:
        keep = item.scored
        for layer in result.layers:
            top1 = item.top_ids[layer][keep, 0]
            item.text[layer] = forms.lens_text(top1)
            item.precision[layer], item.recall[layer] = bag_of_tokens(top1, item.transcript, forms)
    for layer in result.layers:
        p = [it.precision[layer] for it in result.items if it.precision[layer] is not None]
        r = [it.recall[layer] for it in result.items if it.recall[layer] is not None]
        result.precision[layer] = float(np.mean(p)) if p else float("nan")
        result.recall[layer] = float(np.mean(r)) if r else float("nan")
        result.n_scored[layer] = len(p)
    return result


# ---- live: manifest -> model -> lens -------------------------------------------------------


def default_positions(adapter: SpeechLM) -> str:
    """'audio' for speech LLMs; 'all' for Whisper, whose decoder residual holds no audio."""
    return "audio" if adapter.audio_in_decoder else "all"


def lens_live(adapter: SpeechLM, rows: Sequence[dict], layers: str | Sequence = "all", positions: str | None = None,
              top_k: int = 5, batch_size: int = 4, prompt: Prompt = None,
              progress: Progress | None = None) -> LensResult:
    """Run manifest rows through the model (one `record` trace per batch) and apply the lens.
    `prompt` is the instruction sent with the audio (as for `interp.trace.trace`)."""
    from interp.audio import load_audio
    from interp.layers import parse_layers
    from interp.positions import select_positions
    from interp.trace import instruction_for, record

    positions = positions or default_positions(adapter)
    _check_args(positions, top_k, adapter)
    if batch_size < 1:
        raise InterpError("--batch-size must be at least 1")
    names = parse_layers(layers, adapter.n_layers)
    from interp.errors import path_problem

    problems = [p for p in (path_problem(r["audio"], "audio file") for r in rows) if p]
    if problems:
        raise InterpError(f"{len(problems)} item(s) have no readable audio file, e.g. {problems[0]}; "
                          "fix the manifest's 'audio' paths")
    forms = TokenForms(adapter.tokenizer)
    advance = stage(progress, "lens", len(rows))
    items: list[LensItem] = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        waves = [load_audio(r["audio"], adapter.sampling_rate) for r in chunk]
        batch = adapter.prepare(waves, [instruction_for(r, prompt) for r in chunk])
        acts = record(adapter, batch, names, "decoder")
        seq = next(iter(acts.values())).shape[1]
        for i, row in enumerate(chunk):
            mask = batch.attention_mask[i].cpu().numpy() if batch.attention_mask is not None else None
            if mask is not None and mask.shape[0] != seq:
                mask = None  # an encoder mask (Whisper): every decoder position is real
            sel = select_positions(positions, batch.audio[i], mask, seq)
            if len(sel.positions) == 0:
                raise InterpError(f"item '{row['id']}' has no {positions} positions in {adapter.family}'s decoder "
                                  f"residual; use --positions all")
            first = int(np.flatnonzero(mask)[0]) if mask is not None else 0
            item = LensItem(str(row["id"]), row, str(row.get("transcript") or ""), sel.positions - first, sel.is_audio,
                            sel.time_start, sel.time_end)
            index = torch.as_tensor(sel.positions, device=acts[names[0]].device)
            for layer in names:
                item.top_ids[layer], item.top_probs[layer] = lens_topk(adapter, acts[layer][i, index], top_k)
            items.append(item)
        del acts
        advance(len(chunk))
    result = LensResult(adapter.family, adapter.path, "live", positions, names, top_k, items)
    return _finish(result, forms)


def _check_args(positions: str, top_k: int, adapter: SpeechLM | None = None) -> None:
    check_positions(positions, LENS, "the lens")
    if top_k < 1:
        raise InterpError("--top-k must be at least 1")
    vocab = getattr(getattr(adapter, "unembed", None), "out_features", None) if adapter is not None else None
    if vocab is not None and top_k > vocab:
        raise InterpError(f"--top-k {top_k} is more than the model's vocabulary of {vocab} tokens; use at most {vocab}")


# ---- from a store: residuals on disk -> norm + unembedding -----------------------------------


def check_store_model(store: ActivationStore, adapter: SpeechLM) -> None:
    """Refuse a store traced from another model, from the encoder, or holding pooled states."""
    from interp.fingerprint import check_model

    check_model(store.attrs, adapter.fingerprint(), adapter.runtime_dtype, f"store {store.path.name}",
                f"the model at {adapter.path}", "give the model the store was traced with")
    if store.attrs.get("component", "decoder") != "decoder":
        raise InterpError(f"store {store.path.name} holds {store.attrs.get('component')} states; the logit lens reads "
                          "decoder residuals: trace with --component decoder")
    if store.attrs.get("positions") == "audio-mean":
        raise InterpError(f"store {store.path.name} holds pooled states (positions audio-mean); the lens reads one "
                          "state per position: trace with --positions audio or all")


def lens_store(adapter: SpeechLM, store: ActivationStore | str | Path, layers: str | Sequence = "all",
               positions: str | None = None, top_k: int = 5, items: Sequence[int] | None = None,
               chunk_rows: int = 4096, progress: Progress | None = None) -> LensResult:
    """The lens over residuals already in a store: one layer at a time, `chunk_rows` rows at a time."""
    own = not isinstance(store, ActivationStore)
    store = ActivationStore(store) if own else store
    try:
        positions = positions or default_positions(adapter)
        _check_args(positions, top_k, adapter)
        check_store_model(store, adapter)
        names = store.resolve_layers(layers)
        rows = store.rows(items, positions=positions)
        if len(rows) == 0:
            raise InterpError(_no_rows_advice(store, positions))
        owner = store.row_items(rows)
        pos = store.positions
        advance = stage(progress, "lens", len(names), "layers")
        lens_items, slots = [], {}
        for i in np.unique(owner):
            r = rows[owner == i]
            meta = store.meta(int(i))
            slots[int(i)] = (len(lens_items), np.flatnonzero(owner == i))
            lens_items.append(LensItem(str(store.items["id"][i]), meta, str(store.items["transcript"][i] or ""),
                                       pos["index"][r], pos["is_audio"][r], pos["time_start"][r], pos["time_end"][r]))
        for layer in names:
            ids = np.zeros((len(rows), top_k), np.int32)
            probs = np.zeros((len(rows), top_k), np.float32)
            for s in range(0, len(rows), chunk_rows):
                x = store.read(layer, rows=rows[s:s + chunk_rows], torch=True)
                ids[s:s + len(x)], probs[s:s + len(x)] = lens_topk(adapter, x, top_k)
            for i, (slot, where) in slots.items():
                lens_items[slot].top_ids[layer] = ids[where]
                lens_items[slot].top_probs[layer] = probs[where]
            advance(1)
        result = LensResult(adapter.family, adapter.path, str(store.path), positions, names, top_k, lens_items)
        return _finish(result, TokenForms(adapter.tokenizer))
    finally:
        if own:
            store.close()


def _no_rows_advice(store: ActivationStore, positions: str) -> str:
    """Why a store has no rows for `positions`, and only advice that can work."""
    where = f"store {store.path.name}"
    if store.n_rows == 0:
        what = "no items" if store.n_items == 0 else f"{store.n_items} item(s) but no positions"
        return (f"{where} holds {what} (traced with positions '{store.attrs.get('positions')}'); trace items into it "
                "first, e.g. `interp trace ... --resume`")
    audio = int(store.positions["is_audio"].sum())
    have = [p for p, n in (("audio", audio), ("text", store.n_rows - audio)) if n] + ["all", "last"]
    return (f"{where} holds no {positions} positions (traced with positions '{store.attrs.get('positions')}'); "
            f"use --positions {' or '.join(have)}")


def logit_lens(model: SpeechLM, source, layers: str | Sequence = "all", positions: str | None = None, top_k: int = 5,
               **options) -> LensResult:
    """The logit lens over `source`: an activation store of this model (or its path), read with
    only the final norm and unembedding (`lens_store`), or manifest rows run through the model
    (`lens_live`; `prompt=`, `batch_size=` apply). For residual tensors, `lens_logits`."""
    if isinstance(source, (ActivationStore, str, Path)):
        return lens_store(model, source, layers=layers, positions=positions, top_k=top_k, **options)
    return lens_live(model, list(source), layers=layers, positions=positions, top_k=top_k, **options)
