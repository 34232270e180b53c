"""interp's Ultravox against fixie-ai's released code.

tests/data/ultravox_reference holds checkpoint folders saved by fixie's own code (v0.5 at
f4f643b under transformers 4.48.3, v0.6 at 4ab3823 under 4.51.3) and what that code computed
from them: the processor's outputs, the hidden states after every decoder layer at every
position, the last logits and greedy tokens, one item at a time and as a left-padded batch
made by its collator (see the README there). The folders are loaded here without their code,
their base weights named by hub id served from a Hugging Face cache laid out in a temporary
folder, or given as folders.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.errors import InterpError
from interp.models import load_model
from interp.models.ultravox import Ultravox

REF = Path(__file__).parent / "data" / "ultravox_reference"
ATOL = 1e-4
SR = 16000
CHECKPOINTS = [("v0.5", "checkpoint-projector-encoder"), ("v0.6", "checkpoint-projector"), ("v0.6", "checkpoint-full")]

_spec = importlib.util.spec_from_file_location("make_reference", REF / "make_reference.py")
make_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_reference)
WAVES = make_reference.waveforms(REF)
BASES = {make_reference.WHISPER_ID: REF / "base" / "tiny-whisper", make_reference.LLAMA_ID: REF / "base" / "tiny-llama-3"}


def reference(version):
    return json.loads((REF / version / "reference.json").read_text()), load_file(REF / version / "reference.safetensors")


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """The base models in a Hugging Face hub cache, the only place their ids resolve from."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf-cache")
    make_reference.write_cache(REF / "base", cache)
    mp = pytest.MonkeyPatch()
    mp.setattr(constants, "HF_HUB_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def adapters(hf_cache):
    cache = {}

    def load(version, checkpoint, **kw):
        key = (version, checkpoint, tuple(sorted(kw)))
        if key not in cache:
            cache[key] = load_model(REF / version / checkpoint, device="cpu", **kw)
        return cache[key]

    return load


def run(adapter, inputs):
    captured = {}
    hook = adapter.layers[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("last", o))
    try:
        with torch.no_grad():
            out = adapter.model(**inputs, output_hidden_states=True)
    finally:
        hook.remove()
    return out, captured["last"]


@pytest.mark.parametrize("version,checkpoint", CHECKPOINTS)
def test_processor_outputs_equal_the_released_processor(adapters, version, checkpoint):
    adapter = adapters(version, checkpoint)
    meta, ref = reference(version)
    for k, item in enumerate(meta["items"]):
        assert adapter.prompt_text(item["instruction"]) == item["text"]
        out = adapter.processor(text=item["text"], audio=WAVES[item["wave"]], sampling_rate=SR)
        for key in ("input_ids", "attention_mask", "audio_token_start_idx", "audio_token_len", "audio_lens",
                    "audio_batch_size"):
            assert out[key].tolist() == item[key], (item["wave"], key)
        assert list(out["audio_values"].shape) == item["audio_values_shape"]
        torch.testing.assert_close(out["audio_values"][..., ::item["audio_values_stride"]], ref[f"item{k}.audio_values"],
                                   rtol=0, atol=1e-5)
    # what the cases cover: a length that is not whole hops, one under two hops, two 30 s chunks
    waves = {it["wave"]: it for it in meta["items"]}
    assert waves["odd"]["n_samples"] % 160 and waves["tiny"]["n_samples"] < 320
    assert waves["long"]["audio_batch_size"] == [2] and waves["long"]["audio_lens"][0] == 3000


@pytest.mark.parametrize("version,checkpoint", CHECKPOINTS)
def test_hidden_states_equal_the_released_code(adapters, version, checkpoint):
    """Every layer, every position, within 1e-4 in float32: embeddings (audio merged in),
    each block's output (the last one raw and after the final norm) and the last logits."""
    adapter = adapters(version, checkpoint)
    meta, ref = reference(version)
    assert adapter.n_layers == 3
    for k, item in enumerate(meta["items"]):
        inputs = adapter.processor(text=item["text"], audio=WAVES[item["wave"]], sampling_rate=SR)
        out, last = run(adapter, inputs)
        assert len(out.hidden_states) == adapter.n_layers + 1
        for i, h in enumerate(out.hidden_states):
            torch.testing.assert_close(h[0], ref[f"item{k}.hidden.{i}"], rtol=0, atol=ATOL,
                                       msg=lambda m: f"{item['wave']} hidden state {i}: {m}")
        torch.testing.assert_close(last[0], ref[f"item{k}.last_block"], rtol=0, atol=ATOL)
        torch.testing.assert_close(out.logits[0, -1], ref[f"item{k}.last_logits"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("version,checkpoint", CHECKPOINTS[:2])
def test_greedy_generation_equals_the_released_code(adapters, version, checkpoint):
    adapter = adapters(version, checkpoint)
    meta, _ = reference(version)
    eos = adapter.tokenizer.eos_token_id
    for item in meta["items"]:
        inputs = adapter.processor(text=item["text"], audio=WAVES[item["wave"]], sampling_rate=SR)
        with torch.no_grad():
            seq = adapter.model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=eos,
                                         eos_token_id=eos)
        assert seq[0, inputs["input_ids"].shape[1]:].tolist() == item["generated"], item["wave"]


@pytest.mark.parametrize("version,checkpoint", CHECKPOINTS[:2])
def test_padded_batch_equals_the_released_collator(adapters, version, checkpoint):
    """The adapter's left-padded batch is the released collator's, and so are its activations."""
    adapter = adapters(version, checkpoint)
    meta, ref = reference(version)
    items = [meta["items"][k] for k in meta["batch"]["items"]]
    assert meta["batch"]["padding_side"] == "left"
    batch = adapter.prepare([WAVES[it["wave"]] for it in items], [it["instruction"] for it in items],
                            padding_side="left")
    assert batch.token_ids.tolist() == meta["batch"]["input_ids"]
    assert batch.attention_mask.tolist() == meta["batch"]["attention_mask"]
    for key in ("audio_token_start_idx", "audio_token_len", "audio_lens"):
        assert batch.inputs[key].tolist() == meta["batch"][key], key
    for span, start, n in zip(batch.audio, meta["batch"]["audio_token_start_idx"], meta["batch"]["audio_token_len"]):
        np.testing.assert_array_equal(span.positions, np.arange(start, start + n))
    out, last = run(adapter, batch.inputs)
    real = batch.attention_mask.bool()
    for i, h in enumerate(out.hidden_states):
        torch.testing.assert_close(h[real], ref[f"batch.hidden.{i}"][real], rtol=0, atol=ATOL)
    torch.testing.assert_close(last[real], ref["batch.last_block"][real], rtol=0, atol=ATOL)


def test_base_weights_from_folders_equal_those_from_the_cache(adapters):
    meta, ref = reference("v0.6")
    given = adapters("v0.6", "checkpoint-projector", audio_model=BASES[make_reference.WHISPER_ID],
                     text_model=BASES[make_reference.LLAMA_ID])
    cached = adapters("v0.6", "checkpoint-projector")
    for (name, a), b in zip(given.model.state_dict().items(), cached.model.state_dict().values()):
        assert torch.equal(a, b), name
    item = meta["items"][0]
    out, _ = run(given, given.processor(text=item["text"], audio=WAVES[item["wave"]], sampling_rate=SR))
    torch.testing.assert_close(out.hidden_states[-1][0], ref["item0.hidden.3"], rtol=0, atol=ATOL)


def test_the_folders_weights_win_over_the_base_models(adapters):
    """v0.5 ships a fine-tuned encoder: its weights, not the base Whisper's, are the model's."""
    adapter = adapters("v0.5", "checkpoint-projector-encoder")
    folder = load_file(REF / "v0.5" / "checkpoint-projector-encoder" / "model.safetensors")
    base = load_file(BASES[make_reference.WHISPER_ID] / "model.safetensors")
    llama = load_file(BASES[make_reference.LLAMA_ID] / "model.safetensors")
    tower = adapter.model.audio_tower
    assert torch.equal(tower.conv1.weight, folder["audio_tower.conv1.weight"])
    assert not torch.equal(tower.conv1.weight, base["model.encoder.conv1.weight"])
    assert torch.equal(adapter.model.language_model.model.layers[1].mlp.up_proj.weight,
                       llama["model.layers.1.mlp.up_proj.weight"])
    # tied embeddings, as in Llama-3.2-1B: the unembedding is the embedding
    assert adapter.unembed.weight is adapter.module(adapter.embed_path).weight


def test_missing_base_models_give_one_line_naming_them(tmp_path, monkeypatch, run_cli, tones):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    folder = REF / "v0.6" / "checkpoint-projector"
    with pytest.raises(InterpError) as e:
        load_model(folder, device="cpu")
    message = str(e.value)
    assert "\n" not in message
    for needle in ("interp-tests/tiny-whisper", "--audio-model", "interp-tests/tiny-llama-3", "--text-model",
                   str(tmp_path / "empty-cache")):
        assert needle in message
    # only the missing one is named
    with pytest.raises(InterpError) as e:
        load_model(folder, device="cpu", audio_model=BASES[make_reference.WHISPER_ID])
    assert "tiny-llama-3" in str(e.value) and "tiny-whisper" not in str(e.value)
    # the CLI: one line and a non-zero exit; with the folders given, the trace runs
    manifest = tones(2)
    code, _, err = run_cli("trace", folder, "--data", manifest, "--out", tmp_path / "a.h5")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err and "--text-model" in lines[0], err
    code, _, err = run_cli("trace", folder, "--data", manifest, "--out", tmp_path / "a.h5",
                           "--audio-model", BASES[make_reference.WHISPER_ID],
                           "--text-model", BASES[make_reference.LLAMA_ID])
    assert code == 0, err
    # the options belong to checkpoints that name base models
    with pytest.raises(InterpError, match="apply to checkpoints that name base models"):
        load_model(BASES[make_reference.WHISPER_ID], device="cpu", audio_model=BASES[make_reference.WHISPER_ID])


def test_the_checkpoints_own_code_is_never_run(tmp_path, hf_cache):
    folder = Path(shutil.copytree(REF / "v0.6" / "checkpoint-projector", tmp_path / "ck"))
    marker = tmp_path / "code-ran"
    for name in ("ultravox_config.py", "ultravox_model.py", "ultravox_processing.py", "ultravox_pipeline.py"):
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('remote code')\n")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "ultravox_model.UltravoxModel"
    adapter = load_model(folder, device="cpu")
    assert not marker.exists()
    assert type(adapter.model).__module__ == "interp.models.ultravox_modeling"
    assert type(adapter.processor).__module__ == "interp.models.ultravox_modeling"


def test_incomplete_checkpoint_names_the_missing_part(tmp_path, hf_cache):
    folder = Path(shutil.copytree(REF / "v0.5" / "checkpoint-projector-encoder", tmp_path / "ck"))
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("multi_modal_projector.")},
              folder / "model.safetensors")
    with pytest.raises(InterpError, match=r"weights of its projector are missing"):
        load_model(folder, device="cpu")


def test_v06_audio_token_index_and_eos_placeholders(adapters):
    """v0.6 tokenizers hold <|audio|> (its id in the config), but the released processor
    still writes EOS at audio positions, and so does this one."""
    adapter = adapters("v0.6", "checkpoint-projector")
    meta, _ = reference("v0.6")
    tok = adapter.tokenizer
    index = adapter.model.config.audio_token_index
    assert index == tok.convert_tokens_to_ids("<|audio|>") == adapter.processor.audio_token_index == 380
    assert index >= adapter.model.config.text_config.vocab_size  # past the embedding, as in the releases
    item = meta["items"][0]
    ids = item["input_ids"][0]
    start, n = item["audio_token_start_idx"][0], item["audio_token_len"][0]
    assert index not in ids and ids[start:start + n] == [tok.eos_token_id] * n
    assert adapter.processor.audio_token_replacement == tok.eos_token == "<|eot_id|>"
    v05 = adapters("v0.5", "checkpoint-projector-encoder")
    assert v05.model.config.audio_token_index is None and "<|audio|>" not in v05.tokenizer.get_vocab()


@pytest.mark.parametrize("named", [(), ("text",), ("audio", "text")])
def test_saved_folder_reloads_to_the_same_model(adapters, tmp_path, named):
    """save_ultravox writes the released layout; parts named by id are left out and come back from the cache."""
    from interp.models.ultravox_checkpoint import save_ultravox

    adapter = adapters("v0.6", "checkpoint-projector")
    ids = {f"{part}_model_id": make_reference.WHISPER_ID if part == "audio" else make_reference.LLAMA_ID
           for part in named}
    out = save_ultravox(adapter.model, adapter.processor, tmp_path / "saved", **ids)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ultravox" and config["architectures"] == ["UltravoxModel"]
    keys = set(load_file(out / "model.safetensors"))
    assert any(k.startswith("multi_modal_projector.") for k in keys)
    for part, prefix in (("audio", "audio_tower."), ("text", "language_model.")):
        assert (part in named) != any(k.startswith(prefix) for k in keys)
        assert (part in named) != (f"{part}_config" in config)
    assert "language_model.lm_head.weight" not in keys  # tied to the embedding
    meta, ref = reference("v0.6")
    reloaded = load_model(out, device="cpu")
    for k, item in enumerate(meta["items"]):
        out_, _ = run(reloaded, reloaded.processor(text=item["text"], audio=WAVES[item["wave"]], sampling_rate=SR))
        for i, h in enumerate(out_.hidden_states):
            torch.testing.assert_close(h[0], ref[f"item{k}.hidden.{i}"], rtol=0, atol=ATOL)
    assert not list(out.glob(".ultravox-*"))  # the temporary folder is gone


def test_reference_checkpoints_are_as_released():
    """The fixture folders have the released layout: ids where bases are frozen, configs
    without the parts named by id, no code (it is deleted after saving)."""
    for version, checkpoint in CHECKPOINTS:
        folder = REF / version / checkpoint
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "ultravox" and not list(folder.glob("*.py"))
        for part in ("audio", "text"):
            assert (config[f"{part}_model_id"] is None) == (f"{part}_config" in config)
    assert Ultravox.names_base_models
