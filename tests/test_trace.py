"""Exactness of `interp trace`: recorded residuals are the model's own hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.audio import load_audio
from interp.manifest import read_manifest
from interp.models import family_names
from interp.store import ActivationStore
from interp.layers import parse_layers
from interp.trace import DEFAULT_INSTRUCTION, record, trace
from tests.helpers import captured

DECODER_FAMILIES = family_names()  # whisper too: its decoder over the transcription prompt
ENCODER_FAMILIES = family_names()


def _hidden_states(adapter, batch):
    """HF's output_hidden_states and, independently, the raw last block output via a torch hook."""
    captured = {}
    last = adapter.layers[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.__setitem__("last", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            out = adapter.model(**batch.inputs, output_hidden_states=True)
    finally:
        handle.remove()
    hs = getattr(out, "decoder_hidden_states", None) or out.hidden_states
    if hasattr(out, "language_model_outputs"):
        hs = out.language_model_outputs.hidden_states
    return hs, captured["last"], out.logits


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_store_equals_hidden_states(family, tiny_adapter, tones, tmp_path):
    adapter = tiny_adapter(family)
    rows = read_manifest(tones(3))
    store_path = tmp_path / "acts.h5"
    trace(adapter, rows, store_path, layers="all", positions="all", dtype="float32", batch_size=1, prompt="Hi")
    with ActivationStore(store_path) as store:
        assert store.layers == ["embed"] + [str(i) for i in range(adapter.n_layers)]
        for i, row in enumerate(rows):
            batch = adapter.prepare([load_audio(row["audio"])], ["Hi"])
            hs, last_raw, _ = _hidden_states(adapter, batch)
            assert len(hs) == adapter.n_layers + 1
            np.testing.assert_array_equal(store.read("embed", items=[i]), hs[0][0].numpy())
            for layer in range(adapter.n_layers - 1):
                np.testing.assert_array_equal(store.read(layer, items=[i]), hs[layer + 1][0].numpy())
            last = store.read(adapter.n_layers - 1, items=[i])
            np.testing.assert_array_equal(last, last_raw[0].numpy())
            # HF's last hidden state is the final norm of the last block's output, not the raw output
            normed = adapter.final_norm(torch.from_numpy(last)[None])[0]
            torch.testing.assert_close(normed, hs[-1][0], rtol=1e-5, atol=1e-5)
            assert not np.allclose(last, hs[-1][0].numpy())
            if adapter.family == "whisper":  # its audio is in the encoder, not the decoder's residual
                assert not store.positions["is_audio"][store.rows([i])].any()
                continue
            # stored audio positions are where the adapter says audio is, with their times
            rows_i = store.rows([i])
            is_audio = store.positions["is_audio"][rows_i]
            np.testing.assert_array_equal(np.flatnonzero(is_audio), batch.audio[0].positions)
            np.testing.assert_allclose(store.positions["time_end"][rows_i][is_audio], batch.audio[0].time_end)
            assert np.isnan(store.positions["time_start"][rows_i][~is_audio]).all()


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_tracing_leaves_logits_bit_identical(family, tiny_adapter, tones):
    adapter = tiny_adapter(family)
    rows = read_manifest(tones(2))
    batch = adapter.prepare([load_audio(r["audio"]) for r in rows], ["Hi", "What is said?"])
    traced = record(adapter, batch, parse_layers("all", adapter.n_layers), return_logits=True)["logits"]
    with torch.no_grad():
        plain = adapter.model(**batch.inputs).logits
    assert torch.equal(traced, plain)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_padded_batch_equals_batch_of_one(family, tiny_adapter, tones, tmp_path):
    adapter = tiny_adapter(family)
    rows = read_manifest(tones(5, min_s=0.4, max_s=3.0))
    trace(adapter, rows, tmp_path / "b1.h5", layers="all", positions="all", dtype="float32", batch_size=1)
    trace(adapter, rows, tmp_path / "b4.h5", layers="all", positions="all", dtype="float32", batch_size=4)
    with ActivationStore(tmp_path / "b1.h5") as one, ActivationStore(tmp_path / "b4.h5") as four:
        np.testing.assert_array_equal(one.offsets, four.offsets)
        for name in ("token_id", "index", "is_audio"):
            np.testing.assert_array_equal(one.positions[name], four.positions[name])
        np.testing.assert_allclose(one.positions["time_end"], four.positions["time_end"])
        for layer in one.layers:
            np.testing.assert_allclose(one.read(layer), four.read(layer), rtol=1e-4, atol=1e-4)


def test_positions_modes(tiny_adapter, tones, tmp_path):
    adapter = tiny_adapter("qwen2-audio")
    rows = read_manifest(tones(3))
    paths = {}
    for mode in ("all", "audio", "text", "last", "audio-mean"):
        paths[mode] = tmp_path / f"{mode}.h5"
        trace(adapter, rows, paths[mode], layers="2", positions=mode, dtype="float32", batch_size=2)
    with ActivationStore(paths["all"]) as full:
        for i in range(3):
            x = full.read("2", items=[i])
            audio = full.positions["is_audio"][full.rows([i])]
            with ActivationStore(paths["audio"]) as s:
                np.testing.assert_allclose(s.read("2", items=[i]), x[audio], atol=1e-6)
                assert s.positions["is_audio"].all()
            with ActivationStore(paths["text"]) as s:
                np.testing.assert_allclose(s.read("2", items=[i]), x[~audio], atol=1e-6)
            with ActivationStore(paths["last"]) as s:
                np.testing.assert_allclose(s.read("2", items=[i]), x[-1:], atol=1e-6)
            with ActivationStore(paths["audio-mean"]) as s:
                np.testing.assert_allclose(s.read("2", items=[i])[0], x[audio].mean(0), atol=1e-5)


def test_agrees_with_transformer_lens_bridge(tiny_model_dir, tiny_adapter, tones):
    """An independent implementation: TransformerLens' qwen2_audio TransformerBridge."""
    from transformer_lens.model_bridge import TransformerBridge

    adapter = tiny_adapter("qwen2-audio")
    bridge = TransformerBridge.boot_transformers(str(tiny_model_dir("qwen2-audio")), device="cpu",
                                                 tokenizer=adapter.tokenizer)
    rows = read_manifest(tones(2))
    for row in rows:
        batch = adapter.prepare([load_audio(row["audio"])], [DEFAULT_INSTRUCTION])
        ours = record(adapter, batch, [str(i) for i in range(adapter.n_layers)])
        inputs = dict(batch.inputs)
        _, cache = bridge.run_with_cache(inputs.pop("input_ids"), **inputs)
        for i in range(adapter.n_layers):
            # the bridge runs eager attention, ours SDPA: equal up to kernel reordering
            torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], ours[str(i)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_encoder_component_records_frames(family, tiny_adapter, tones, tmp_path):
    """--component encoder: the audio encoder's own hidden states, over the frames of real audio."""
    adapter = tiny_adapter(family)
    rows = read_manifest(tones(2))
    trace(adapter, rows, tmp_path / "enc.h5", layers="all", positions="audio", dtype="float32", component="encoder",
          batch_size=1)
    encoder = adapter.module(adapter.encoder_layers_path.rsplit(".", 1)[0])
    with ActivationStore(tmp_path / "enc.h5") as store:
        assert store.attrs["component"] == "encoder"
        assert store.layers == ["embed"] + [str(i) for i in range(len(adapter.encoder_layers))]
        for i, row in enumerate(rows):
            r = store.rows([i])
            ends = store.positions["time_end"][r]
            # the last frame ends at the audio's end (Phi-4's feature extractor drops a final partial hop)
            assert 0 <= store.items["audio_seconds"][i] - ends.max() < adapter.encoder_seconds_per_frame
            assert (store.positions["time_start"][r] < store.items["audio_seconds"][i]).all()
            # independently of nnsight: plain torch hooks on the encoder blocks
            batch = adapter.prepare([load_audio(row["audio"])], ["x"])
            kwargs, spans = adapter.encoder_inputs(batch)
            assert len(r) == len(spans[0].positions)
            if family != "phi4-mm":  # Conformer frames are 80 ms and counted by the processor's rule
                assert len(r) == int(np.ceil(round(store.items["audio_seconds"][i] / adapter.encoder_seconds_per_frame, 6)))
            blocks = adapter.encoder_layers
            with captured({str(k): b for k, b in enumerate(blocks)}, {"embed": blocks[0]}) as seen, torch.no_grad():
                encoder(**kwargs)
            for layer in store.layers:
                np.testing.assert_array_equal(store.read(layer, items=[i]), seen[layer][0, :len(r)].numpy())
