"""Offline TTS: non-silent 16 kHz speech whose duration grows with the text, identical
samples for the same seed, and clear errors for unusable backends and voices."""

import hashlib
import importlib.util

import numpy as np
import pytest

from interp.errors import InterpError
from tasks.tts import SAMPLE_RATE, draw_voices, get_backend, register_backend

SHORT = "The market rose."
LONG = ("The market rose on Tuesday as investors welcomed strong quarterly earnings from several large "
        "technology companies, and analysts expect the rally to continue through the end of the month.")


@pytest.fixture(scope="module")
def espeak():
    return get_backend("espeak")


def test_speech_is_16khz_mono_float32_and_not_silent(espeak):
    wav = espeak.synthesize(SHORT, "en-us", 165)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert 0.3 < wav.size / SAMPLE_RATE < 5
    assert np.sqrt(np.mean(wav ** 2)) > 0.01 and np.max(np.abs(wav)) <= 1.0


def test_duration_grows_with_text(espeak):
    durations = [espeak.synthesize(t, "en-us", 165).size for t in ("Yes.", SHORT, LONG)]
    assert durations[0] < durations[1] < durations[2]
    assert durations[2] > 4 * durations[1]


def test_rate_changes_duration(espeak):
    assert espeak.synthesize(LONG, "en-us", 120).size > 1.3 * espeak.synthesize(LONG, "en-us", 220).size


def test_same_input_gives_identical_samples_whatever_came_before(espeak):
    first = espeak.synthesize(SHORT, "en-us+f4", 170)
    espeak.synthesize(LONG, "en-gb-x-rp", 140)  # espeak-ng would otherwise carry state over
    again = espeak.synthesize(SHORT, "en-us+f4", 170)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, espeak.synthesize(SHORT, "en-us+m3", 170))


def test_voice_draw_is_seeded_per_item():
    voices, rates = ["en-us", "en-gb-x-rp", "en-us+f4"], [140, 170, 200]
    a = [draw_voices(f"id{i}", voices, rates, seed=0)[0] for i in range(20)]
    b = [draw_voices(f"id{i}", voices, rates, seed=0)[0] for i in reversed(range(20))][::-1]
    c = [draw_voices(f"id{i}", voices, rates, seed=1)[0] for i in range(20)]
    assert a == b and a != c
    assert len({v.name for v in a}) > 1 and len({v.rate for v in a}) > 1
    several = draw_voices("x", voices, rates, seed=0, n=4)
    assert len(set(several)) == 4


def test_unknown_voice_and_rate_are_clear_errors(espeak):
    with pytest.raises(InterpError, match="unknown espeak voice 'zz-nowhere'"):
        espeak.check_voice("zz-nowhere")
    with pytest.raises(InterpError, match="out of range"):
        espeak.synthesize(SHORT, "en-us", 20)
    with pytest.raises(InterpError, match="empty text"):
        espeak.synthesize("   ", "en-us", 165)


def test_listed_english_voices_are_accepted(espeak):
    english = [v for v in espeak.voices() if v.startswith("en")]
    assert "en-us" in english and len(english) >= 5
    for voice in english:
        espeak.check_voice(voice)
    assert {"f3", "m3"} <= set(espeak.variants())


@pytest.mark.skipif(importlib.util.find_spec("piper") is not None, reason="piper-tts is installed here")
def test_backend_not_installed_is_a_clear_error():
    with pytest.raises(InterpError, match="'piper' is not installed.*pip install piper-tts"):
        get_backend("piper")


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(InterpError, match="unknown TTS backend 'festival'.*espeak"):
        get_backend("festival")
    with pytest.raises(InterpError, match="edge-tts"):
        get_backend("edge-tts")


def test_a_registered_backend_plugs_in(tmp_path):
    from interp.manifest import read_manifest
    from tasks.synth import synthesize

    class Beep:
        name, default_voice, default_rate = "beep", "tone", 100

        def check_voice(self, voice):
            pass

        def check_rate(self, rate):
            pass

        def voices(self):
            return ["tone"]

        def synthesize(self, text, voice=None, rate=None):
            return (0.1 * np.sin(np.arange(len(text) * 160) / 5.0)).astype(np.float32)

    register_backend("beep", Beep)
    out = synthesize([{"id": "a", "task": "sst2", "text": "fine film", "label": "positive"}], tmp_path, backend="beep")
    (row,) = read_manifest(out)
    assert row["tts_backend"] == "beep" and row["duration_s"] == pytest.approx(9 * 160 / SAMPLE_RATE)


def test_synthesize_writes_wavs_and_manifest_deterministically(tmp_path):
    from interp.audio import load_audio
    from interp.manifest import read_manifest
    from tasks.datasets import load_dataset, sample_path
    from tasks.synth import synthesize

    rows = load_dataset("csqa", sample_path("csqa"), limit=3)
    kw = dict(voices=["en-us", "en-us+f4"], rates=[150, 190], seed=5)
    a = read_manifest(synthesize(rows, tmp_path / "a", **kw))
    b = read_manifest(synthesize(rows, tmp_path / "b", **kw))
    assert [r["id"] for r in a] == [r["id"] for r in rows]
    for ra, rb in zip(a, b):
        digest = [hashlib.sha256(open(r["audio"], "rb").read()).hexdigest() for r in (ra, rb)]
        assert digest[0] == digest[1], (ra["audio"], rb["audio"])  # a digest keeps a failure's report short
        assert (ra["tts_voice"], ra["tts_rate"]) == (rb["tts_voice"], rb["tts_rate"])
        assert ra["transcript"].count(":") == 5 and " E: " in ra["transcript"]  # question and its five options
        assert load_audio(ra["audio"]).size / SAMPLE_RATE == pytest.approx(ra["duration_s"], abs=0.01)
    renditions = read_manifest(synthesize(rows[:1], tmp_path / "r", renditions=3, **kw))
    assert [r["id"] for r in renditions] == [f"{rows[0]['id']}~v{k}" for k in (1, 2, 3)]
    assert len({(r["tts_voice"], r["tts_rate"]) for r in renditions}) == 3


def test_synthesize_validates_before_writing(tmp_path):
    from tasks.synth import synthesize

    good = {"id": "a", "task": "sst2", "text": "a fine film", "label": "positive"}
    for rows, kw, match in [
        ([good, {"id": "b", "task": "sst2", "text": "  ", "label": "negative"}], {}, "no text to speak"),
        ([good], {"voices": ["nope"]}, "unknown espeak voice"),
        ([good], {"rates": [5]}, "out of range"),
        ([good, dict(good)], {}, "appears twice"),
        ([{"id": "c", "text": "hello"}], {}, "no 'task'"),
        ([], {}, "no items"),
    ]:
        with pytest.raises(InterpError, match=match):
            synthesize(rows, tmp_path / "out", **kw)
        assert not (tmp_path / "out").exists()
