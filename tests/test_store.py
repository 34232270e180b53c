"""The store format, its reader, crash safety and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from interp.store import ActivationStore, ItemRecord, StoreWriter

INTERP = [sys.executable, "-c", "import cli; cli.main()"]


def _record(i: int, n: int, d: int, layers, rng) -> ItemRecord:
    return ItemRecord(
        id=f"i{i}", row={"id": f"i{i}", "audio": "x.wav", "task": "agnews", "label": ["World", "Sports"][i % 2],
                          "speaker": f"s{i % 3}", "snr_db": None if i % 2 else 5.0},
        resid={layer: rng.standard_normal((n, d)).astype(np.float32) for layer in layers},
        token_id=np.arange(n), index=np.arange(n), is_audio=np.arange(n) % 2 == 0,
        time_start=np.where(np.arange(n) % 2 == 0, np.arange(n) * 0.04, np.nan),
        time_end=np.where(np.arange(n) % 2 == 0, np.arange(n) * 0.04 + 0.04, np.nan), audio_seconds=1.0, truncated=False)


def test_roundtrip_select_iterate_and_transformer_lens_names(tmp_path):
    rng = np.random.default_rng(0)
    layers = ["embed", "0", "1"]
    w = StoreWriter.create(tmp_path / "s.h5", {"model_path": "m", "positions": "all"}, layers, 8, "float32")
    recs = [_record(i, 3 + i, 8, layers, rng) for i in range(7)]
    w.append(recs[:4])
    w.append(recs[4:])
    w.finish()
    with ActivationStore(tmp_path / "s.h5") as s:
        assert len(s) == 7 and s.complete and s.n_rows == sum(3 + i for i in range(7))
        np.testing.assert_array_equal(s.read("1", items=[5]), recs[5].resid["1"])
        sports = s.select(label="Sports")
        np.testing.assert_array_equal(sports, [1, 3, 5])
        np.testing.assert_array_equal(s.read(0, items=sports),
                                      np.concatenate([recs[i].resid["0"] for i in sports]))
        audio = s.read("embed", items=[2], audio_only=True)
        np.testing.assert_array_equal(audio, recs[2].resid["embed"][recs[2].is_audio])
        seen = []
        for items, rows, x in s.iter_batches("0", batch_items=3):
            assert len(items) <= 3 and x.shape == (len(rows), 8)
            seen.extend(items)
        assert seen == list(range(7))
        assert s.field("speaker")[4] == "s1"
        assert np.isnan(s.items["snr_db"][1]) and s.items["snr_db"][0] == 5.0
        tl = s.to_transformer_lens(items=[0])
        assert set(tl) == {"blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
        pooled = s.pooled("1", items=[3])
        np.testing.assert_allclose(pooled[0], recs[3].resid["1"][recs[3].is_audio].mean(0), rtol=1e-6)
    # plain h5py, no interp: the documented layout
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format"] == "interp-activations" and f.attrs["format_version"] == 1
        off = f["items/offsets"][:]
        assert off.shape == (8,) and off[-1] == f["resid/0"].shape[0]
        np.testing.assert_array_equal(f["resid/1"][off[5]:off[6]], recs[5].resid["1"])


def test_resume_drops_an_unfinished_batch(tmp_path):
    rng = np.random.default_rng(1)
    w = StoreWriter.create(tmp_path / "s.h5", {}, ["0"], 4, "float16")
    w.append([_record(i, 2, 4, ["0"], rng) for i in range(3)])
    # simulate rows of a batch whose commit never happened
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f["resid/0"].resize((20, 4))
        f["items/id"].resize((5,))
    assert StoreWriter(tmp_path / "s.h5").resume() == 3
    with ActivationStore(tmp_path / "s.h5") as s:
        assert s.n_rows == 6 and s.file["resid/0"].shape[0] == 6 and not s.complete


def _n_committed(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["n_items"])
    except (OSError, KeyError):
        return 0


def test_sigkill_then_resume_is_byte_identical(tiny_model_dir, tones, tmp_path):
    model = tiny_model_dir("qwen2-audio")
    manifest = tones(24, min_s=1.0, max_s=2.0)
    args = ["trace", str(model), "--data", str(manifest), "--layers", "all", "--positions", "all",
            "--batch-size", "2", "--device", "cpu"]
    ref, broken = tmp_path / "ref.h5", tmp_path / "broken.h5"
    env = {**os.environ, "COLUMNS": "200"}
    subprocess.run(INTERP + args + ["--out", str(ref)], check=True, capture_output=True, env=env)

    kills = 0
    rng = np.random.default_rng(0)
    for attempt in range(3):
        extra = ["--resume"] if broken.exists() else []
        proc = subprocess.Popen(INTERP + args + ["--out", str(broken)] + extra, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        target = _n_committed(broken) + 2 + int(rng.integers(0, 4))
        deadline = time.time() + 120
        while proc.poll() is None and _n_committed(broken) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere, mid-batch included
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # a killed store opens with plain h5py and its committed items are complete
        with h5py.File(broken, "r") as f:
            n = int(f.attrs["n_items"])
            assert f["items/offsets"].shape[0] >= n + 1
            assert f["resid/0"].shape[0] >= f["items/offsets"][n]
    assert kills >= 1
    done = subprocess.run(INTERP + args + ["--out", str(broken), "--resume"], capture_output=True, env=env, text=True)
    assert done.returncode == 0, done.stderr
    with ActivationStore(ref) as a, ActivationStore(broken) as b:
        assert a.n_items == b.n_items == 24 and b.complete
        assert a.ids == b.ids
        for layer in a.layers:
            assert a.read(layer, dtype=np.float16).tobytes() == b.read(layer, dtype=np.float16).tobytes()
        for name in a.positions:
            np.testing.assert_array_equal(a.positions[name], b.positions[name])
