"""Whisper transcription, the ASR stage of cascades (cascades.asr)."""

from __future__ import annotations

import numpy as np
import pytest

from cascades.asr import asr_word_error_rate, transcribe_waveforms
from interp.models import load_model
from interp.testing import make_tiny


def _waves(seconds):
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


@pytest.fixture(scope="module")
def english_only(tmp_path_factory):
    return load_model(make_tiny("whisper", tmp_path_factory.mktemp("whisper-en"), seed=1, english_only=True), device="cpu")


def test_transcribe_returns_one_string_per_input(tiny_adapter, monkeypatch):
    adapter = tiny_adapter("whisper")
    windows = []
    generate = adapter.model.generate

    def counting_generate(features, **kwargs):
        windows.append(features.shape[0])
        assert kwargs["language"] == "en" and kwargs["task"] == "transcribe"
        return generate(features, **kwargs)

    monkeypatch.setattr(adapter.model, "generate", counting_generate)
    texts = transcribe_waveforms(adapter, _waves([1.0, 35.0, 0.5]), batch_size=2, max_new_tokens=3)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert sum(windows) == 4 and max(windows) <= 2  # the 35 s input is two 30 s windows
    assert transcribe_waveforms(adapter, [], batch_size=2) == []


def test_english_only_transcribes(english_only):
    texts = transcribe_waveforms(english_only, _waves([1.0, 0.6]), batch_size=2, max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_word_error_rate_of_asr_against_the_manifest():
    import jiwer

    rows = [{"id": "a", "transcript": "The cat sat."}, {"id": "b", "transcript": "on the mat"}, {"id": "c"}]
    wer, n = asr_word_error_rate(rows, {"a": "the cat sat", "b": "on a mat", "c": "anything"})
    assert n == 2 and wer == pytest.approx(jiwer.wer(["the cat sat", "on the mat"], ["the cat sat", "on a mat"]))
    assert asr_word_error_rate([{"id": "c"}], {"c": "x"}) == (None, 0)
