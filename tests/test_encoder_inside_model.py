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
from tests.helpers import captured

FAMILIES = ["qwen2-audio", "audioflamingo3", "voxtral", "phi4-mm"]


def _hooked_full_forward(adapter, batch) -> dict[str, torch.Tensor]:
    blocks = adapter.encoder_layers
    with captured({str(k): b for k, b in enumerate(blocks)}, {"embed": blocks[0]}) as seen, torch.no_grad():
        adapter.model(**batch.inputs)
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


def test_voxtral_window_padding_is_not_audio(tiny_adapter, tones, tmp_path):
    """A 3 s clip fills 38 of its 30 s window's 375 positions; the other 337 are neither audio nor
    text in the store, in audio-mean pooling and in intervention masks."""
    from interp.interventions import position_masks

    adapter = tiny_adapter("voxtral")
    rows = read_manifest(tones(1, min_s=3.0, max_s=3.0))
    wav = load_audio(rows[0]["audio"])
    assert len(wav) == 48000 and adapter.max_audio_seconds > 30
    batch = adapter.prepare([wav], ["x"])
    span = batch.audio[0]
    assert len(span.positions) == 38 and len(span.padding) == 337
    assert span.time_start[-1] < 3.0 <= span.time_start[-1] + 0.08 and span.time_end[-1] == 3.0
    masks = position_masks(batch, 0, batch.token_ids.shape[1])
    assert int(masks["audio"].sum()) == 38
    assert not (masks["text"][0, torch.as_tensor(span.padding)]).any()
    for mode in ("audio", "text", "all", "audio-mean"):
        trace(adapter, rows, tmp_path / f"{mode}.h5", layers="0", positions=mode, dtype="float32")
    with ActivationStore(tmp_path / "audio.h5") as store:
        assert len(store.rows([0])) == 38 and store.positions["is_audio"].all()
        audio_rows = store.read(0, items=[0])
    with ActivationStore(tmp_path / "text.h5") as store:
        n_text = len(store.rows([0]))
    with ActivationStore(tmp_path / "all.h5") as store:
        assert len(store.rows([0])) == n_text + 375  # the trace's prompt is the item's task prompt
        assert int(store.positions["is_audio"].sum()) == 38
    with ActivationStore(tmp_path / "audio-mean.h5") as store:
        np.testing.assert_allclose(store.read(0, items=[0])[0], audio_rows.mean(0), rtol=1e-5, atol=1e-6)
