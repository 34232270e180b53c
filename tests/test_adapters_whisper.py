"""The Whisper adapter (control model for encoder probing; ASR of cascades) on a tiny checkpoint
(transcription itself: tests/test_asr.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from interp.models import detect_family, load_model
from interp.models.whisper import Whisper
from interp.testing import make_tiny
from tests.helpers import captured

SR = 16000


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny("whisper", tmp_path_factory.mktemp("whisper"), seed=0)


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    return load_model(tiny_dir, device="cpu")


def _waves(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in seconds]


def test_tiny_checkpoint_loads_offline_with_its_processor(tiny_dir, adapter):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    assert detect_family(tiny_dir) is Whisper and isinstance(adapter, Whisper)
    assert isinstance(adapter.model, WhisperForConditionalGeneration)
    assert isinstance(adapter.processor, WhisperProcessor)
    assert isinstance(adapter.processor.feature_extractor, WhisperFeatureExtractor)
    assert adapter.processor.feature_extractor.feature_size == adapter.model.config.num_mel_bins == 80
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    tok = adapter.tokenizer
    assert generation["lang_to_id"]["<|en|>"] == tok.convert_tokens_to_ids("<|en|>")
    assert generation["task_to_id"]["transcribe"] == tok.convert_tokens_to_ids("<|transcribe|>")
    assert generation["no_timestamps_token_id"] == tok.convert_tokens_to_ids("<|notimestamps|>")
    assert generation["decoder_start_token_id"] == tok.convert_tokens_to_ids("<|startoftranscript|>")
    for special in ("<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|nospeech|>", "<|startofprev|>"):
        assert tok.convert_tokens_to_ids(special) in tok.all_special_ids


def test_module_paths_resolve(adapter):
    from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer, WhisperEncoderLayer

    model = adapter.model
    assert adapter.layers is model.model.decoder.layers and adapter.n_layers == 2
    assert all(isinstance(layer, WhisperDecoderLayer) for layer in adapter.layers)
    assert adapter.encoder_layers is model.model.encoder.layers
    assert all(isinstance(layer, WhisperEncoderLayer) for layer in adapter.encoder_layers)
    assert adapter.final_norm is model.model.decoder.layer_norm
    assert adapter.unembed is model.proj_out and adapter.unembed is model.get_output_embeddings()
    assert adapter.module(adapter.embed_path) is model.model.decoder.embed_tokens
    assert adapter.d_model == 32


@pytest.mark.parametrize("side", ["right", "left"])
def test_prepare_gives_the_transcription_prompt_and_no_decoder_audio(adapter, side):
    waves = _waves([1.3, 2.9])
    batch = adapter.prepare(waves, ["Hi", "What is said? Answer in one word."], padding_side=side)
    tok = adapter.tokenizer
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    assert batch.token_ids.tolist() == [prompt, prompt]
    assert batch.inputs["decoder_input_ids"].tolist() == [prompt, prompt]
    assert batch.attention_mask.all()
    assert batch.inputs["input_features"].shape == (2, 80, 3000)
    assert all(len(span.positions) == 0 for span in batch.audio)
    assert batch.durations == pytest.approx([1.3, 2.9]) and batch.truncated == [False, False]


def test_audio_enters_through_the_encoder_only(adapter):
    waves = _waves([1.3, 2.9])
    batch = adapter.prepare(waves, ["", ""])
    other = adapter.prepare([_waves([1.3], seed=5)[0], waves[1]], ["", ""])
    with torch.no_grad():
        a = adapter.model(**batch.inputs, output_hidden_states=True)
        b = adapter.model(**other.inputs, output_hidden_states=True)
    # the decoder's embeddings are the prompt's (its AudioSpans are empty) ...
    assert torch.equal(a.decoder_hidden_states[0], b.decoder_hidden_states[0])
    # ... the audio reaches the decoder by cross-attention, and only that item's
    assert not torch.allclose(a.logits[0], b.logits[0])
    assert torch.equal(a.logits[1], b.logits[1])
    assert not torch.allclose(a.encoder_last_hidden_state[0], b.encoder_last_hidden_state[0])
    assert torch.equal(a.encoder_last_hidden_state[1], b.encoder_last_hidden_state[1])


def test_final_norm_and_unembed_of_last_block_give_the_logits(adapter):
    batch = adapter.prepare(_waves([1.1, 2.0]), ["", ""])
    with captured({"last": adapter.layers[-1]}) as seen, torch.no_grad():
        out = adapter.model(**batch.inputs, output_hidden_states=True)
    with torch.no_grad():
        torch.testing.assert_close(adapter.unembed(adapter.final_norm(seen["last"])), out.logits,
                                   rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adapter.final_norm(seen["last"]), out.decoder_hidden_states[-1], rtol=0, atol=0)


@pytest.mark.parametrize("seconds", [0.25, 1.3, 2.97, 29.99, 30.0, 34.0])
def test_encoder_frames_cover_the_audio(adapter, seconds):
    batch = adapter.prepare(_waves([seconds, 1.0]), ["", ""])
    kwargs, spans = adapter.encoder_inputs(batch)
    assert set(kwargs) == {"input_features"}
    span = spans[0]
    covered = min(seconds, 30.0)
    assert len(span.positions) == min(1500, math.ceil(round(covered / 0.02, 6)))
    np.testing.assert_array_equal(span.positions, np.arange(len(span.positions)))
    np.testing.assert_allclose(span.time_start, np.arange(len(span.positions)) * 0.02)
    assert span.time_start[-1] < covered and span.time_end[-1] == pytest.approx(covered)
    assert batch.truncated[0] == (seconds > 30.0)
    encoder = adapter.module(adapter.encoder_layers_path.rsplit(".", 1)[0])
    inputs = {}
    handle = adapter.encoder_layers[0].register_forward_hook(
        lambda m, args, kw, o: inputs.__setitem__("layer0", args[0] if args else kw["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad():
            out = encoder(**kwargs, output_hidden_states=True)
    finally:
        handle.remove()
    assert out.last_hidden_state.shape[1] == 1500 >= len(span.positions)
    # `embed` of the encoder is the input of its layer 0
    assert torch.equal(out.hidden_states[0], inputs["layer0"])


# ---- English-only checkpoints and generation parity ------------------------------------------


@pytest.fixture(scope="module")
def english_only(tmp_path_factory):
    return load_model(make_tiny("whisper", tmp_path_factory.mktemp("whisper-en"), seed=1, english_only=True), device="cpu")


def _prompt_generate_sees(adapter, features, **kwargs):
    """The decoder prompt `generate` itself builds (the first thing its streamer is given)."""
    from interp.forward import _Collect

    seen = _Collect()
    with torch.no_grad():
        adapter.model.generate(features, max_new_tokens=2, streamer=seen, **kwargs)
    return seen.chunks[0]


@pytest.mark.parametrize("which", ["multilingual", "english_only"])
def test_prompt_is_the_one_generate_builds(adapter, english_only, which):
    whisper = adapter if which == "multilingual" else english_only
    batch = whisper.prepare(_waves([1.2, 2.0]), ["", ""])
    sees = _prompt_generate_sees(whisper, batch.inputs["input_features"], **whisper.generate_kwargs())
    assert torch.equal(batch.token_ids, sees)
    tokens = whisper.tokenizer.convert_ids_to_tokens(batch.token_ids[0].tolist())
    if which == "english_only":
        assert not whisper.is_multilingual and whisper.generate_kwargs() == {}
        assert tokens == ["<|startoftranscript|>", "<|notimestamps|>"]
        assert whisper.prompt_text("ignored") == "<|startoftranscript|><|notimestamps|>"
        # with no arguments at all, generate prompts the same way
        assert torch.equal(_prompt_generate_sees(whisper, batch.inputs["input_features"]), sees)
        with pytest.raises(ValueError, match="English-only"):  # why transcribe must not force a language
            whisper.model.generate(batch.inputs["input_features"], language="en", task="transcribe", max_new_tokens=2)
    else:
        assert whisper.is_multilingual
        assert tokens == ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


@pytest.mark.parametrize("which", ["multilingual", "english_only"])
def test_interp_run_generates_what_generate_does(adapter, english_only, which):
    """`interp.run(generate=True)`, plain and through an nnsight trace, returns the tokens of
    Whisper's own `generate`, none dropped (its generate returns the new tokens alone)."""
    from interp.forward import run
    from interp.interventions import Record

    whisper = adapter if which == "multilingual" else english_only
    batch = whisper.prepare(_waves([1.2, 2.0, 0.7], seed=4), ["", "", ""])
    with torch.no_grad():
        plain = whisper.model.generate(batch.inputs["input_features"], max_new_tokens=6, **whisper.generate_kwargs())
    assert plain.shape[1] > 0
    for interventions in ([], [Record(layers=[0], positions="all")]):
        result = run(whisper, batch, interventions, generate=True, max_new_tokens=6)
        assert torch.equal(result.new_tokens, plain), interventions
        assert torch.equal(result.sequences, torch.cat([batch.token_ids, plain], dim=1))


def test_streamed_tokens_are_cut_like_whisper_generate(english_only):
    """A streamer sees end-of-text and the padding after it; Whisper's generate drops both and
    pads rows to the longest."""
    whisper = english_only
    batch = whisper.prepare(_waves([1.0, 1.0]), ["", ""])
    eos = whisper.model.generation_config.eos_token_id
    prompt = batch.token_ids
    steps = torch.tensor([[5, eos, eos, eos], [5, 6, 7, eos]])
    seq, new = whisper.generated(torch.cat([prompt, steps], dim=1), batch, streamed=True)
    assert new.tolist() == [[5, eos, eos], [5, 6, 7]]
    assert torch.equal(seq, torch.cat([prompt, new], dim=1))
    seq, new = whisper.generated(torch.tensor([[9, 8], [7, eos]]), batch, streamed=False)
    assert new.tolist() == [[9, 8], [7, eos]] and torch.equal(seq[:, :2], prompt)


def test_lens_reads_the_english_only_prompt(english_only, tmp_path):
    from interp.audio import write_wav
    from interp.analysis.lens import lens_live

    write_wav(tmp_path / "a.wav", _waves([1.0])[0], SR)
    result = lens_live(english_only, [{"id": "a", "audio": str(tmp_path / "a.wav"), "transcript": "the team"}],
                       layers="all")
    assert result.items[0].index.tolist() == [0, 1]  # <|startoftranscript|><|notimestamps|>


def test_cascade_with_an_english_only_asr(run_cli, english_only, tiny_model_dir, demo_manifests, tmp_path):
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli("cascade", "--asr", english_only.path, "--llm", f"self:{tiny_model_dir('qwen2-audio')}",
                           "--data", demo_manifests["clean"], "--out", out, "--max-new-tokens", "2", "--limit", "2")
    assert code == 0 and "Traceback" not in err, err
    assert len(out.read_text().splitlines()) == 2
