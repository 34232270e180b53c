"""Probes on synthetic stores with planted signals: interp.analysis (targets, probing, sweep) and `interp probe`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cli
from interp.audio import write_wav
from interp.errors import InterpError
from interp.analysis.acoustics import position_energy_db, position_pitch
from interp.analysis.probing import ProbeConfig, make_folds, span_features
from interp.analysis.sweep import probe
from interp.analysis.targets import build_target
from interp.text import normalise_text
from interp.store import ActivationStore, ItemRecord, StoreWriter

SR = 16000
FAST = ProbeConfig(folds=4, Cs=(1e-3, 1e-1, 10.0))


def make_store(path: Path, items: list[dict], layers: list[str], d: int, attrs: dict | None = None) -> Path:
    """A store from dicts with id, row, resid {layer: (T, d)}, optional is_audio/time_start/time_end."""
    base = {"model_fingerprint": "synthetic", "positions": "audio", "component": "decoder",
            "n_model_layers": sum(x != "embed" for x in layers)}
    writer = StoreWriter.create(path, {**base, **(attrs or {})}, layers, d, "float32")
    records = []
    for it in items:
        T = len(next(iter(it["resid"].values())))
        t0 = it.get("time_start", np.arange(T) * 0.04)
        records.append(ItemRecord(
            id=it["id"], row=it["row"], resid={k: np.asarray(v, np.float32) for k, v in it["resid"].items()},
            token_id=np.full(T, 7), index=np.arange(T), is_audio=it.get("is_audio", np.ones(T, bool)),
            time_start=np.asarray(t0, float), time_end=np.asarray(it.get("time_end", t0 + 0.04), float),
            audio_seconds=float(T * 0.04), truncated=False))
    writer.append(records)
    writer.finish()
    return path


LAYERS = ["embed", "0", "1", "2", "3"]


def planted_label_store(path: Path, n: int = 80, d: int = 12, k: str = "2", T: int = 5, item_identity: float = 0.0,
                        seed: int = 0) -> Path:
    """Binary label linearly encoded (a mean shift along one direction) at layer k only."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    items = []
    for i in range(n):
        label = i % 2
        ident = item_identity * rng.normal(size=d)
        resid = {}
        for layer in LAYERS:
            x = rng.normal(size=(T, d)) + ident
            if layer == k:
                x += (2 * label - 1) * 1.5 * direction
            resid[layer] = x
        items.append({"id": f"u{i}", "row": {"id": f"u{i}", "label": ["neg", "pos"][label], "transcript": "hi there",
                                             "speaker": f"s{i % 4}", "const": "same", "score": float(i)},
                      "resid": resid})
    return make_store(path, items, LAYERS, d)


@pytest.fixture(scope="module")
def label_store(tmp_path_factory):
    return planted_label_store(tmp_path_factory.mktemp("probe") / "label.h5")


# ---- classification ----------------------------------------------------------------------


def test_planted_label_found_at_its_layer_only(label_store):
    result = probe(label_store, "label", config=FAST)
    by = {s.layer: s for s in result.layers}
    assert result.kind == "classification" and result.metric == "accuracy" and result.positions == "audio-mean"
    assert by["2"].score >= 0.95 and by["2"].extra["macro_f1"] >= 0.95
    for layer in ("embed", "0", "1", "3"):
        assert by[layer].score <= 0.72, (layer, by[layer].score)
    for s in result.layers:
        assert s.control <= 0.72, (s.layer, s.control)  # shuffled labels: chance everywhere
        assert s.baseline == pytest.approx(0.5, abs=0.08)
        assert s.n_items == 80 and s.n_positions == 80 and len(s.fold_scores) == 4
    assert by["2"].selectivity >= 0.3
    assert result.best().layer == "2"


def test_broadcast_to_positions_finds_the_layer(label_store):
    result = probe(label_store, "label", layers="1,2", positions="audio", config=FAST)
    by = {s.layer: s for s in result.layers}
    assert by["2"].score >= 0.85 and by["1"].score <= 0.7
    assert by["2"].n_positions == 80 * 5 and by["2"].n_items == 80


def test_grouped_folds_keep_an_items_positions_together(label_store):
    with ActivationStore(label_store) as store:
        target = build_target(store, "label", "audio")
        for train, test in make_folds(target, 4, seed=0):
            assert not set(target.groups[train]) & set(target.groups[test])


def test_item_identity_does_not_leak_across_folds(tmp_path):
    # Labels live nowhere, but every item's positions share a strong item-specific vector.
    # Split by position, a probe would memorise item -> label; grouped by item it cannot.
    # 96 dims can shatter 60 items: split by position, this probe scores 1.0 (checked).
    path = planted_label_store(tmp_path / "ident.h5", n=60, d=96, k="none", item_identity=4.0)
    result = probe(path, "label", layers="0", positions="audio", config=FAST)
    assert result.layers[0].score <= 0.72


def test_many_small_classes_still_run(tmp_path):
    # 6 classes of 2 items: no stratified 3-fold split exists, and training folds can miss classes.
    rng = np.random.default_rng(5)
    items = [{"id": f"k{i}", "row": {"id": f"k{i}", "label": f"class{i % 6}"}, "resid": {"0": rng.normal(size=(2, 6))}}
             for i in range(12)]
    path = make_store(tmp_path / "small.h5", items, ["0"], 6)
    result = probe(path, "label", config=ProbeConfig(folds=3))
    (layer,) = result.layers
    with ActivationStore(path) as store:
        target = build_target(store, "label")
        folds = make_folds(target, 3, seed=0)
    # each fold's accuracy counts that fold's test items; the baseline is the training fold's
    # majority class, computed here independently of the probe code
    sizes = [len(test) for _, test in folds]
    assert sorted(sizes) == [4, 4, 4] and len(layer.fold_scores) == 3
    assert all(abs(s * n - round(s * n)) < 1e-9 for s, n in zip(layer.fold_scores, sizes))
    assert layer.score == pytest.approx(np.mean(layer.fold_scores))
    y = np.asarray(target.y)
    majority = [np.mean(y[test] == np.bincount(y[train]).argmax()) for train, test in folds]
    assert layer.baseline == pytest.approx(np.mean(majority))
    assert any("not stratified" in n for n in result.notes)
    json.dumps(result.to_dict(), allow_nan=False)


def test_span_reparametrisation_is_exact():
    from sklearn.linear_model import LogisticRegression, Ridge

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 200)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(int)
    train, test = np.arange(30), np.arange(30, 40)
    Z, _ = span_features(X, train)
    assert Z.shape == (40, 30)
    full = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(X[train], y[train])
    span = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(Z[train], y[train])
    np.testing.assert_allclose(full.decision_function(X[test]), span.decision_function(Z[test]), atol=1e-3)
    r_full = Ridge(alpha=3.0).fit(X[train], X[train, 1])
    r_span = Ridge(alpha=3.0).fit(Z[train], X[train, 1])
    np.testing.assert_allclose(r_full.predict(X[test]), r_span.predict(Z[test]), atol=1e-3)


# ---- regression --------------------------------------------------------------------------


def test_numeric_field_is_regressed_with_r2(tmp_path):
    rng = np.random.default_rng(3)
    d, direction = 10, rng.normal(size=10)
    items = []
    for i in range(60):
        v = rng.normal()
        items.append({"id": f"r{i}", "row": {"id": f"r{i}", "loudness": v},
                      "resid": {"0": rng.normal(size=(3, d)), "1": rng.normal(size=(3, d)) * 0.2 + v * direction}})
    path = make_store(tmp_path / "reg.h5", items, ["0", "1"], d)
    result = probe(path, "loudness", config=FAST)
    by = {s.layer: s for s in result.layers}
    assert result.kind == "regression" and result.metric == "r2" and result.baseline_name == "mean"
    assert by["1"].score > 0.9 and by["0"].score < 0.2
    assert by["1"].control < 0.2 and by["1"].baseline <= 0.05


def test_chars_bag_of_characters(tmp_path):
    rng = np.random.default_rng(4)
    d, alphabet = 16, "abcdef"
    mix = rng.normal(size=(len(alphabet), d))
    items = []
    for i in range(60):
        text = " ".join("".join(rng.choice(list(alphabet), rng.integers(2, 6))) for _ in range(rng.integers(1, 4)))
        counts = np.array([text.count(c) for c in alphabet], float)
        T = 4
        items.append({"id": f"c{i}", "row": {"id": f"c{i}", "transcript": text.upper() + "!"},
                      "resid": {"0": rng.normal(size=(T, d)), "1": np.tile(counts @ mix, (T, 1)) + 0.1 * rng.normal(size=(T, d))}})
    path = make_store(tmp_path / "chars.h5", items, ["0", "1"], d)
    result = probe(path, "chars", config=FAST)
    by = {s.layer: s for s in result.layers}
    assert result.classes == list(alphabet)  # case-folded, punctuation and spaces dropped
    assert by["1"].score > 0.9 and by["0"].score < 0.15 and by["1"].control < 0.15


# ---- CTC text decodability -----------------------------------------------------------------


def test_ctc_decodes_planted_characters_and_not_noise(tmp_path):
    rng = np.random.default_rng(0)
    d, alphabet = 16, "abcde"
    emb = {c: 2.0 * rng.normal(size=d) for c in alphabet + "_"}
    items = []
    for i in range(40):
        text = "".join(rng.choice(list(alphabet), rng.integers(3, 7)))
        frames = [s for c in text for s in (c, "_")]  # each character, then a pause
        planted = np.stack([emb[c] for c in frames]) + 0.3 * rng.normal(size=(len(frames), d))
        items.append({"id": f"t{i}", "row": {"id": f"t{i}", "transcript": text},
                      "resid": {"0": planted, "1": rng.normal(size=(len(frames), d))}})
    path = make_store(tmp_path / "ctc.h5", items, ["0", "1"], d)
    result = probe(path, "ctc", config=ProbeConfig(folds=3, ctc_epochs=40))
    by = {s.layer: s for s in result.layers}
    assert result.metric == "decodability" and result.positions == "audio"
    assert by["0"].extra["cer"] < 0.05 and by["0"].score > 0.95
    assert by["1"].extra["cer"] > 0.7 and by["1"].score < 0.3
    assert by["0"].control < 0.3  # shuffled transcripts cannot be decoded
    assert by["0"].n_positions == sum(len(it["resid"]["0"]) for it in items)


def test_ctc_refuses_pooled_store(tmp_path):
    items = [{"id": f"p{i}", "row": {"id": f"p{i}", "transcript": "ab"}, "resid": {"0": np.ones((1, 4)) * i}}
             for i in range(6)]
    path = make_store(tmp_path / "pooled.h5", items, ["0"], 4, {"positions": "audio-mean"})
    with ActivationStore(path) as store, pytest.raises(InterpError, match="pooled states"):
        build_target(store, "ctc")


def test_normalise_text():
    assert normalise_text("  Hello,  WORLD! It's 3pm_ ") == "hello world it's 3pm"


# ---- energy and pitch from the waveform ------------------------------------------------------


def tone(seconds: float, freq: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_energy_of_a_tone_in_db():
    wav = np.concatenate([tone(0.4, 220.0, 0.3), tone(0.4, 220.0, 0.003)])
    starts = np.arange(0, 0.8, 0.04)
    energy = position_energy_db(wav, SR, starts, starts + 0.04)
    expected_loud = 20 * np.log10(0.3) - 10 * np.log10(2)  # mean square of a sine is A^2 / 2
    np.testing.assert_allclose(energy[:10], expected_loud, atol=0.15)
    np.testing.assert_allclose(energy[10:], expected_loud - 40.0, atol=0.15)
    # exactly the window's samples: a window straddling the step averages the two powers
    mid = position_energy_db(wav, SR, np.array([0.38]), np.array([0.42]))[0]
    assert mid == pytest.approx(10 * np.log10((0.3 ** 2 / 2 + 0.003 ** 2 / 2) / 2), abs=0.2)
    assert np.isnan(position_energy_db(wav, SR, np.array([5.0]), np.array([5.04]))[0])


def test_pitch_of_a_tone_and_unvoiced_noise():
    rng = np.random.default_rng(0)
    wav = np.concatenate([tone(0.5, 180.0, 0.3), (0.05 * rng.normal(size=SR // 2)).astype(np.float32)])
    starts = np.arange(0, 1.0, 0.04)
    f0 = position_pitch(wav, SR, starts, starts + 0.04)
    voiced = f0[2:10]  # away from the onset and the switch
    np.testing.assert_allclose(voiced, 180.0, rtol=0.02)
    assert np.isnan(f0[-8:]).all()  # noise is unvoiced: left out


def test_energy_and_pitch_targets_read_the_items_audio(tmp_path):
    rng = np.random.default_rng(2)
    d, direction = 8, rng.normal(size=8)
    items = []
    for i in range(24):
        amps = rng.uniform(0.01, 0.5, size=6)
        wav = np.concatenate([tone(0.04, 150.0 + 5 * i, a) for a in amps])
        audio = tmp_path / f"a{i}.wav"
        write_wav(audio, wav, SR)
        energy = 20 * np.log10(amps) - 3.0
        resid = {"0": rng.normal(size=(6, d)), "1": energy[:, None] * direction + 0.05 * rng.normal(size=(6, d))}
        items.append({"id": f"e{i}", "row": {"id": f"e{i}", "audio": str(audio)}, "resid": resid})
    path = make_store(tmp_path / "energy.h5", items, ["0", "1"], d)
    with ActivationStore(path) as store:
        target = build_target(store, "energy")
        assert target.control_level == "position" and target.n_units == 24 * 6
        assert np.all(np.abs(np.diff(target.y[:6])) > 0)  # per position, not per item
    result = probe(path, "energy", config=FAST)
    by = {s.layer: s for s in result.layers}
    assert by["1"].score > 0.9 and by["0"].score < 0.2 and by["1"].control < 0.2
    with ActivationStore(path) as store:
        pitch = build_target(store, "pitch", positions="audio-mean")
        np.testing.assert_allclose(pitch.y, 150.0 + 5 * pitch.items, rtol=0.03)


# ---- bad input -----------------------------------------------------------------------------


def test_library_errors(label_store, tmp_path):
    with ActivationStore(label_store) as store:
        with pytest.raises(InterpError, match=r"no target 'mood'; item fields: .*label.*speaker"):
            build_target(store, "mood")
        with pytest.raises(InterpError, match="one class"):
            build_target(store, "const")
        with pytest.raises(InterpError, match=r"layer\(s\) 9 not in the store"):
            store.resolve_layers("0,9")
        with pytest.raises(InterpError, match="needs the waveform"):
            build_target(store, "energy")
        target = build_target(store, "label")
        with pytest.raises(InterpError, match="fewer than --folds 100"):
            make_folds(target, 100)
    assert ActivationStore(label_store).resolve_layers("embed,-1") == ["embed", "3"]


@pytest.mark.parametrize("args, expected", [
    (["--target", "mood"], "the store has no target 'mood'; item fields:"),
    (["--target", "const"], "target 'const' has one class ('same')"),
    (["--target", "label", "--layers", "0,7"], "layer(s) 7 not in the store"),
    (["--target", "ctc", "--positions", "audio-mean"], "use --positions audio"),
])
def test_cli_bad_input_one_line(label_store, run_cli, tmp_path, args, expected):
    code, out, err = run_cli("probe", label_store, *args, "--out", tmp_path / "p.json")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code != 0 and "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
    assert not (tmp_path / "p.json").exists()


def test_cli_bad_input_in_a_fresh_process(label_store, tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "probe", str(label_store), "--target", "mood"],
                          capture_output=True, text=True, cwd=Path(cli.__file__).parent, timeout=120)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1 and "no target 'mood'" in lines[0]


def test_cli_probe_writes_json_and_plot(label_store, run_cli, tmp_path):
    out, plot = tmp_path / "probe.json", tmp_path / "curve.png"
    code, stdout, err = run_cli("probe", label_store, "--target", "label", "--layers", "1,2",
                             "--folds", "3", "--out", out, "--plot", plot)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["target"] == "label" and [x["layer"] for x in data["layers"]] == ["1", "2"]
    for key in ("score", "spread", "baseline", "control", "selectivity", "n_items", "n_positions"):
        assert key in data["layers"][0]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in stdout and str(out) in err.replace("\n", "")
