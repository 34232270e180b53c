"""Confounds between the speech side and the cascade side of a comparison: decoding, dtype, the
prompt format of the text LLM, and whether a cascade really shares the speech LLM's backbone.

The decoding tests use a tiny Audio Flamingo 3 whose generation_config ships penalties (the
released checkpoint ships repetition_penalty 1.05; a larger one here so the tiny model's output
visibly changes), and check both sides against a hand-written argmax loop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from interp.errors import InterpError
from interp.manifest import read_manifest

SHIPPED = {"repetition_penalty": 1.8, "no_repeat_ngram_size": 2}
N_NEW = 10


def _read(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def penalised_af3(tiny_model_dir, tmp_path_factory):
    """A tiny Audio Flamingo 3 folder whose generation_config.json ships penalties."""
    out = Path(shutil.copytree(tiny_model_dir("audioflamingo3"), tmp_path_factory.mktemp("af3") / "ckpt"))
    cfg_file = out / "generation_config.json"
    cfg_file.write_text(json.dumps(json.loads(cfg_file.read_text()) | SHIPPED))
    return out


def _argmax_loop(model, inputs: dict, n: int, stop: set[int]) -> list[int]:
    """Greedy decoding by hand: the argmax of a full forward pass, one token at a time."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(**{**inputs, "input_ids": ids, "attention_mask": mask}).logits
            tok = int(logits[0, -1].argmax())
            new.append(tok)
            if tok in stop:
                break
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
    return new


def test_speech_side_decodes_greedily_whatever_the_checkpoint_ships(penalised_af3, demo_manifests):
    import interp
    from cascades.runner import answer_speech, stop_ids
    from interp.audio import load_audio
    from interp.models import load_model
    from tasks import get_task

    adapter = load_model(penalised_af3, device="cpu")
    assert adapter.model.generation_config.repetition_penalty == SHIPPED["repetition_penalty"]
    row = read_manifest(demo_manifests["clean"])[0]
    batch = adapter.prepare([load_audio(row["audio"], 16000)], [get_task(row["task"]).speech_prompt(row)])
    stop = stop_ids(adapter.tokenizer, adapter.model)
    want = _argmax_loop(adapter.model, batch.inputs, N_NEW, stop)
    with torch.no_grad():  # what the checkpoint's own settings give: the confound the test guards against
        shipped = adapter.model.generate(**batch.inputs, max_new_tokens=N_NEW, do_sample=False)[0, batch.token_ids.shape[1]:]
    assert shipped.tolist() != want
    got = interp.run(adapter, batch, generate=True, max_new_tokens=N_NEW)
    assert got.new_tokens[0].tolist()[:len(want)] == want
    assert got.decoding["strategy"] == "greedy" and got.decoding["repetition_penalty"] == 1.0
    pred = answer_speech(adapter, [row], system="af3", max_new_tokens=N_NEW)[0]
    assert pred["output"] == adapter.tokenizer.decode(want, skip_special_tokens=True).strip()
    assert pred["decoding"] == {"strategy": "greedy", "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0,
                                "no_repeat_ngram_size": 0, "max_new_tokens": N_NEW, "dtype": "float32"}


def test_text_side_decodes_greedily_and_records_the_same_settings(penalised_af3, run_cli, demo_manifests, tmp_path):
    from cascades.runner import stop_ids
    from cascades.textllm import TextLLM

    backbone = tmp_path / "llm"
    assert run_cli("models", "extract-llm", penalised_af3, "--out", backbone)[0] == 0
    llm = TextLLM.from_path(backbone)
    assert llm.model.generation_config.repetition_penalty == SHIPPED["repetition_penalty"]
    prompt = "Is this review positive or negative? the film was a joy from start to end"
    want = _argmax_loop(llm.model, llm.encode([prompt]), N_NEW, stop_ids(llm.tokenizer, llm.model))
    (text, n), = llm.generate([prompt], N_NEW)[0]
    assert text == llm.tokenizer.decode(want, skip_special_tokens=True).strip() and n == len(want)

    data = demo_manifests["clean"]
    speech, cascade = tmp_path / "speech.jsonl", tmp_path / "cascade.jsonl"
    assert run_cli("run", penalised_af3, "--data", data, "--out", speech, "--max-new-tokens", "4", "--limit", "2")[0] == 0
    assert run_cli("cascade", "--transcripts", "gold", "--llm", backbone, "--data", data, "--out", cascade,
                   "--max-new-tokens", "4", "--limit", "2")[0] == 0
    rows = _read(speech) + _read(cascade)
    assert all(r["decoding"] == rows[0]["decoding"] for r in rows)  # both sides decoded alike
    code, out, err = run_cli("compare", speech, cascade, "--out", tmp_path / "rep", "--resamples", "10")
    assert code == 0 and "decoded differently" not in out + err


def test_compare_warns_when_systems_were_decoded_differently(tmp_path, run_cli):
    from cascades.compare import compare_files

    base = {"strategy": "greedy", "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0, "max_new_tokens": 32, "dtype": "bfloat16"}
    files = []
    for name, decoding in (("a", base), ("b", base | {"repetition_penalty": 1.05, "dtype": "float32"}), ("c", base)):
        f = tmp_path / f"{name}.jsonl"
        f.write_text("".join(json.dumps({"id": str(i), "prediction": "x" if i % 2 else "y", "label": "x",
                                         "decoding": decoding}) + "\n" for i in range(6)))
        files.append(f)
    report = compare_files(files, n_resamples=10)
    assert len(report.warnings) == 2
    assert all("'b'" in w and ("repetition_penalty 1.0 vs 1.05" in w or "repetition_penalty 1.05 vs 1.0" in w)
               for w in report.warnings)
    assert all("dtype" in w for w in report.warnings)
    code, out, err = run_cli("compare", *files, "--out", tmp_path / "rep", "--resamples", "10")
    assert code == 0 and "decoded differently" in out + err
    assert "decoded differently" in (tmp_path / "rep" / "report.md").read_text()
    assert compare_files(files[::2], n_resamples=10).warnings == []


def test_cascade_model_dtype_applies_to_the_llm_and_is_recorded(run_cli, tiny_model_dir, demo_manifests, tmp_path):
    from cascades.textllm import TextLLM
    from interp.models.base import resolve_dtype

    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype(None, "cuda:1") == torch.bfloat16 and resolve_dtype("float16", "cpu") == torch.float16
    model = tiny_model_dir("qwen2-audio")
    backbone = tmp_path / "llm"
    assert run_cli("models", "extract-llm", model, "--out", backbone)[0] == 0
    assert TextLLM.from_path(backbone).model.dtype == torch.float32  # the auto rule on CPU, as for speech LLMs
    assert TextLLM.from_path(backbone, dtype="bfloat16").model.dtype == torch.bfloat16
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli("cascade", "--transcripts", "gold", "--llm", backbone, "--data", demo_manifests["clean"],
                           "--out", out, "--max-new-tokens", "2", "--limit", "2", "--model-dtype", "bfloat16")
    assert code == 0, err
    assert {r["decoding"]["dtype"] for r in _read(out)} == {"bfloat16"}


def test_instruct_llm_without_chat_format_is_an_error_unless_raw_prompt(run_cli, tiny_model_dir, demo_manifests,
                                                                        tmp_path):
    model = tiny_model_dir("qwen2-audio")
    bare = tmp_path / "llm"
    assert run_cli("models", "extract-llm", model, "--out", bare)[0] == 0
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = bare / "tokenizer_config.json"
    cfg_file.write_text(json.dumps({k: v for k, v in json.loads(cfg_file.read_text()).items() if k != "chat_template"}))
    args = ["cascade", "--transcripts", "gold", "--llm", bare, "--data", demo_manifests["clean"], "--max-new-tokens",
            "2", "--limit", "2"]
    code, out, err = run_cli(*args, "--out", tmp_path / "a.jsonl")
    assert code != 0 and "no chat format" in err and "--raw-prompt" in err and "Traceback" not in err
    assert not (tmp_path / "a.jsonl").exists()
    code, _, err = run_cli(*args, "--out", tmp_path / "b.jsonl", "--raw-prompt")
    assert code == 0, err


@pytest.fixture(scope="module")
def mistral_llm(tmp_path_factory):
    """A tiny Mistral causal LM whose tokenizer is a real tekken.json shipped with mistral-common."""
    pytest.importorskip("mistral_common")
    import mistral_common
    from transformers import MistralConfig, MistralForCausalLM

    out = tmp_path_factory.mktemp("mistral") / "llm"
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(vocab_size=131072, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
                                     pad_token_id=11)).save_pretrained(out)
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json", out / "tekken.json")
    return out


def test_text_side_builds_mistral_instruct_format_through_mistral_common(mistral_llm):
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from cascades.textllm import TextLLM

    llm = TextLLM.from_path(mistral_llm)
    assert llm.chat_format == "mistral-common"
    reference = MistralTokenizer.from_file(str(mistral_llm / "tekken.json"))
    texts = ["is this positive? what a lovely day", "topic?"]
    enc = llm.encode(texts)
    for row, mask, text in zip(enc["input_ids"], enc["attention_mask"], texts):
        want = reference.encode_chat_completion(ChatCompletionRequest(messages=[UserMessage(content=text)])).tokens
        assert row[mask.bool()].tolist() == want  # <s>[INST] ... [/INST], left-padded
    answers, decoding = llm.generate(texts, 3)
    assert len(answers) == 2 and decoding["strategy"] == "greedy"


def test_list_matched_says_qwen2_audio_needs_self(run_cli):
    code, out, err = run_cli("cascade", "--list-matched")
    assert code == 0
    line = next(l for l in out.splitlines() if "Qwen2-Audio-7B" in l)
    assert "NO" in line and "4096" in out and "152064" in out and "self:" in out


def test_matched_cascade_needs_the_speech_llms_backbone(run_cli, tiny_model_dir, demo_manifests, tmp_path):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    model = tiny_model_dir("qwen2-audio")
    same = tmp_path / "same"
    assert run_cli("models", "extract-llm", model, "--out", same)[0] == 0
    other = tmp_path / "other"  # a Qwen2 LLM of another shape with the same tokenizer, like Qwen2-7B-Instruct
    tok = AutoTokenizer.from_pretrained(same)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    tok.save_pretrained(other)
    args = ["cascade", "--transcripts", "gold", "--data", demo_manifests["clean"], "--max-new-tokens", "2", "--limit",
            "2", "--matched-to", model]
    code, _, err = run_cli(*args, "--llm", other, "--out", tmp_path / "o.jsonl")
    assert code != 0 and "not" in err and "backbone" in err and "hidden_size 32 vs 64" in err and "self:" in err
    assert not (tmp_path / "o.jsonl").exists()
    code, _, err = run_cli(*args, "--llm", same, "--out", tmp_path / "s.jsonl")
    assert code == 0, err
    assert {r["matched_to"] for r in _read(tmp_path / "s.jsonl")} == {model.name}
