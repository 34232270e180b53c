"""`--component encoder` records what the audio encoder computes inside the model: the store
equals the encoder blocks' outputs hooked during a full forward of the speech LLM, at every
recorded frame, for a padded batch of a 3 s and a shorter clip (Qwen2-Audio's model masks the
padding frames of its 30 s window, which the encoder run alone once did not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.audio import load_audio
from interp.manifest import read_manifest
from interp.store import ActivationStore
from interp.trace import trace

FAMILIES = ["qwen2-audio", "audioflamingo3", "voxtral", "phi4-mm"]


def _hooked_full_forward(adapter, batch) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def keep(name, value):
        seen.setdefault(name, (value[0] if isinstance(value, tuple) else value).detach().clone())

    blocks = adapter.encoder_layers
    handles = [blocks[0].register_forward_pre_hook(
        lambda m, args, kw: keep("embed", args[0] if args else next(iter(kw.values()))), with_kwargs=True)]
    handles += [b.register_forward_hook(lambda m, a, o, k=str(k): keep(k, o)) for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            adapter.model(**batch.inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_store_equals_encoder_inside_full_forward(family, tiny_adapter, tones, tmp_path):
    adapter = tiny_adapter(family)
    rows = read_manifest(tones(2, min_s=1.2, max_s=3.0, seed=3))
    trace(adapter, rows, tmp_path / "enc.h5", layers="all", positions="audio", dtype="float32", component="encoder",
          batch_size=2)
    waves = [load_audio(r["audio"]) for r in rows]
    with ActivationStore(tmp_path / "enc.h5") as store:
        for i in range(len(rows)):
            inside = _hooked_full_forward(adapter, adapter.prepare([waves[i]], ["x"]))
            n = len(store.rows([i]))
            assert n > 0
            for layer in store.layers:
                ours = store.read(layer, items=[i])
                ref = inside[layer][0, :n].float().numpy()
                np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, err_msg=f"item {i}, layer {layer}")
