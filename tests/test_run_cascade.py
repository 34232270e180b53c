"""`interp run` and `interp cascade`: complete, resumable predictions; matched backbones agree."""

from __future__ import annotations

import json

import pytest

from interp.manifest import read_manifest

FIELDS = {"id", "task", "system", "snr_db", "output", "prediction", "label", "correct", "n_generated_tokens", "seconds"}


def _read(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_run_writes_complete_predictions_and_resumes(run_cli, tiny_model_dir, demo_manifests, tmp_path):
    from tasks import get_task

    model, data = tiny_model_dir("qwen2-audio"), demo_manifests["clean"]
    rows = read_manifest(data)
    out = tmp_path / "preds.jsonl"
    code, stdout, err = run_cli("run", model, "--data", data, "--out", out, "--limit", "2", "--max-new-tokens", "4",
                                "--batch-size", "2")
    assert code == 0, err
    first = _read(out)
    assert len(first) == 2
    code, stdout, err = run_cli("run", model, "--data", data, "--out", out, "--resume", "--max-new-tokens", "4",
                                "--batch-size", "4")
    assert code == 0, err
    preds = _read(out)
    assert preds[:2] == first
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    for p, r in zip(preds, rows):
        assert FIELDS <= set(p) and p["system"] == model.name
        task = get_task(p["task"])
        assert p["prediction"] in set(task.labels) | {"unparsed"}
        assert p["correct"] == task.is_correct(p["prediction"], r)
        assert 1 <= p["n_generated_tokens"] <= 4
    assert "accuracy" in stdout and "unparsed" in stdout
    code, _, err = run_cli("run", model, "--data", data, "--out", out)
    assert code != 0 and "--resume" in err


def test_run_is_batch_invariant(tiny_adapter, demo_manifests):
    """Left-padded batched generation answers like one item at a time."""
    from cascades.runner import answer_speech

    adapter = tiny_adapter("qwen2-audio")
    rows = read_manifest(demo_manifests["clean"])[:4]
    one = answer_speech(adapter, rows, system="s", batch_size=1, max_new_tokens=5)
    four = answer_speech(adapter, rows, system="s", batch_size=4, max_new_tokens=5)
    assert [p["output"] for p in one] == [p["output"] for p in four]


def test_gold_cascade_with_extracted_backbone_equals_self(run_cli, tiny_model_dir, demo_manifests, tmp_path):
    model, data = tiny_model_dir("qwen2-audio"), demo_manifests["clean"]
    backbone = tmp_path / "llm"
    assert run_cli("models", "extract-llm", model, "--out", backbone)[0] == 0
    a, b = tmp_path / "self.jsonl", tmp_path / "llm.jsonl"
    assert run_cli("cascade", "--transcripts", "gold", "--llm", f"self:{model}", "--data", data, "--out", a,
                   "--max-new-tokens", "6")[0] == 0
    assert run_cli("cascade", "--transcripts", "gold", "--llm", backbone, "--data", data, "--out", b,
                   "--max-new-tokens", "6")[0] == 0
    pa, pb = _read(a), _read(b)
    assert len(pa) == len(read_manifest(data))
    assert [p["output"] for p in pa] == [p["output"] for p in pb]
    assert [p["prediction"] for p in pa] == [p["prediction"] for p in pb]
    assert all(p["transcript"] == r["transcript"] for p, r in zip(pa, read_manifest(data)))
    assert pa[0]["system"] == f"cascade:gold->self:{model.name}"


def test_asr_cascade_reports_wer(run_cli, tiny_model_dir, demo_manifests, tmp_path):
    whisper = tiny_model_dir("whisper")
    model, data = tiny_model_dir("qwen2-audio"), demo_manifests["noisy"][0.0]
    out = tmp_path / "c.jsonl"
    code, stdout, err = run_cli("cascade", "--asr", whisper, "--llm", f"self:{model}", "--data", data, "--out", out,
                                "--max-new-tokens", "4", "--limit", "3")
    assert code == 0, err
    preds = _read(out)
    assert len(preds) == 3 and all("transcript" in p for p in preds)
    assert all(p["snr_db"] == 0.0 for p in preds)
    assert "word error rate" in err


def test_transcripts_from_a_manifest_feed_the_llm(run_cli, tiny_model_dir, demo_manifests, tmp_path):
    model, data = tiny_model_dir("qwen2-audio"), demo_manifests["clean"]
    rows = read_manifest(data)
    alt = tmp_path / "lens.jsonl"
    alt.write_text("".join(json.dumps({"id": r["id"], "transcript": "sports news"}) + "\n" for r in rows))
    out = tmp_path / "c.jsonl"
    assert run_cli("cascade", "--transcripts", alt, "--llm", f"self:{model}", "--data", data, "--out", out,
                   "--max-new-tokens", "2")[0] == 0
    assert {p["transcript"] for p in _read(out)} == {"sports news"}


@pytest.mark.parametrize("case", ["asr_not_whisper", "llm_without_tokenizer", "no_task", "missing_transcript"])
def test_cascade_bad_input(case, run_cli, tiny_model_dir, demo_manifests, tmp_path):
    model, data = tiny_model_dir("qwen2-audio"), demo_manifests["clean"]
    args = ["cascade", "--data", data, "--out", tmp_path / "o.jsonl", "--llm", f"self:{model}"]
    needle = ""
    if case == "asr_not_whisper":
        args += ["--asr", model]
        needle = "not Whisper"
    elif case == "llm_without_tokenizer":
        bare = tmp_path / "bare"
        assert run_cli("models", "extract-llm", model, "--out", bare)[0] == 0
        for f in bare.iterdir():
            if "token" in f.name or f.name == "chat_template.jinja":
                f.unlink()
        args = ["cascade", "--data", data, "--out", tmp_path / "o.jsonl", "--llm", bare, "--transcripts", "gold"]
        needle = "tokenizer"
    else:
        rows = read_manifest(data)
        for r in rows:
            r.pop("task" if case == "no_task" else "transcript")
        bad = tmp_path / "m.jsonl"
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
        args = ["cascade", "--data", bad, "--out", tmp_path / "o.jsonl", "--llm", f"self:{model}", "--transcripts", "gold"]
        needle = "task" if case == "no_task" else "transcript"
    code, _, err = run_cli(*args)
    assert code != 0 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()
