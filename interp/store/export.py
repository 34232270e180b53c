"""Stores as other tools read them: TransformerLens-shaped caches and SAELens' cached activations.

`to_transformer_lens` gives what `HookedTransformer.run_with_cache` gives, by hook name
(`resid/{i}` -> `blocks.{i}.hook_resid_post`, `resid/embed` -> `blocks.0.hook_resid_pre`):
(batch, pos, d_model) tensors, one row of the batch per item, its stored positions from the
left and zeros after them, with the mask of real positions beside (`TLCache.mask`). A store
traced with positions "all" holds every position, so its cache is laid out as the model's
own (row k of item i is position k of its unpadded prompt).

`to_hf_dataset` writes one layer as the cached-activation dataset SAELens trains from
(`LanguageModelSAERunnerConfig(use_cached_activations=True, cached_activations_path=...)`):
a Hugging Face dataset saved with `save_to_disk`, one column named by the hook, each row a
(context_size, d_model) array of consecutive store rows, and a `token_ids` column beside it
(-1 where a row is pooled or an encoder frame). Rows of every selected item are taken in store
order; the tail that does not fill a whole context is left out (`ExportSummary.n_left_out`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from interp.errors import InterpError


def hook_name(layer: str) -> str:
    """The TransformerLens hook name of a stored layer."""
    return "blocks.0.hook_resid_pre" if layer == "embed" else f"blocks.{layer}.hook_resid_post"


class TLCache(dict):
    """Hook name -> (batch, pos, d_model) tensor, as TransformerLens' `ActivationCache` indexes,
    with `mask` (batch, pos) marking stored positions and `ids` naming each batch row's item."""

    def __init__(self, tensors: dict, mask: torch.Tensor, ids: list[str]):
        super().__init__(tensors)
        self.mask = mask
        self.ids = ids


def to_transformer_lens(store, items=None, layers="all", positions: str = "all") -> TLCache:
    items = check_items(store, items)
    per_item = [store.rows([i], positions=positions) for i in items]
    width = max((len(r) for r in per_item), default=0)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for b, r in enumerate(per_item):
        mask[b, :len(r)] = True
    rows = np.concatenate(per_item) if per_item else np.zeros(0, np.int64)
    out = {}
    for layer in store.resolve_layers(layers):
        full = torch.zeros(len(items), width, store.d_model, dtype=torch.float32)
        full[mask] = store.read(layer, rows=rows, torch=True)
        out[hook_name(layer)] = full
    return TLCache(out, mask, [str(store.items["id"][i]) for i in items])


@dataclass
class ExportSummary:
    path: Path
    hook_name: str
    context_size: int
    n_contexts: int  #: dataset rows written
    n_positions: int  #: store rows in them
    n_left_out: int  #: store rows of the last, partial context, not written


def to_hf_dataset(store, layer, path, context_size: int = 128, positions: str = "all", items=None,
                  overwrite: bool = False, progress=None) -> ExportSummary:
    try:
        from datasets import Array2D, Dataset, Features, Sequence as HFSequence, Value
    except ImportError:
        raise InterpError("exporting to a Hugging Face dataset needs the datasets package: "
                          "pip install 'interp[export]'") from None
    from interp.atomic import staged_folder
    from interp.progress import stage

    if context_size < 1:
        raise InterpError(f"context_size must be at least 1, got {context_size}")
    (name,) = store.resolve_layers([layer])
    rows = store.rows(items, positions=positions)
    n_contexts = len(rows) // context_size
    if n_contexts == 0:
        raise InterpError(f"the store has {len(rows)} {positions} position(s) to export, fewer than one context of "
                          f"{context_size}; lower context_size")
    hook = hook_name(name)
    features = Features({hook: Array2D(shape=(context_size, store.d_model), dtype="float32"),
                         "token_ids": HFSequence(Value("int32"), length=context_size)})
    advance = stage(progress, f"export {hook}", n_contexts, "contexts")
    kwargs = {"path": str(store.path), "layer": name, "hook": hook, "rows": rows[: n_contexts * context_size],
              "context_size": context_size}
    path = Path(path)
    with staged_folder(path, overwrite, what="the dataset folder") as tmp:
        # the datasets library hashes the generator and its arguments: it is given the store's path, not the store
        data = Dataset.from_generator(_contexts, features=features, gen_kwargs=kwargs, cache_dir=str(tmp / ".cache"))
        data.save_to_disk(str(tmp / "data"))
        for f in (tmp / "data").iterdir():
            os.replace(f, tmp / f.name)
        (tmp / "data").rmdir()
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
    advance(n_contexts)
    return ExportSummary(path, hook, context_size, n_contexts, n_contexts * context_size, len(rows) - n_contexts * context_size)


def _contexts(path: str, layer: str, hook: str, rows: np.ndarray, context_size: int):
    """The dataset's rows: consecutive store rows, `context_size` at a time, read ~64 MB at a time."""
    from interp.store.reader import ActivationStore

    with ActivationStore(path) as store:
        token_ids = store.positions["token_id"]
        step = max(1, (1 << 24) // (context_size * store.d_model)) * context_size
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            x = store.read(layer, rows=part).reshape(-1, context_size, store.d_model)
            ids = token_ids[part].astype(np.int32).reshape(-1, context_size)
            for k in range(len(x)):
                yield {hook: x[k], "token_ids": ids[k]}


def check_items(store, items: Sequence[int] | None) -> np.ndarray:
    items = np.arange(store.n_items) if items is None else np.asarray(items, dtype=np.int64)
    if len(items) and (items.min() < 0 or items.max() >= store.n_items):
        raise InterpError(f"item index out of range: the store holds {store.n_items} items")
    return items
