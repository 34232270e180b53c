"""The Ultravox adapter on tiny checkpoints made by `interp.testing.make_tiny("ultravox")` (interp's own
implementation, saved in the released layout): where audio lands, what time each audio
position covers, chunks of long audio, batching and generation. The implementation itself is
checked against fixie's released code in test_ultravox_reference.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from interp.models import detect_family, load_model
from interp.models.ultravox import Ultravox
from interp.testing import make_tiny
from tests.helpers import captured

SR = 16000


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    cache = {}

    def build(version: str = "v0.6"):
        if version not in cache:
            cache[version] = make_tiny("ultravox", tmp_path_factory.mktemp(f"ultravox-{version}"), seed=0, version=version)
        return cache[version]

    return build


@pytest.fixture(scope="module")
def adapters(tiny_dirs):
    cache = {}

    def load(version: str = "v0.6"):
        if version not in cache:
            cache[version] = load_model(tiny_dirs(version), device="cpu")
        return cache[version]

    return load


def _waves(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in seconds]


def _forward(adapter, batch):
    """hidden_states[0] (the embeddings the decoder sees), logits and the raw last block output."""
    with captured({"last": adapter.layers[-1]}) as seen, torch.no_grad():
        out = adapter.model(**batch.inputs, output_hidden_states=True)
    return out.hidden_states, out.logits, seen["last"]


def _audio_embeddings(adapter, batch):
    """The projected audio, computed independently of the model's forward: one row per encoder window."""
    inputs = batch.inputs
    model = adapter.model
    with torch.no_grad():
        encoded = model.audio_tower(inputs["audio_values"], audio_len=inputs["audio_lens"]).last_hidden_state
        return model.multi_modal_projector(encoded)


def test_tiny_checkpoint_is_a_released_folder_loaded_without_code(tiny_dirs, adapters):
    from interp.models.ultravox_modeling import UltravoxModel, UltravoxProcessor

    folder = tiny_dirs()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "ultravox" and config["architectures"] == ["UltravoxModel"]
    assert config["audio_model_id"] is None and config["text_model_id"] is None
    assert config["projector_ln_mid"] is True and "auto_map" not in config and not list(folder.glob("*.py"))
    assert {"model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    assert detect_family(folder) is Ultravox
    adapter = adapters()
    assert isinstance(adapter, Ultravox)
    assert isinstance(adapter.model, UltravoxModel) and isinstance(adapter.processor, UltravoxProcessor)
    # v0.6: <|audio|> is a tokenizer special token whose id the config records; v0.5 has neither
    assert adapter.model.config.audio_token_index == adapter.tokenizer.convert_tokens_to_ids("<|audio|>")
    old = adapters("v0.5")
    assert old.model.config.audio_token_index is None and "<|audio|>" not in old.tokenizer.get_vocab()


def test_module_paths_resolve(adapters):
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

    adapter = adapters()
    model = adapter.model
    assert isinstance(model.language_model, LlamaForCausalLM)
    assert adapter.n_layers == 4 and all(isinstance(layer, LlamaDecoderLayer) for layer in adapter.layers)
    assert adapter.layers is model.language_model.model.layers
    assert isinstance(adapter.final_norm, LlamaRMSNorm) and adapter.final_norm is model.language_model.model.norm
    assert adapter.unembed is model.language_model.lm_head
    assert adapter.module(adapter.embed_path) is model.language_model.get_input_embeddings()
    assert adapter.encoder_layers is model.audio_tower.layers and len(adapter.encoder_layers) == 2
    assert adapter.d_model == 64
    assert adapter.envoy(adapter.layers_path + ".3") is not None


@pytest.mark.parametrize("side", ["right", "left"])
def test_audio_lands_exactly_at_the_audio_spans(adapters, side):
    adapter = adapters()
    waves = _waves([1.3, 2.9])
    batch = adapter.prepare(waves, ["Hi", "What is said?"], padding_side=side)
    hs, _, _ = _forward(adapter, batch)
    embeds = _audio_embeddings(adapter, batch)
    token_embeds = adapter.module(adapter.embed_path)(batch.token_ids)
    width = batch.token_ids.shape[1]
    for i, span in enumerate(batch.audio):
        pos = torch.from_numpy(span.positions)
        assert len(pos) == math.ceil(math.ceil(len(waves[i]) / 160) / 16)
        assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + len(pos)))
        torch.testing.assert_close(hs[0][i, pos], embeds[i, :len(pos)], rtol=0, atol=0)
        text = torch.ones(width, dtype=torch.bool)
        text[pos] = False
        torch.testing.assert_close(hs[0][i, text], token_embeds[i, text], rtol=0, atol=0)
        real = batch.attention_mask[i].bool()
        assert real[pos].all()
        # padding is on the requested side
        assert bool(real[0] if side == "right" else real[-1])
    assert not bool(batch.attention_mask[0, -1] if side == "right" else batch.attention_mask[0, 0])
    # changing one item's audio changes its embeddings exactly at its audio positions
    other = adapter.prepare([_waves([1.3], seed=7)[0], waves[1]], ["Hi", "What is said?"], padding_side=side)
    hs2, _, _ = _forward(adapter, other)
    changed = (hs[0] != hs2[0]).any(-1)
    np.testing.assert_array_equal(np.flatnonzero(changed[0].numpy()), batch.audio[0].positions)
    assert not changed[1].any()


def test_left_padding_shifts_the_start_index(adapters):
    adapter = adapters()
    waves = _waves([0.7, 2.5])
    right = adapter.prepare(waves, ["Hi", "Hi there, what is said?"], padding_side="right")
    left = adapter.prepare(waves, ["Hi", "Hi there, what is said?"], padding_side="left")
    width = right.token_ids.shape[1]
    for i in range(2):
        pad = width - int(right.attention_mask[i].sum())
        np.testing.assert_array_equal(left.audio[i].positions, right.audio[i].positions + pad)
        np.testing.assert_array_equal(left.audio[i].time_end, right.audio[i].time_end)
    assert (left.inputs["audio_token_start_idx"] != right.inputs["audio_token_start_idx"]).any()


@pytest.mark.parametrize("seconds", [0.3, 1.0, 1.37, 2.9, 7.77])
def test_position_counts_and_times_match_the_time_math(adapters, seconds):
    adapter = adapters()
    batch = adapter.prepare(_waves([seconds]), ["Hi"])
    span = batch.audio[0]
    mel_frames = math.ceil(int(seconds * SR) / 160)  # 10 ms hop, padded to whole hops
    n = math.ceil(mel_frames / 16)  # 2 mel frames per encoder frame, 8 encoder frames per position
    assert len(span.positions) == n == int(batch.inputs["audio_token_len"][0])
    assert (n - 1) * 0.16 < seconds <= n * 0.16 + 1e-9
    np.testing.assert_allclose(span.time_start, np.arange(n) * 0.16)
    np.testing.assert_allclose(span.time_end[:-1], (np.arange(n - 1) + 1) * 0.16)
    assert span.time_end[-1] == pytest.approx(int(seconds * SR) / SR)


def test_audio_longer_than_30s_is_chunked_not_truncated(adapters):
    adapter = adapters()
    waves = _waves([35.0, 1.0])
    batch = adapter.prepare(waves, ["Hi", "Hi"])
    assert batch.truncated == [False, False]
    assert batch.inputs["audio_batch_size"].tolist() == [2, 1]
    span = batch.audio[0]
    assert len(span.positions) == 188 + 32  # ceil(3000 / 16) + ceil(500 / 16)
    assert np.all(np.diff(span.positions) == 1)
    assert span.time_end[187] == pytest.approx(30.0) and span.time_start[188] == pytest.approx(30.0)
    assert span.time_end[-1] == pytest.approx(35.0)
    hs, _, _ = _forward(adapter, batch)
    embeds = _audio_embeddings(adapter, batch)
    pos = torch.from_numpy(span.positions)
    torch.testing.assert_close(hs[0][0, pos[:188]], embeds[0, :188], rtol=0, atol=0)
    torch.testing.assert_close(hs[0][0, pos[188:]], embeds[1, :32], rtol=0, atol=0)
    torch.testing.assert_close(hs[0][1, torch.from_numpy(batch.audio[1].positions)], embeds[2, :7], rtol=0, atol=0)


def test_final_norm_and_unembed_of_last_block_give_the_logits(adapters):
    adapter = adapters()
    batch = adapter.prepare(_waves([1.1, 2.0]), ["Hi", "What is said?"])
    hs, logits, last = _forward(adapter, batch)
    with torch.no_grad():
        torch.testing.assert_close(adapter.unembed(adapter.final_norm(last)), logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adapter.final_norm(last), hs[-1], rtol=0, atol=0)


def test_padded_batch_equals_batch_of_one(adapters, monkeypatch):
    adapter = adapters()
    monkeypatch.setattr(Ultravox, "batch_invariant_audio", True)
    # 1.37 s: 137 mel frames, 69 encoder frames, so its last audio position holds 5 real frames
    waves = _waves([1.37, 2.9])
    alone = adapter.prepare(waves[:1], ["Hi"])
    hs_alone, _, _ = _forward(adapter, alone)
    n = int(alone.attention_mask[0].sum())
    together = adapter.prepare(waves, ["Hi", "What is said?"])
    hs_together, _, _ = _forward(adapter, together)
    np.testing.assert_array_equal(alone.audio[0].positions, together.audio[0].positions)
    for a, b in zip(hs_alone, hs_together):
        torch.testing.assert_close(a[0, :n], b[0, :n], rtol=1e-5, atol=1e-5)
    # The real collator pads mel frames to the longest item only, so alone and in a batch
    # the item's encoder sees different things past its end (its odd last mel frame's
    # convolution neighbour; the padding frames stacked into its last audio position).
    # That is what the adapter's padding to whole audio positions avoids.
    monkeypatch.setattr(Ultravox, "batch_invariant_audio", False)
    hs_real_alone, _, _ = _forward(adapter, adapter.prepare(waves[:1], ["Hi"]))
    hs_real, _, _ = _forward(adapter, adapter.prepare(waves, ["Hi", "What is said?"]))
    last = int(together.audio[0].positions[-1])
    assert not torch.allclose(hs_real_alone[0][0, last], hs_real[0][0, last], atol=1e-3)


def test_encoder_frames_cover_the_audio(adapters):
    adapter = adapters()
    waves = _waves([1.0, 2.55])
    batch = adapter.prepare(waves, ["Hi", "Hi"])
    kwargs, spans = adapter.encoder_inputs(batch)
    with torch.no_grad():
        frames = adapter.model.audio_tower(**kwargs).last_hidden_state
    for w, span in zip(waves, spans):
        d = len(w) / SR
        assert len(span.positions) == math.ceil(d / 0.02) <= frames.shape[1]
        assert span.time_start[-1] < d and span.time_end[-1] == pytest.approx(d)


def test_v04_projector_puts_its_second_norm_after_the_last_linear():
    """v0.4.x configs (projector_ln_mid false), which released v0.4 checkpoints still load with."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from interp.models.ultravox_checkpoint import build_ultravox

    torch.manual_seed(0)
    encoder = WhisperEncoder(WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2,
                                           encoder_ffn_dim=32, num_mel_bins=80))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    model = build_ultravox(encoder, llama, hidden_size=40, projector_ln_mid=False, seed=3)
    proj = model.multi_modal_projector
    assert isinstance(proj.ln_mid, torch.nn.Identity) and proj.ln_post.weight.shape == (24,)
    assert torch.all(proj.ln_pre.weight == 0.4) and torch.all(proj.ln_post.weight == 0.4)

    def rms(x, w, eps=1e-6):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    frames = torch.randn(2, 13, 16)
    stacked = torch.cat([frames, torch.zeros(2, 3, 16)], 1).reshape(2, 2, 128)  # 13 frames -> 2 positions
    h = proj.linear_1(rms(stacked, proj.ln_pre.weight))
    h = torch.nn.functional.silu(h[..., 20:]) * h[..., :20]
    expected = rms(proj.linear_2(h), proj.ln_post.weight)
    with torch.no_grad():
        torch.testing.assert_close(proj(frames), expected, rtol=1e-5, atol=1e-5)
    # the encoder weights are copied in, the language model used as given
    assert torch.equal(model.audio_tower.conv1.weight, encoder.conv1.weight)
    assert model.language_model is llama


def test_prompt_holds_the_audio_placeholder_in_a_chat_turn(adapters):
    adapter = adapters()
    text = adapter.prompt_text("What is said?")
    assert text.count("<|audio|>") == 1 and text.index("What is said?") < text.index("<|audio|>")
    assert text.startswith("<|begin_of_text|>") and text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_generate_puts_the_audio_in_on_the_prefill_step(adapters):
    adapter = adapters()
    batch = adapter.prepare(_waves([1.3]), ["What is said?"])
    text_only = {k: batch.inputs[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        logits = adapter.model(**batch.inputs).logits[0, -1]
        assert not torch.allclose(adapter.model(**text_only).logits[0, -1], logits, atol=1e-4)
        out = adapter.model.generate(**batch.inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
    width = batch.token_ids.shape[1]
    assert out.sequences.shape == (1, width + 3)
    torch.testing.assert_close(out.logits[0][0], logits, rtol=1e-5, atol=1e-5)
    assert int(out.sequences[0, width]) == int(logits.argmax())
