"""Nothing a user traced or answered is lost or silently mixed, and every mistake is one line.

Overwrites replace outputs only when the new run completes; a second writer is refused;
resumes check the model (fingerprint) and each item's input; predictions are appended and a
cut-off line is repaired; bad input of every kind gives one line and a non-zero exit; an
unexpected error gives one line and a log file; Ctrl-C says how to resume.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from interp.store import ActivationStore
from tests.helpers import one_line_error

INTERP = [sys.executable, "-c", "import cli; cli.main()"]
ENV = {**os.environ, "COLUMNS": "300"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def snapshot(path: Path) -> dict:
    with ActivationStore(path) as s:
        return {"ids": s.ids, "complete": s.complete, **{l: s.read(l).tobytes() for l in s.layers}}


def committed(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["n_items"])
    except (OSError, KeyError):
        return 0


def wait_for(cond, proc, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not cond() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)


def manifest_with(manifest: Path, name: str, change: dict[int, dict]) -> Path:
    """A copy of `manifest` (same folder, so relative audio paths hold) with rows changed."""
    rows = read_jsonl(manifest)
    for i, fields in change.items():
        rows[i].update(fields)
    return write_jsonl(manifest.parent / name, rows)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """Another checkpoint of the same architecture and size: only its weights differ."""
    from interp.testing import make_tiny

    return make_tiny("qwen2-audio", tmp_path_factory.mktemp("other") / "ckpt", seed=1)


# ---- the store: overwrite, identity, disk full, concurrent writers ---------------------------


def test_trace_overwrite_keeps_the_old_store_until_the_new_one_completes(run_cli, tiny_model_dir, tones, tmp_path):
    model, manifest, out = tiny_model_dir("qwen2-audio"), tones(4), tmp_path / "acts.h5"
    assert run_cli("trace", model, "--data", manifest, "--out", out, "--layers", "0")[0] == 0
    before = snapshot(out)
    (manifest.parent / "bad.wav").write_bytes(b"not audio at all")
    bad = manifest_with(manifest, "bad.jsonl", {2: {"audio": "bad.wav"}})
    code, _, err = run_cli("trace", model, "--data", bad, "--out", out, "--layers", "0", "--batch-size", "1",
                           "--overwrite")
    one_line_error(code, err, "cannot read audio")
    assert snapshot(out) == before  # all 4 items, not the 2 the failed run had traced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.h5", "audio"]  # its staging is gone


def test_trace_resume_refuses_another_checkpoint_of_the_same_architecture(run_cli, tiny_model_dir, other_model,
                                                                           tones, tmp_path):
    model, manifest, out = tiny_model_dir("qwen2-audio"), tones(3), tmp_path / "acts.h5"
    assert run_cli("trace", model, "--data", manifest, "--out", out, "--limit", "2")[0] == 0
    one_line_error(*run_cli("trace", other_model, "--data", manifest, "--out", out, "--resume")[::2],
                   "made by another model", "--overwrite")
    assert snapshot(out)["ids"] == ["u0", "u1"]


def test_trace_resume_refuses_a_manifest_whose_items_changed(run_cli, tiny_model_dir, tones, tmp_path):
    model, manifest, out = tiny_model_dir("qwen2-audio"), tones(4), tmp_path / "acts.h5"
    assert run_cli("trace", model, "--data", manifest, "--out", out, "--limit", "3")[0] == 0
    wav, sr = sf.read(manifest.parent / "u1.wav")
    sf.write(manifest.parent / "u1_noisy.wav", wav + 0.05 * np.random.default_rng(0).standard_normal(len(wav)), sr)
    noisy = manifest_with(manifest, "noisy.jsonl", {1: {"audio": "u1_noisy.wav"}})  # same ids, other audio
    one_line_error(*run_cli("trace", model, "--data", noisy, "--out", out, "--resume")[::2], "item 'u1'", "differs")
    # the instruction is part of an item's input too
    one_line_error(*run_cli("trace", model, "--data", manifest_with(manifest, "task.jsonl", {0: {"task": "agnews"}}),
                            "--out", out, "--resume")[::2], "item 'u0'")
    assert run_cli("trace", model, "--data", manifest, "--out", out, "--resume")[0] == 0
    assert snapshot(out)["ids"] == ["u0", "u1", "u2", "u3"]


def test_a_store_traced_in_bfloat16_serves_the_same_checkpoint_in_float32(run_cli, tiny_model_dir, other_model,
                                                                           tones, tmp_path):
    model, manifest, out = tiny_model_dir("qwen2-audio"), tones(2), tmp_path / "acts.h5"
    code, _, err = run_cli("trace", model, "--data", manifest, "--out", out, "--model-dtype", "bfloat16")
    assert code == 0, err
    with ActivationStore(out) as s:
        assert s.attrs["model_dtype"] == "bfloat16"
    code, _, err = run_cli("lens", model, "--store", out, "--model-dtype", "float32", "--out", tmp_path / "l.jsonl")
    assert code == 0, err
    assert "warning:" in err and "bfloat16" in err and "float32" in err
    one_line_error(*run_cli("lens", other_model, "--store", out, "--out", tmp_path / "m.jsonl")[::2],
                   "made by another model")


def test_a_full_disk_while_tracing_is_one_line_and_the_trace_resumes(run_cli, tiny_model_dir, tones, tmp_path,
                                                                     monkeypatch):
    """Simulated here by failing the writer's 5th write; tests/test_io_faults.py fills a real disk."""
    import interp.atomic

    model, manifest = tiny_model_dir("qwen2-audio"), tones(6)
    args = ["trace", model, "--data", manifest, "--batch-size", "1", "--positions", "all"]
    assert run_cli(*args, "--out", tmp_path / "ref.h5")[0] == 0
    real, calls = interp.atomic.write_all, [0]

    def full(fd, data):
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(interp.atomic, "write_all", full)
    out = tmp_path / "acts.h5"
    one_line_error(*run_cli(*args, "--out", out)[::2], f"no space left on device at {tmp_path}",
                   "free space and rerun with --resume")
    assert 0 < committed(out) < 6
    monkeypatch.setattr(interp.atomic, "write_all", real)
    assert run_cli(*args, "--out", out, "--resume")[0] == 0
    assert snapshot(out) == snapshot(tmp_path / "ref.h5")


def test_two_writers_of_one_store_do_not_interleave(tiny_model_dir, tones, tmp_path):
    from interp.locks import OutputLock

    model, manifest, out = tiny_model_dir("qwen2-audio"), tones(40), tmp_path / "acts.h5"
    args = INTERP + ["trace", str(model), "--data", str(manifest), "--out", str(out), "--batch-size", "1"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for(lambda: committed(out) >= 1, first)
        assert first.poll() is None, "the first trace ended before the second could start"
        second = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=ENV, timeout=300)
        one_line_error(second.returncode, second.stderr, "is being written by another process", f"pid {first.pid}",
                       "interp trace")
    finally:
        first.kill()
        first.wait()
    ids = snapshot(out)["ids"]
    assert ids == [f"u{i}" for i in range(len(ids))]  # each item once, in order
    with OutputLock(out):  # the killed writer's lock died with it
        pass


def test_ctrl_c_says_which_command_resumes_the_work(run_cli, tiny_model_dir, tones, tmp_path):
    model, manifest, out = tiny_model_dir("qwen2-audio"), tones(8), tmp_path / "acts.h5"
    # SIGINT at its default disposition, as in a terminal: a test run that a shell started in the
    # background inherits SIGINT ignored, and the trace would never see the signal
    proc = subprocess.Popen(INTERP + ["trace", str(model), "--data", str(manifest), "--out", str(out), "--batch-size",
                                      "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: committed(out) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err
    last = [l for l in err.splitlines() if l.strip()][-1]
    assert last.startswith("interrupted; the finished items are kept: resume with `interp trace "), last
    command = last.split("`")[1]
    assert command.endswith("--resume")
    assert run_cli(*shlex.split(command)[1:])[0] == 0
    assert snapshot(out)["ids"] == [f"u{i}" for i in range(8)]


def test_unexpected_errors_are_one_line_with_a_log_file(run_cli, tiny_model_dir, tones, tmp_path, monkeypatch):
    import interp.trace

    def broken(*args, **kwargs):
        raise RuntimeError("boom inside the library")

    monkeypatch.setattr(interp.trace, "trace", broken)
    monkeypatch.setenv("INTERP_LOG_DIR", str(tmp_path / "logs"))
    args = ["trace", tiny_model_dir("qwen2-audio"), "--data", tones(1), "--out", tmp_path / "a.h5"]
    code, _, err = run_cli(*args)
    one_line_error(code, err, "unexpected RuntimeError: boom inside the library", "--debug")
    (log,) = (tmp_path / "logs").iterdir()
    assert str(log) in err and "Traceback" in log.read_text() and "boom inside the library" in log.read_text()
    code, _, err = run_cli(*args, "--debug")
    assert code == 1 and "Traceback" in err and "boom inside the library" in err


# ---- predictions: append, repair, identity ---------------------------------------------------


def _run(run_cli, model, data, out, *extra):
    return run_cli("run", model, "--data", data, "--out", out, "--max-new-tokens", "3", "--batch-size", "2", *extra)


def _answers(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_predictions_are_appended_per_batch_not_rewritten(tmp_path):
    from cascades.predictions import PredictionsFile

    path = tmp_path / "p.jsonl"
    with PredictionsFile(path) as preds:
        preds.add([{"id": "a", "prediction": "x"}])
        inode, first = path.stat().st_ino, path.read_bytes()
        preds.add([{"id": "b", "prediction": "y"}])
        assert path.stat().st_ino == inode and path.read_bytes().startswith(first)
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]


def test_run_resume_drops_a_cut_off_last_line_and_completes(run_cli, tiny_model_dir, tones, tmp_path):
    model, data, out = tiny_model_dir("qwen2-audio"), tones(4), tmp_path / "p.jsonl"
    assert _run(run_cli, model, data, out)[0] == 0
    whole = read_jsonl(out)
    out.write_bytes(out.read_bytes()[:-20])  # a kill in the middle of writing the last line
    code, _, err = _run(run_cli, model, data, out, "--resume")
    assert code == 0, err
    assert "warning:" in err and "cut-off last line" in err
    assert _answers(read_jsonl(out)) == _answers(whole)


def test_run_out_mistakes_are_one_line(run_cli, tiny_model_dir, tones, tmp_path):
    model, data = tiny_model_dir("qwen2-audio"), tones(2)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(*_run(run_cli, model, data, binary, "--resume")[::2], "not a predictions file")
    one_line_error(*_run(run_cli, model, data, tmp_path, "--overwrite")[::2], "is a folder")
    one_line_error(*_run(run_cli, model, data, tmp_path / "p.jsonl", "--resume", "--overwrite")[::2],
                   "--resume and --overwrite exclude each other")
    one_line_error(*_run(run_cli, model, data, tmp_path / "p.jsonl", "--limit", "0")[::2], "--limit must be at least 1")
    one_line_error(*_run(run_cli, model, data, tmp_path / "p.jsonl", "--limit", "-3")[::2], "--limit must be at least 1")
    assert binary.read_bytes() == bytes(range(256)) * 4 and not (tmp_path / "p.jsonl").exists()


def test_run_overwrite_keeps_the_old_predictions_until_the_new_run_completes(run_cli, tiny_model_dir, tones, tmp_path):
    model, data, out = tiny_model_dir("qwen2-audio"), tones(4), tmp_path / "p.jsonl"
    assert _run(run_cli, model, data, out)[0] == 0
    before = out.read_bytes()
    (data.parent / "bad.wav").write_bytes(b"not audio")
    bad = manifest_with(data, "bad.jsonl", {2: {"audio": "bad.wav"}})
    one_line_error(*_run(run_cli, model, bad, out, "--overwrite")[::2], "cannot read audio")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "p.jsonl"]


def test_run_resume_refuses_another_model_and_changed_inputs(run_cli, tiny_model_dir, other_model, tones, tmp_path):
    model, data, out = tiny_model_dir("qwen2-audio"), tones(4), tmp_path / "p.jsonl"
    assert _run(run_cli, model, data, out, "--limit", "2")[0] == 0
    before = out.read_bytes()
    one_line_error(*_run(run_cli, other_model, data, out, "--resume")[::2], "another model", "item 'u0'")
    wav, sr = sf.read(data.parent / "u1.wav")
    sf.write(data.parent / "u1_other.wav", wav[::-1], sr)
    changed = manifest_with(data, "changed.jsonl", {1: {"audio": "u1_other.wav"}})
    one_line_error(*_run(run_cli, model, changed, out, "--resume")[::2], "item 'u1'", "another input")
    assert out.read_bytes() == before
    assert _run(run_cli, model, data, out, "--resume")[0] == 0 and len(read_jsonl(out)) == 4


def test_cascade_resume_refuses_another_backbone_or_other_transcripts(run_cli, tiny_model_dir, other_model,
                                                                       demo_manifests, tmp_path):
    model, data, out = tiny_model_dir("qwen2-audio"), demo_manifests["clean"], tmp_path / "c.jsonl"
    args = ["cascade", "--data", data, "--out", out, "--transcripts", "gold", "--max-new-tokens", "2"]
    assert run_cli(*args, "--llm", f"self:{model}", "--limit", "2")[0] == 0
    one_line_error(*run_cli(*args, "--llm", f"self:{other_model}", "--resume")[::2], "another model")
    rows = read_jsonl(data)
    rows[0]["transcript"] = "an entirely different sentence"  # what the LLM reads with gold transcripts
    changed = write_jsonl(tmp_path / "changed.jsonl", rows)
    one_line_error(*run_cli(*[changed if a == data else a for a in args], "--llm", f"self:{model}", "--resume")[::2],
                   f"item '{rows[0]['id']}'", "another input")
    assert run_cli(*args, "--llm", f"self:{model}", "--resume")[0] == 0
    assert len(read_jsonl(out)) == len(rows)


def test_a_second_writer_of_a_predictions_file_is_refused(run_cli, tiny_model_dir, tones, tmp_path):
    out = tmp_path / "p.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cascades.predictions import PredictionsFile\n"
                               f"p = PredictionsFile({str(out)!r}, command='interp run held')\n"
                               "print('held', flush=True)\ntime.sleep(120)"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(*_run(run_cli, tiny_model_dir("qwen2-audio"), tones(2), out)[::2],
                       "is being written by another process", f"pid {holder.pid}", "interp run held")
    finally:
        holder.kill()
        holder.wait()
    assert _run(run_cli, tiny_model_dir("qwen2-audio"), tones(2), out)[0] == 0


def test_compare_refuses_one_system_name_for_two_models(run_cli, tiny_model_dir, other_model, tones, tmp_path):
    data = tones(4)
    rows = read_jsonl(data)
    first, second = write_jsonl(data.parent / "first.jsonl", rows[:2]), write_jsonl(data.parent / "second.jsonl", rows[2:])
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"  # two checkpoints whose folders share a name
    for src, dst in ((tiny_model_dir("qwen2-audio"), a), (other_model, b)):
        dst.parent.mkdir()
        dst.symlink_to(src)
    assert _run(run_cli, a, first, tmp_path / "pa.jsonl")[0] == 0
    assert _run(run_cli, b, second, tmp_path / "pb.jsonl")[0] == 0
    assert _run(run_cli, a, data, tmp_path / "pc.jsonl", "--system", "reference")[0] == 0
    one_line_error(*run_cli("compare", tmp_path / "pa.jsonl", tmp_path / "pb.jsonl", tmp_path / "pc.jsonl",
                            "--out", tmp_path / "report")[::2], "system 'model' answered with two different models",
                   "--system")


# ---- bad input: one line each --------------------------------------------------------------


def test_damaged_stores_are_one_line(run_cli, tmp_path):
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        f.attrs.update(format="interp-activations", format_version=1, layers='["0"]', d_model=4, n_items=0)
    one_line_error(*run_cli("probe", bare, "--target", "label")[::2], "damaged", "no 'items/offsets'")
    layers = tmp_path / "layers.h5"
    with h5py.File(layers, "w") as f:
        f.attrs.update(format="interp-activations", format_version=1, layers="0,4,8", d_model=4)
    one_line_error(*run_cli("probe", layers, "--target", "label")[::2], "damaged", "'layers' attribute")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, tiny_model_dir):
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.trace import trace
    from tests.conftest import write_tones

    folder = tmp_path_factory.mktemp("small")
    manifest = write_tones(folder / "audio", 6)
    trace(load_model(tiny_model_dir("qwen2-audio"), device="cpu"), read_manifest(manifest), folder / "acts.h5",
          layers="0,1", positions="all", dtype="float32")
    return folder / "acts.h5"


def test_probe_max_positions_must_be_positive(run_cli, small_store, tmp_path):
    for bad in ("-1", "0"):
        one_line_error(*run_cli("probe", small_store, "--target", "energy", "--max-positions", bad, "--out",
                                tmp_path / "p.json")[::2], "--max-positions must be at least 1")
    assert not (tmp_path / "p.json").exists()


def test_lens_arguments_are_checked_before_anything_is_written(run_cli, tiny_model_dir, small_store, tmp_path):
    model = tiny_model_dir("qwen2-audio")
    out = tmp_path / "l.jsonl"
    one_line_error(*run_cli("lens", model, "--store", small_store, "--top-k", "1000000", "--out", out)[::2],
                   "--top-k 1000000", "vocabulary")
    one_line_error(*run_cli("lens", model, "--store", small_store, "--plot-item", "nope", "--out", out)[::2],
                   "--plot-item 'nope'", "u0")
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_lens_on_a_store_without_positions_gives_advice_that_works(run_cli, tiny_model_dir, tmp_path):
    from interp.models import load_model
    from interp.store import StoreWriter

    model = tiny_model_dir("qwen2-audio")
    adapter = load_model(model, device="cpu")
    empty = tmp_path / "empty.h5"  # a trace killed before its first batch was committed
    StoreWriter.create(empty, {"model_fingerprint": adapter.fingerprint(), "positions": "audio",
                               "component": "decoder", "model_path": str(model)}, ["0"], adapter.d_model, "float32")
    for positions in ("audio", "all"):
        code, _, err = run_cli("lens", model, "--store", empty, "--positions", positions, "--out", tmp_path / "l.jsonl")
        one_line_error(code, err, "holds no items", "interp trace")
        assert "--positions" not in err  # no advice to try another positions mode that cannot help


def test_cascade_llm_must_be_a_text_llm(run_cli, tiny_model_dir, demo_manifests, tmp_path):
    whisper, data = tiny_model_dir("whisper"), demo_manifests["clean"]
    for llm in (str(whisper), f"self:{whisper}"):
        one_line_error(*run_cli("cascade", "--data", data, "--out", tmp_path / "c.jsonl", "--llm", llm,
                                "--transcripts", "gold")[::2], "Whisper")
    one_line_error(*run_cli("cascade", "--data", data, "--out", tmp_path / "c.jsonl", "--llm",
                            tiny_model_dir("qwen2-audio"), "--transcripts", "gold")[::2], "self:")
    assert not (tmp_path / "c.jsonl").exists()


def test_checkpoint_outputs_are_never_mixed(run_cli, tiny_model_dir, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    one_line_error(*run_cli("models", "make-tiny", "qwen2-audio", "--out", afile)[::2], "is a file")
    ckpt = tmp_path / "ckpt"
    assert run_cli("models", "make-tiny", "whisper", "--out", ckpt)[0] == 0
    (ckpt / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    one_line_error(*run_cli("models", "make-tiny", "qwen2-audio", "--out", ckpt)[::2], "not empty", "--overwrite")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert run_cli("models", "make-tiny", "qwen2-audio", "--out", ckpt, "--overwrite")[0] == 0
    assert not (ckpt / "notes.txt").exists()  # replaced whole, not mixed
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "qwen2_audio"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "file"]
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    one_line_error(*run_cli("models", "extract-llm", ckpt, "--out", ckpt)[::2], "speech checkpoint itself")
    one_line_error(*run_cli("models", "extract-llm", ckpt, "--out", ckpt, "--overwrite")[::2], "speech checkpoint itself")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_compare_with_one_shared_item_is_one_line(run_cli, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "prediction": "pos", "label": "pos", "system": "a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "prediction": "neg", "label": "pos", "system": "b"}])
    one_line_error(*run_cli("compare", a, b, "--out", tmp_path / "r")[::2], "only one item", "at least two")
    assert not (tmp_path / "r").exists()


def test_truncated_wav_is_one_line(run_cli, tiny_model_dir, tmp_path):
    wav = tmp_path / "cut.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(16000) / 7)).astype(np.float32), 16000, subtype="PCM_16")
    wav.write_bytes(wav.read_bytes()[:44 + 10])  # header kept, 5 samples left
    m = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "audio": "cut.wav"}])
    one_line_error(*run_cli("trace", tiny_model_dir("qwen2-audio"), "--data", m, "--out", tmp_path / "a.h5")[::2],
                   "truncated WAV", "1.00 s", "0.00 s")


def test_folders_and_symlink_loops_are_named_for_what_they_are(run_cli, tiny_model_dir, tmp_path):
    model = tiny_model_dir("qwen2-audio")
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    for audio, what in (("folder.wav", "is a folder"), ("loop.wav", "symbolic link loop")):
        m = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "audio": audio}])
        one_line_error(*run_cli("trace", model, "--data", m, "--out", tmp_path / "a.h5")[::2], what)
    (tmp_path / "data").mkdir()
    (tmp_path / "data.jsonl").symlink_to(tmp_path / "data.jsonl")
    for data, what in (("data", "is a folder"), ("data.jsonl", "symbolic link loop")):
        one_line_error(*run_cli("trace", model, "--data", tmp_path / data, "--out", tmp_path / "a.h5")[::2],
                       "manifest", what)
    one_line_error(*run_cli("trace", model, "--data", tmp_path / "m.jsonl", "--out", tmp_path / "a.h5", "--limit",
                            "0")[::2], "--limit must be at least 1")
    assert not (tmp_path / "a.h5").exists()


def test_a_manifest_with_a_byte_order_mark_is_read(run_cli, tiny_model_dir, tones, tmp_path):
    manifest = tones(2)
    bom = manifest.parent / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    code, _, err = run_cli("trace", tiny_model_dir("qwen2-audio"), "--data", bom, "--out", tmp_path / "a.h5")
    assert code == 0, err
    assert snapshot(tmp_path / "a.h5")["ids"] == ["u0", "u1"]


def test_an_overlong_tsv_field_names_the_real_limit(run_cli, tmp_path):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\nfine .\t1\n" + "word " * 220_000 + "\t0\n")
    one_line_error(*run_cli("data", "load", "--task", "sst2", "--input", tsv, "--out", tmp_path / "m.jsonl")[::2],
                   "longer than 131,072 characters", "csv reader", "shorten or remove that item")


def test_a_killed_synth_leaves_nothing_behind_after_the_next_run(tmp_path):
    from tasks import sample_path

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "speech"
    args = ["data", "synth", "--task", "sst2", "--input", str(sample_path("sst2")), "--out", str(out)]
    proc = subprocess.Popen(INTERP + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**ENV, "TMPDIR": str(scratch)})
    wait_for(lambda: any(out.glob(".staging-*/audio/*.wav")), proc)
    proc.kill()
    proc.wait()
    assert list(out.glob(".staging-*")) and list(scratch.glob("interp-espeak-*"))  # what a kill leaves
    done = subprocess.run(INTERP + args + ["--limit", "2"], capture_output=True, text=True,
                          env={**ENV, "TMPDIR": str(scratch)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(out.glob(".staging-*"))
    assert not [p for p in scratch.glob("interp-espeak-*") if f"-{proc.pid}." in p.name]
