"""LEACE erasers: streamed fits, the chance-level guarantee on held-out data, the random
control, saving, concepts, and `interp erase` as a user meets it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.analysis.concepts import build_concept, ctc_frame_targets
from interp.analysis.leace import Eraser, LayerEraser, fit_eraser, random_control
from interp.analysis.reprobe import reprobe
from interp.store import ActivationStore, ItemRecord, StoreWriter
from tests.helpers import one_line_error


def synthetic_store(path, n_items=300, d=48, layers=("0", "1"), n_classes=3, probs=(0.6, 0.25, 0.15), strength=1.5,
                    seed=0, audio=True, model_fingerprint="synthetic", dtype="float32") -> Path:
    """A store whose audio rows carry a planted class direction on top of correlated noise."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((len(layers), n_classes, d))
    mix = rng.standard_normal((len(layers), d, d)) / np.sqrt(d)
    writer = StoreWriter.create(path, {"model_fingerprint": model_fingerprint, "family": "synthetic", "component": "decoder",
                                       "positions": "all", "n_model_layers": len(layers)}, list(layers), d, dtype)
    labels = rng.choice(n_classes, size=n_items, p=probs)
    records = []
    for i in range(n_items):
        n_audio = int(rng.integers(5, 12))
        is_audio = np.r_[np.zeros(3, bool), np.ones(n_audio, bool), np.zeros(2, bool)] & audio
        n = len(is_audio)
        resid = {}
        for k, layer in enumerate(layers):
            x = rng.standard_normal((n, d)) @ mix[k] + 0.5
            x[is_audio] += strength * dirs[k, labels[i]]
            resid[layer] = x.astype(np.float32)
        t = np.where(is_audio, (np.cumsum(is_audio) - 1) * 0.04, np.nan)
        row = {"id": f"s{i}", "label": f"c{labels[i]}", "task": "sst2", "transcript": "ab ba", "speaker": "one"}
        records.append(ItemRecord(row["id"], row, resid, np.zeros(n, np.int64), np.arange(n), is_audio, t, t + 0.04,
                                  float(n_audio * 0.04), False))
    writer.append(records)
    writer.finish()
    return Path(path)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("synth") / "s.h5")


def write_labelled_tones(folder: Path, n: int, seed: int = 0) -> Path:
    """SST-2-style items whose label is audible: a 140 Hz tone is 'negative', a 650 Hz one
    'positive' (1:2), each in its own noise."""
    from interp.audio import write_wav

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    t = np.arange(int(0.8 * 16000)) / 16000
    for i in range(n):
        label = ("negative", "positive", "positive")[i % 3]
        f0 = 140.0 if label == "negative" else 650.0
        write_wav(folder / f"u{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "transcript": "the team won the match",
                     "text": "the team won the match", "task": "sst2", "label": label})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "manifest.jsonl"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A store of a tiny Qwen2-Audio (one small encoder layer, for speed) over 60 labelled tones."""
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.testing import make_tiny
    from interp.trace import trace

    folder = tmp_path_factory.mktemp("real")
    model = make_tiny("qwen2-audio", folder / "model", encoder_layers=1, encoder_d_model=32)
    adapter = load_model(model, device="cpu")
    manifest = write_labelled_tones(folder / "audio", 60)
    trace(adapter, read_manifest(manifest), folder / "acts.h5", layers="all", positions="all", dtype="float32",
          batch_size=20)
    return {"adapter": adapter, "model": model, "manifest": manifest, "store": folder / "acts.h5"}


# ---- fitting -------------------------------------------------------------------------------


def test_streamed_fit_equals_full_batch_fit_in_float64(synth):
    from concept_erasure import LeaceFitter

    with ActivationStore(synth) as store:
        items = np.arange(0, 300, 2)
        streamed = fit_eraser(store, "label", "0,1", items=items, affine=True, batch_items=7)
        one_batch = fit_eraser(store, "label", "0,1", items=items, affine=True, batch_items=10_000)
        concept = build_concept(store, "label").restrict(store, items)
        for layer in (0, 1):
            x = torch.from_numpy(store.read(layer, rows=concept.rows, dtype=np.float64))
            z = torch.from_numpy(concept.z(concept.rows))
            full = LeaceFitter.fit(x, z, affine=True).eraser
            for e in (streamed, one_batch):
                torch.testing.assert_close(e.layer_erasers[layer].P, full.P, rtol=0, atol=1e-10)
                torch.testing.assert_close(e.layer_erasers[layer].bias, x.mean(0), rtol=0, atol=1e-12)
            assert streamed.ranks[layer] == 2  # 3 classes: rank k - 1
        assert streamed.meta["n_rows"] == len(concept.rows) and streamed.meta["n_items"] == len(items)


def test_leace_brings_a_fresh_probe_to_chance_and_the_random_control_does_not(synth):
    with ActivationStore(synth) as store:
        fit, held = np.arange(200), np.arange(200, 300)
        eraser = fit_eraser(store, "label", "0,1", items=fit)
        assert eraser.affine is False and all(e.bias is None for e in eraser.layer_erasers.values())
        control = random_control(eraser, seed=1)
        result = reprobe(store, build_concept(store, "label").restrict(store, held),
                         {"erased": eraser, "random": control}, [0, 1], folds=3)
    assert result.metric == "accuracy" and result.n_items == 100
    for layer in result.layers:
        assert layer.original > layer.baseline + 0.2
        assert abs(layer.erased["erased"] - layer.baseline) <= 0.02
        assert layer.erased["random"] >= layer.original - 0.02


def test_reprobe_scores_as_interp_probe_does(tmp_path):
    """One probing estimator: the re-probe of `interp erase` and `interp probe` give the same
    score on the same rows, folds and seed (before this, they used other grids, other
    standardisation and dropped single-class folds in one only)."""
    from interp.analysis.probing import ProbeConfig
    from interp.analysis.sweep import probe

    path = synthetic_store(tmp_path / "s.h5", n_items=48, strength=0.4, seed=3)
    with ActivationStore(path) as store:
        concept = build_concept(store, "label", "all")
        result = reprobe(store, concept, {}, [0, 1], folds=3, seed=2, max_rows=None)
        swept = probe(store, "label", layers="0,1", positions="all", config=ProbeConfig(folds=3, seed=2))
    assert [l.layer for l in result.layers] == [0, 1]
    for again, layer in zip(result.layers, swept.layers):
        assert again.original == pytest.approx(layer.score, abs=1e-12)
        assert again.baseline == pytest.approx(layer.baseline, abs=1e-12)
        assert 0.4 < layer.score < 1.0  # a signal that is there but not perfect: the scores are informative


def test_leace_on_a_real_store(real):
    with ActivationStore(real["store"]) as store:
        # 24 items to fit, 36 held out, both 1:2 negative:positive
        fit = np.flatnonzero(np.isin(np.arange(60) % 5, (0, 1)))
        held = np.setdiff1d(np.arange(60), fit)
        eraser = fit_eraser(store, "label", "0,3", items=fit)
        assert eraser.model_fingerprint == real["adapter"].fingerprint() and eraser.d_model == real["adapter"].d_model
        concept = build_concept(store, "label").restrict(store, held)
        result = reprobe(store, concept, {"erased": eraser, "random": random_control(eraser)}, [0, 3], folds=3)
    for layer in result.layers:
        assert layer.original > layer.baseline + 0.2, layer
        assert abs(layer.erased["erased"] - layer.baseline) <= 0.02, layer
        assert layer.erased["random"] >= layer.original - 0.02, layer


def test_random_control_matches_rank_and_is_seeded(synth):
    with ActivationStore(synth) as store:
        eraser = fit_eraser(store, "label", "0,1")
    a, b, c = random_control(eraser, 0), random_control(eraser, 0), random_control(eraser, 1)
    assert a.ranks == eraser.ranks and a.method == "random" and a.meta["seed"] == 0
    for layer in eraser.layers:
        q = a.layer_erasers[layer].proj_left
        torch.testing.assert_close(q.T @ q, torch.eye(q.shape[1], dtype=q.dtype))
        assert torch.equal(q, b.layer_erasers[layer].proj_left)
        assert not torch.allclose(q, c.layer_erasers[layer].proj_left)
    assert not torch.allclose(a.layer_erasers[0].proj_left, a.layer_erasers[1].proj_left)


def test_save_load_round_trip_and_refusals(real, tmp_path):
    adapter = real["adapter"]
    with ActivationStore(real["store"]) as store:
        eraser = fit_eraser(store, "label", "1,2", affine=True)
    path = eraser.save(tmp_path / "label.safetensors")
    back = Eraser.load(path, adapter=adapter)
    assert back.describe() == eraser.describe()
    for layer in eraser.layers:
        for name in ("proj_left", "proj_right", "bias"):
            assert torch.equal(getattr(back.layer_erasers[layer], name), getattr(eraser.layer_erasers[layer], name))
    x = torch.randn(5, adapter.d_model)
    assert torch.equal(back(x, 1), eraser(x, 1))
    with pytest.raises(InterpError, match="another model"):
        Eraser.load(replace(eraser, model_fingerprint="0" * 16).save(tmp_path / "other.safetensors"), adapter=adapter)
    wide = {l: LayerEraser(torch.zeros(96, 1, dtype=torch.float64), torch.zeros(1, 96, dtype=torch.float64)) for l in (1, 2)}
    with pytest.raises(InterpError, match="width 96"):
        Eraser.load(replace(eraser, layer_erasers=wide, d_model=96).save(tmp_path / "wide.safetensors"), adapter=adapter)
    with pytest.raises(InterpError, match="has no layer 3"):
        back.check(adapter, [1, 3])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InterpError, match="cannot read eraser"):
        Eraser.load(tmp_path / "junk.safetensors")


# ---- concepts ------------------------------------------------------------------------------


def test_concepts_chars_ctc_and_combinations(synth):
    with ActivationStore(synth) as store:
        audio_rows = store.rows(audio_only=True)
        chars = build_concept(store, "chars", "audio")
        assert chars.columns == ["a", "b"] and np.array_equal(chars.rows, audio_rows)
        assert np.array_equal(chars.z(chars.rows[:3]), [[2, 2]] * 3)  # "ab ba": two of each
        ctc = build_concept(store, "ctc", "audio")
        assert ctc.columns == [" ", "a", "b"]
        item0 = store.rows([0], audio_only=True)
        z = ctc.z(item0)
        np.testing.assert_allclose(z.sum(0), [1, 2, 2])  # each character spread over the item's positions once
        both = build_concept(store, "label+chars", "all")
        assert both.kind == "values" and len(both.columns) == 5 and len(both.rows) == store.n_rows
        audio_only = build_concept(store, "label+ctc", "all")  # ctc lives on audio rows: the rows all have
        assert audio_only.columns[-3:] == ["ctc: ", "ctc:a", "ctc:b"] and np.array_equal(audio_only.rows, audio_rows)
        label_all = build_concept(store, "label", "all")
        assert len(label_all.rows) == store.n_rows and label_all.kind == "classes"


def test_ctc_frame_targets_share_each_character_once():
    z = ctc_frame_targets(7, np.array([0, 1, 1, 2]), 3)
    np.testing.assert_allclose(z.sum(0), [1, 2, 1])
    np.testing.assert_allclose(z.sum(1), np.full(7, 4 / 7))
    assert z[0, 0] == pytest.approx(1.0 / 1.75) and z[-1, 2] == pytest.approx(1.0 / 1.75)


def test_concept_errors(synth, tmp_path):
    with ActivationStore(synth) as store:
        with pytest.raises(InterpError, match="one class"):
            build_concept(store, "speaker")
        with pytest.raises(InterpError, match="no target 'mood'"):
            build_concept(store, "mood")
        with pytest.raises(InterpError, match="out of range"):
            fit_eraser(store, "label", "0,7")
        with pytest.raises(InterpError, match="not a block"):
            fit_eraser(store, "label", "embed,0")
    text_only = synthetic_store(tmp_path / "t.h5", n_items=6, audio=False)
    with ActivationStore(text_only) as store:
        with pytest.raises(InterpError, match="store has no audio spans"):
            fit_eraser(store, "label", "0", positions="audio")
        assert fit_eraser(store, "label", "0", positions="all").ranks[0] >= 1


# ---- the command ---------------------------------------------------------------------------


def _args(real, out, *extra, layers="0,1"):
    return ("erase", real["model"], "--data", real["manifest"], "--fit-store", real["store"], "--concept", "label",
            "--layers", layers, "--out", out, *extra)


def test_erase_cli_end_to_end(real, run_cli, tmp_path):
    out = tmp_path / "out"
    args = _args(real, out, "--limit", "3", "--max-new-tokens", "2", "--holdout", "0.5", "--batch-size", "3")
    code, _, err = run_cli(*args)
    assert code == 0, err
    report = json.loads((out / "erase.json").read_text())
    assert report["conditions"] == ["baseline", "label erased", "random subspace"]
    assert report["erasers"]["label erased"]["ranks"] == {"0": 1, "1": 1}
    assert report["erasers"]["random subspace"]["ranks"] == {"0": 1, "1": 1}
    assert {r["system"] for r in report["accuracy"]} == set(report["conditions"])
    eps = 1e-12  # the Wilson bounds at k = 0 or n carry rounding
    assert all(r["n"] == 3 and 0 <= r["ci_low"] <= r["accuracy"] + eps <= r["ci_high"] + 2 * eps <= 1 + 3 * eps
               for r in report["accuracy"])
    assert [l["layer"] for l in report["reprobe"]["layers"]] == [0, 1]
    md = (out / "erase.md").read_text()
    assert "| condition | SST-2 (n=3) |" in md and "| random subspace |" in md
    assert (out / "erase.png").read_bytes()[:4] == b"\x89PNG"
    for cond in ("baseline", "label_erased", "random_subspace"):
        preds = [json.loads(l) for l in (out / "predictions" / f"{cond}.jsonl").read_text().splitlines()]
        assert len(preds) == 3 and {p["system"] for p in preds} == {cond.replace("_", " ")}
    # a second run loads the erasers it finds
    code, _, err = run_cli(*args)
    assert code == 0 and "erasers loaded" in err


def test_erase_cli_bad_input(real, run_cli, tmp_path):
    adapter = real["adapter"]
    with ActivationStore(real["store"]) as store:
        eraser = fit_eraser(store, "label", "0,1")
    for name, bad in {"model": replace(eraser, model_fingerprint="f" * 16),
                      "width": Eraser({l: LayerEraser(torch.zeros(32, 1, dtype=torch.float64),
                                                      torch.zeros(1, 32, dtype=torch.float64)) for l in (0, 1)},
                                      "label", adapter.fingerprint(), adapter.family, 32)}.items():
        bad.save(tmp_path / name / "erasers" / "label.safetensors")
    eraser.save(tmp_path / "layer" / "erasers" / "label.safetensors")
    one_line_error(*run_cli(*_args(real, tmp_path / "model"))[::2], "another model")
    one_line_error(*run_cli(*_args(real, tmp_path / "width"))[::2], "width 32")
    one_line_error(*run_cli(*_args(real, tmp_path / "layer", layers="0,2"))[::2], "has no layer 2", "--refit")
    one_line_error(*run_cli(*_args(real, tmp_path / "x", layers="0,9"))[::2], "out of range")
    code, _, err = run_cli("erase", real["model"], "--data", real["manifest"], "--fit-store", real["store"],
                           "--concept", "task", "--layers", "0", "--out", tmp_path / "y")
    one_line_error(code, err, "one class")
    no_audio = synthetic_store(tmp_path / "text.h5", n_items=4, d=adapter.d_model, audio=False,
                               model_fingerprint=adapter.fingerprint(), layers=("0", "1", "2", "3"))
    code, _, err = run_cli("erase", real["model"], "--data", real["manifest"], "--fit-store", no_audio,
                           "--concept", "label", "--layers", "0", "--positions", "audio", "--out", tmp_path / "z")
    one_line_error(code, err, "store has no audio spans")
    other = synthetic_store(tmp_path / "other.h5", n_items=4, d=adapter.d_model, layers=("0", "1", "2", "3"))
    code, _, err = run_cli("erase", real["model"], "--data", real["manifest"], "--fit-store", other,
                           "--concept", "label", "--layers", "0", "--out", tmp_path / "w")
    one_line_error(code, err, "made by another model")
    assert not any((tmp_path / d).exists() for d in "xyzw")


def test_erasers_found_in_out_must_come_from_the_fit_store(real, run_cli, tmp_path):
    from interp.manifest import read_manifest
    from interp.trace import trace

    out = tmp_path / "out"
    quick = ("--limit", "2", "--max-new-tokens", "2", "--controls", "")
    assert run_cli(*_args(real, out, *quick))[0] == 0
    other = tmp_path / "other.h5"  # the same model over fewer items: another store
    trace(real["adapter"], read_manifest(real["manifest"])[:40], other, layers="all", positions="all", dtype="float32",
          batch_size=20)
    args = list(_args(real, out, *quick))
    args[args.index("--fit-store") + 1] = other
    one_line_error(*run_cli(*args)[::2], "fitted on another store", str(real["store"]), "--refit")
    code, _, err = run_cli(*args, "--refit")
    assert code == 0, err
    assert json.loads((out / "erase.json").read_text())["store"] == str(other)



# ---- shards --------------------------------------------------------------------------------

QUICK = ("--limit", "6", "--max-new-tokens", "2", "--batch-size", "2", "--holdout", "0.5")


def _report(folder: Path) -> dict:
    """erase.json without what differs between runs by nature: timings and paths."""
    r = {k: v for k, v in json.loads((folder / "erase.json").read_text()).items()
         if k not in ("seconds", "predictions", "shard")}
    r["erasers"] = {c: {k: v for k, v in e.items() if k != "file"} for c, e in r["erasers"].items()}
    return r


def _predictions(folder: Path) -> dict:
    return {p.name: [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in p.read_text().splitlines()]
            for p in sorted((folder / "predictions").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def erase_whole(real, tmp_path_factory):
    import typer.main
    from click.testing import CliRunner

    from interp.cli import app

    out = tmp_path_factory.mktemp("erase-whole") / "whole"
    r = CliRunner().invoke(typer.main.get_command(app), [str(a) for a in _args(real, out, *QUICK)])
    assert r.exit_code == 0, r.output
    return out


def test_erase_shards_merge_to_the_report_of_one_process(real, erase_whole, run_cli, tmp_path):
    for k in (0, 1):
        code, _, err = run_cli(*_args(real, tmp_path / f"s{k}", *QUICK, "--shard", f"{k}/2"))
        assert code == 0, err
    s1 = [json.loads(line) for line in (tmp_path / "s1" / "predictions" / "baseline.jsonl").read_text().splitlines()]
    assert len(s1) == 4 and s1[0]["shard"]["index"] == 1  # 6 items in batches of 2: shards of 1 and 2 batches
    code, _, err = run_cli("merge-erase", tmp_path / "s1", tmp_path / "s0", "--out", tmp_path / "merged")
    assert code == 0, err
    assert _report(tmp_path / "merged") == _report(erase_whole)
    assert _predictions(tmp_path / "merged") == _predictions(erase_whole)
    assert (tmp_path / "merged" / "erase.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "merged" / "erase.json").read_text())["shard"] is None
    one_line_error(*run_cli("merge-erase", tmp_path / "s0", "--out", tmp_path / "m1")[::2], "shard 1/2 is missing")
    one_line_error(*run_cli("merge-erase", erase_whole, tmp_path / "s0", "--out", tmp_path / "m2")[::2], "not a shard")
    code, _, err = run_cli(*_args(real, tmp_path / "seed1", *QUICK, "--shard", "1/2", "--seed", "1"))
    assert code == 0, err
    one_line_error(*run_cli("merge-erase", tmp_path / "s0", tmp_path / "seed1", "--out", tmp_path / "m3")[::2], "differ in")
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3"))
    # 3 batches over 4 shards: shard 0/4 is empty
    one_line_error(*run_cli(*_args(real, tmp_path / "empty", *QUICK, "--shard", "0/4"))[::2], "holds no items")
    assert not (tmp_path / "empty").exists()


def test_two_ranks_under_torchrun_erase_and_merge_like_one_process(real, erase_whole, tmp_path):
    from tests.test_shard import launch

    out = tmp_path / "erase"
    launch("torchrun", list(_args(real, out, *QUICK)), tmp_path)
    assert (tmp_path / "erase.shard-1-of-2" / "erase.json").is_file()
    assert _report(out) == _report(erase_whole)
    assert _predictions(out) == _predictions(erase_whole)
