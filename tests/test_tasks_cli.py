"""`interp data`: the load -> synth -> noise pipeline on the samples, the demo data set, and
bad input (one-line error, non-zero exit, no traceback, nothing half-written)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import demo_data, sample_audio_dir, sample_path

INTERP = Path(sys.executable).with_name("interp")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_load_synth_noise_pipeline(run_cli, tmp_path):
    from interp.manifest import read_manifest

    code, _, err = run_cli("data", "load", "--task", "sst2", "--input", sample_path("sst2"), "--out", tmp_path / "sst2.jsonl")
    assert code == 0, err
    code, _, err = run_cli("data", "synth", "--input", tmp_path / "sst2.jsonl", "--out", tmp_path / "tts",
                           "--voice", "en-us,en-us+f4", "--rate", "150,180", "--limit", "4", "--seed", "2")
    assert code == 0, err
    clean = read_manifest(tmp_path / "tts" / "manifest.jsonl")
    assert len(clean) == 4 and all(Path(r["audio"]).is_file() for r in clean)
    code, _, err = run_cli("data", "noise", "--data", tmp_path / "tts" / "manifest.jsonl", "--snr", "10,0",
                           "--out", tmp_path / "noisy")
    assert code == 0, err
    for snr in (10, 0):
        rows = read_manifest(tmp_path / "noisy" / f"snr{snr}" / "manifest.jsonl")
        assert [r["snr_db"] for r in rows] == [snr] * 4 and all(r["noise"] == "babble" for r in rows)


def test_load_meld_with_clips_and_skip_missing(run_cli, tmp_path):
    import shutil

    from interp.manifest import read_manifest

    clips = tmp_path / "clips"
    shutil.copytree(sample_audio_dir("meld"), clips)
    (clips / "dia2_utt0.wav").unlink()
    args = ["data", "load", "--task", "meld", "--input", sample_path("meld"), "--audio-dir", clips, "--out", tmp_path / "m.jsonl"]
    code, _, err = run_cli(*args)
    assert code == 2 and "no clip dia2_utt0.wav" in err and not (tmp_path / "m.jsonl").exists()
    code, _, err = run_cli(*args, "--skip-missing")
    assert code == 0 and "skipped 1 items" in err
    assert len(read_manifest(tmp_path / "m.jsonl")) == 11


@pytest.mark.parametrize("args, message", [
    (["data", "load", "--task", "imdb", "--input", "{sst2}", "--out", "{out}/m.jsonl"], "unknown task 'imdb'"),
    (["data", "load", "--task", "agnews", "--input", "{bad_csv}", "--out", "{out}/m.jsonl"], "bad.csv:2: expected 3 columns"),
    (["data", "load", "--task", "agnews", "--input", "{latin1}", "--out", "{out}/m.jsonl"], "latin1.csv:1: not UTF-8"),
    (["data", "load", "--task", "meld", "--input", "{meld}", "--out", "{out}/m.jsonl"], "pass --audio-dir"),
    (["data", "load", "--task", "sst2", "--input", "{tmp}/missing.tsv", "--out", "{out}/m.jsonl"], "file not found"),
    (["data", "synth", "--task", "agnews", "--input", "{empty_text}", "--out", "{out}"], "empty title and description"),
    (["data", "synth", "--task", "sst2", "--input", "{sst2}", "--out", "{out}", "--voice", "zz-nowhere"], "unknown espeak voice"),
    (["data", "synth", "--task", "sst2", "--input", "{sst2}", "--out", "{out}", "--rate", "fast"], "--rate must be"),
    (["data", "synth", "--task", "sst2", "--input", "{sst2}", "--out", "{out}", "--backend", "piper"], "piper"),
    (["data", "synth", "--input", "{sst2}", "--out", "{out}"], "pass --task"),
    (["data", "noise", "--data", "{clean}", "--snr", "10,abc", "--out", "{out}"], "SNR 'abc' is not a number"),
    (["data", "noise", "--data", "{clean}", "--snr", "", "--out", "{out}"], "comma-separated list"),
    (["data", "noise", "--data", "{clean}", "--snr", "5", "--noise", "pink", "--out", "{out}"], "unknown noise 'pink'"),
    (["data", "noise", "--data", "{tmp}/nothing.jsonl", "--snr", "5", "--out", "{out}"], "manifest not found"),
    (["data", "noise", "--data", "{lost_audio}", "--snr", "5", "--out", "{out}"], "audio for item"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path, args, message):
    if "piper" in args and importlib.util.find_spec("piper") is not None:
        pytest.skip("piper-tts is installed here")
    paths = {"tmp": tmp_path, "out": tmp_path / "out", "sst2": sample_path("sst2"), "meld": sample_path("meld")}
    paths["bad_csv"] = tmp_path / "bad.csv"
    paths["bad_csv"].write_text('"1","t","d"\n"2","t"\n')
    paths["latin1"] = tmp_path / "latin1.csv"
    paths["latin1"].write_bytes('"1","caf\xe9","d"\n'.encode("latin-1"))
    paths["empty_text"] = tmp_path / "empty.csv"
    paths["empty_text"].write_text('"1","t","d"\n"2","",""\n')
    paths["clean"] = tmp_path / "clean.jsonl"
    paths["clean"].write_text(json.dumps({"id": "a", "audio": str(sample_audio_dir("meld") / "dia0_utt0.wav")}) + "\n")
    paths["lost_audio"] = tmp_path / "lost.jsonl"
    paths["lost_audio"].write_text(json.dumps({"id": "a", "audio": "gone.wav"}) + "\n")
    before = _files(tmp_path)
    code, out, err = run_cli(*[a.format(**paths) if isinstance(a, str) else a for a in args])
    assert code == 2
    assert message in err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out
    assert not (tmp_path / "out").exists()
    assert _files(tmp_path) == before


def test_entry_point_prints_no_traceback(tmp_path):
    if not INTERP.exists():
        pytest.skip("the interp entry point is not installed in this environment")
    proc = subprocess.run([str(INTERP), "data", "noise", "--data", str(tmp_path / "none.jsonl"), "--snr", "x",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("error:")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_tasks_templates_and_voices_commands(run_cli, tmp_path):
    code, _, err = run_cli("data", "tasks")
    assert code == 0 and "MUStARD" in err and "Sci/Tech" in err
    code, _, err = run_cli("data", "templates", "--out", tmp_path / "t.json")
    assert code == 0 and json.loads((tmp_path / "t.json").read_text())["tasks"]["sst2"]["instruction"]
    code, _, err = run_cli("data", "voices")
    assert code == 0 and "en-us" in err and "f3" in err


def test_demo_data_has_two_tasks_and_a_noisy_condition(tmp_path):
    """(How long it takes is measured by benchmarks/bench_demo_data.py, not asserted here.)"""
    from interp.audio import load_audio
    from interp.manifest import read_manifest

    paths = demo_data(tmp_path / "demo")
    clean = read_manifest(paths["clean"])
    assert {r["task"] for r in clean} == {"agnews", "sst2"} and len(clean) == 12
    assert len({r["id"] for r in clean}) == 12
    assert all(r["tts_backend"] == "espeak" for r in clean)
    assert list(paths["noisy"]) == [0.0]
    noisy = read_manifest(paths["noisy"][0.0])
    assert [r["id"] for r in noisy] == [r["id"] for r in clean]
    assert all(r["snr_db"] == 0.0 and r["noise"] == "babble" and abs(r["achieved_snr_db"]) < 0.1 for r in noisy)
    assert load_audio(noisy[0]["audio"]).size == load_audio(clean[0]["audio"]).size


def test_demo_data_can_include_natural_speech_tasks_and_several_snrs(tmp_path):
    from interp.manifest import read_manifest

    paths = demo_data(tmp_path, tasks=("csqa", "mustard"), n_per_task=3, snrs=(10, 0), seed=1)
    assert {r["task"] for r in read_manifest(paths["clean"])} == {"csqa", "mustard"}
    assert sorted(paths["noisy"]) == [0, 10]
