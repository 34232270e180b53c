"""Noise at an exact SNR: achieved SNR within 0.1 dB, the clean signal recoverable,
clipping avoided and recorded, and manifests per condition."""

import json
import math

import numpy as np
import pytest

from interp.errors import InterpError
from tasks.noise import BabbleNoise, add_noise, fit_noise, mix_at_snr, parse_snrs, snr_tag

SNRS = (20.0, 10.0, 5.0, 0.0, -5.0)


def _speechlike(seconds=1.5, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.2 * envelope * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _snr(clean, noise):
    return 10 * math.log10(np.mean(np.asarray(clean, np.float64) ** 2) / np.mean(np.asarray(noise, np.float64) ** 2))


@pytest.mark.parametrize("snr", SNRS)
@pytest.mark.parametrize("noise_len", [8000, 24000, 60000])  # shorter (looped), equal-ish, longer (offset)
def test_achieved_snr_within_a_tenth_of_a_db(snr, noise_len):
    clean = _speechlike()
    noise = np.random.default_rng(1).standard_normal(noise_len).astype(np.float32) * 3.0
    mix, info = mix_at_snr(clean, noise, snr, np.random.default_rng(2))
    segment, _ = fit_noise(noise, clean.size, np.random.default_rng(2))
    recovered_noise = mix.astype(np.float64) - info["clean_gain"] * clean
    assert abs(_snr(info["clean_gain"] * clean, recovered_noise) - snr) < 0.1
    assert abs(info["achieved_snr_db"] - snr) < 0.1
    assert np.allclose(recovered_noise, info["noise_gain"] * segment, atol=1e-5)


@pytest.mark.parametrize("snr", SNRS)
def test_clean_is_recoverable_when_not_rescaled(snr):
    clean = 0.05 * _speechlike()
    noise = np.random.default_rng(3).standard_normal(clean.size)
    mix, info = mix_at_snr(clean, noise, snr)
    assert not info["rescaled"] and info["clean_gain"] == 1.0
    assert np.allclose(mix - info["noise_gain"] * noise, clean, atol=1e-6)


def test_clipping_is_avoided_and_recorded():
    clean = 0.95 * np.sign(np.sin(np.linspace(0, 60, 16000))).astype(np.float32)
    noise = np.random.default_rng(4).standard_normal(16000)
    mix, info = mix_at_snr(clean, noise, 0.0)
    assert info["rescaled"] and 0 < info["clean_gain"] < 1
    assert np.max(np.abs(mix)) <= 0.999 + 1e-6
    assert abs(info["achieved_snr_db"]) < 0.1  # a common gain leaves the SNR alone
    assert np.allclose(mix - info["noise_gain"] * noise, info["clean_gain"] * clean, atol=1e-6)


def test_mix_rejects_silence_and_bad_snr():
    with pytest.raises(InterpError, match="silent"):
        mix_at_snr(np.zeros(100), np.ones(100), 0)
    with pytest.raises(InterpError, match="silent"):
        mix_at_snr(np.ones(100), np.zeros(100), 0)
    with pytest.raises(InterpError, match="finite"):
        mix_at_snr(np.ones(100), np.ones(100), float("nan"))


def test_loop_is_deterministic_for_a_generator():
    noise = np.arange(10.0)
    a, off_a = fit_noise(noise, 25, np.random.default_rng(7))
    b, off_b = fit_noise(noise, 25, np.random.default_rng(7))
    assert np.array_equal(a, b) and off_a == off_b
    assert np.array_equal(a[:10], np.roll(noise, -off_a))


@pytest.mark.parametrize("text, expected", [("20,10,5,0", (20.0, 10.0, 5.0, 0.0)), ("-5", (-5.0,)), (" 2.5 , 0", (2.5, 0.0))])
def test_parse_snrs(text, expected):
    assert parse_snrs(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "10,,5", "10,ten", "nan", "inf", "5,5", "1000"])
def test_parse_snrs_rejects(text):
    with pytest.raises(InterpError):
        parse_snrs(text)


def test_snr_tags_are_folder_names():
    assert [snr_tag(s) for s in (20.0, -5.0, 2.5, 0)] == ["snr20", "snr-5", "snr2.5", "snr0"]


def test_babble_excludes_the_item_and_falls_back_to_builtin_talkers():
    pool = {f"u{i}": _speechlike(seed=i) for i in range(4)}
    babble = BabbleNoise(pool, talkers=3)
    wav, info = babble.draw(16000, "u0", np.random.default_rng(0))
    assert "u0" not in info["babble_of"] and len(info["babble_of"]) == 3
    assert wav.shape == (16000,) and np.std(wav) > 0
    lonely = BabbleNoise({"only": _speechlike()}, talkers=2)
    _, info = lonely.draw(16000, "only", np.random.default_rng(0))
    assert all(k.startswith("babble-builtin-") for k in info["babble_of"])


def _manifest(tmp_path, n=4):
    from interp.audio import write_wav

    rows = []
    for i in range(n):
        write_wav(tmp_path / f"c{i}.wav", _speechlike(1.0 + 0.2 * i, seed=i), 16000)
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "task": "sst2", "label": "positive", "transcript": "x"})
    path = tmp_path / "clean.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("noise", ["babble", "white", "dir"])
def test_add_noise_writes_one_manifest_per_snr_with_exact_snr(tmp_path, noise):
    from interp.audio import load_audio, write_wav
    from interp.manifest import read_manifest

    manifest = _manifest(tmp_path)
    if noise == "dir":
        (tmp_path / "musan" / "noise").mkdir(parents=True)
        write_wav(tmp_path / "musan" / "noise" / "hum.wav", 0.1 * np.sin(np.arange(5000) / 7.0).astype(np.float32), 16000)
        noise = str(tmp_path / "musan")
    paths = add_noise(manifest, SNRS, noise, tmp_path / "out", seed=1)
    assert sorted(paths) == sorted(SNRS)
    segments = {}
    for snr, path in paths.items():
        rows = read_manifest(path)
        assert [r["id"] for r in rows] == ["c0", "c1", "c2", "c3"]
        for row in rows:
            assert row["snr_db"] == snr
            assert row["noise"] in ("babble", "white") or row["noise"].startswith("dir:")
            clean = load_audio(row["clean_audio"]).astype(np.float64)
            noisy = load_audio(row["audio"]).astype(np.float64)
            residual = noisy - row["clean_gain"] * clean
            assert abs(_snr(row["clean_gain"] * clean, residual) - snr) < 0.1
            segments.setdefault(row["id"], []).append(residual / row["noise_gain"])
    for seg in segments.values():  # the same noise at every SNR, only its level differs
        assert all(np.corrcoef(seg[0], s)[0, 1] > 0.99 for s in seg[1:])


def test_add_noise_is_deterministic_for_a_seed(tmp_path):
    manifest = _manifest(tmp_path, 3)
    a = add_noise(manifest, [5], "babble", tmp_path / "a", seed=3)[5.0]
    b = add_noise(manifest, [5], "babble", tmp_path / "b", seed=3)[5.0]
    c = add_noise(manifest, [5], "babble", tmp_path / "c", seed=4)[5.0]
    wav = lambda p, i: (p.parent / "audio" / f"c{i}.wav").read_bytes()  # noqa: E731
    assert all(wav(a, i) == wav(b, i) for i in range(3))
    assert any(wav(a, i) != wav(c, i) for i in range(3))


def test_add_noise_bad_input_writes_nothing(tmp_path):
    manifest = _manifest(tmp_path, 2)
    with pytest.raises(InterpError, match="not a number"):
        add_noise(manifest, "10,abc", "babble", tmp_path / "out")
    with pytest.raises(InterpError, match="unknown noise"):
        add_noise(manifest, "10", "pink", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InterpError, match="no noise files"):
        add_noise(manifest, "10", str(tmp_path / "empty"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
