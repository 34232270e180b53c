"""`interp trace` and `interp models` as a user meets them, bad input included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from interp.store import ActivationStore
from tests.helpers import one_line_error


def test_models_list_and_make_tiny(run_cli, tmp_path):
    code, out, _ = run_cli("models")
    assert code == 0 and "qwen2-audio" in out
    code, _, err = run_cli("models", "make-tiny", "qwen2-audio", "--out", tmp_path / "m")
    assert code == 0 and (tmp_path / "m" / "config.json").is_file()
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "m")
    AutoProcessor.from_pretrained(tmp_path / "m")
    one_line_error(*run_cli("models", "make-tiny", "nope", "--out", tmp_path / "x")[::2], "unknown model family", "qwen2-audio")


def test_trace_cli_end_to_end_and_overwrite_rules(run_cli, tiny_model_dir, tones, tmp_path):
    model, manifest, out = tiny_model_dir("qwen2-audio"), tones(3), tmp_path / "acts.h5"
    code, _, err = run_cli("trace", model, "--data", manifest, "--out", out, "--layers", "0,2", "--limit", "2")
    assert code == 0, err
    with ActivationStore(out) as s:
        assert s.n_items == 2 and s.layers == ["0", "2"] and s.attrs["positions"] == "audio"
        assert s.attrs["command"].startswith("interp trace")
        assert json.loads(s.attrs["library_versions"])["transformers"]
    before = out.read_bytes()
    one_line_error(*run_cli("trace", model, "--data", manifest, "--out", out)[::2], "--resume", "--overwrite")
    assert out.read_bytes() == before
    code, _, err = run_cli("trace", model, "--data", manifest, "--out", out, "--layers", "0,2", "--resume")
    assert code == 0, err
    with ActivationStore(out) as s:
        assert s.n_items == 3
    one_line_error(*run_cli("trace", model, "--data", manifest, "--out", out, "--layers", "1", "--resume")[::2], "layers")
    assert run_cli("trace", model, "--data", manifest, "--out", out, "--layers", "1", "--overwrite")[0] == 0


def _manifest(tmp_path, rows, raw=None):
    p = tmp_path / "m.jsonl"
    p.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("case,needles", [
    ("not_json", ["m.jsonl:2", "not valid JSON"]),
    ("no_audio", ["m.jsonl:1", "'audio'"]),
    ("duplicate", ["duplicate id 'a'"]),
    ("missing_file", ["not found"]),
    ("unreadable", ["cannot read audio"]),
    ("empty", ["empty"]),
    ("silent", ["silent"]),
    ("nan", ["NaN"]),
])
def test_bad_manifests_and_audio(case, needles, run_cli, tiny_model_dir, tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    bad = tmp_path / "bad.wav"
    row = {"id": "a", "audio": str(bad)}
    if case == "not_json":
        m = _manifest(tmp_path, None, raw=json.dumps({"id": "x", "audio": str(good)}) + "\n{oops\n")
    elif case == "no_audio":
        m = _manifest(tmp_path, [{"id": "a"}])
    elif case == "duplicate":
        m = _manifest(tmp_path, [{"id": "a", "audio": str(good)}, {"id": "a", "audio": str(good)}])
    else:
        if case == "unreadable":
            bad.write_bytes(b"this is not audio")
        elif case == "empty":
            sf.write(bad, np.zeros(0, np.float32), 16000)
        elif case == "silent":
            sf.write(bad, np.zeros(16000, np.float32), 16000)
        elif case == "nan":
            sf.write(bad, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
        m = _manifest(tmp_path, [row])
    out = tmp_path / "acts.h5"
    code, _, err = run_cli("trace", tiny_model_dir("qwen2-audio"), "--data", m, "--out", out)
    one_line_error(code, err, *needles)
    if case in ("not_json", "no_audio", "duplicate", "missing_file"):
        assert not out.exists()  # rejected before anything is written


def test_bad_model_layers_and_output(run_cli, tiny_model_dir, tones, tmp_path):
    manifest = tones(1)
    model = tiny_model_dir("qwen2-audio")
    one_line_error(*run_cli("trace", tmp_path / "nope", "--data", manifest, "--out", tmp_path / "a.h5")[::2],
                    "not found", "qwen2-audio")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    one_line_error(*run_cli("trace", other, "--data", manifest, "--out", tmp_path / "a.h5")[::2], "'bert'", "supported")
    one_line_error(*run_cli("trace", model, "--data", manifest, "--out", tmp_path / "a.h5", "--layers", "0,99")[::2],
                    "out of range")
    blocked = tmp_path / "file"
    blocked.write_text("x")
    one_line_error(*run_cli("trace", model, "--data", manifest, "--out", blocked / "a.h5")[::2], "cannot write")


def test_stereo_other_rates_and_long_audio(run_cli, tiny_model_dir, tmp_path):
    t = np.arange(int(44100 * 1.5)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3
    sf.write(tmp_path / "stereo.wav", stereo.astype(np.float32), 44100)
    t = np.arange(16000 * 31) / 16000
    sf.write(tmp_path / "long.flac", (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    m = _manifest(tmp_path, [{"id": "s", "audio": "stereo.wav"}, {"id": "l", "audio": "long.flac"}])
    code, _, err = run_cli("trace", tiny_model_dir("qwen2-audio"), "--data", m, "--out", tmp_path / "a.h5",
                           "--layers", "0", "--batch-size", "2")
    assert code == 0, err
    assert "1 item(s) longer than the encoder window were truncated to 30 s (e.g. l)" in err
    with ActivationStore(tmp_path / "a.h5") as s:
        assert s.items["audio_seconds"][0] == pytest.approx(1.5)
        assert list(s.items["truncated"]) == [False, True]
        assert s.positions["time_end"][s.rows([1])].max() == pytest.approx(30.0)
        assert s.items["n_positions"][1] == 750  # 30 s at 40 ms per audio position


def test_whisper_decoder_has_no_audio_positions(run_cli, tiny_model_dir, tones, tmp_path):
    model, manifest = tiny_model_dir("whisper"), tones(1)
    one_line_error(*run_cli("trace", model, "--data", manifest, "--out", tmp_path / "a.h5")[::2],
                    "no audio positions", "--component encoder")
    assert not (tmp_path / "a.h5").exists()
    code, _, err = run_cli("trace", model, "--data", manifest, "--out", tmp_path / "a.h5", "--component", "encoder")
    assert code == 0, err
