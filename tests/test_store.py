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


@pytest.mark.parametrize("finished", [True, False])
def test_roundtrip_select_iterate_and_transformer_lens_names(tmp_path, finished):
    rng = np.random.default_rng(0)
    layers = ["embed", "0", "1"]
    w = StoreWriter.create(tmp_path / "s.h5", {"model_path": "m", "positions": "all"}, layers, 8, "float32")
    recs = [_record(i, 3 + i, 8, layers, rng) for i in range(7)]
    w.append(recs[:4])
    w.append(recs[4:])
    if finished:
        w.finish()
    with ActivationStore(tmp_path / "s.h5") as s:
        assert len(s) == 7 and s.complete == finished and s.n_rows == sum(3 + i for i in range(7))
        np.testing.assert_array_equal(s.read("1", items=[5]), recs[5].resid["1"])
        np.testing.assert_array_equal(s.read("1", items=[3, 4]), np.concatenate([recs[3].resid["1"], recs[4].resid["1"]]))
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
        tl = s.to_transformer_lens(items=[0, 3])
        assert set(tl) == {"blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
        assert tl.mask.tolist() == [[True] * 3 + [False] * 3, [True] * 6] and tl.ids == ["i0", "i3"]
        for name, layer in (("blocks.0.hook_resid_pre", "embed"), ("blocks.1.hook_resid_post", "1")):
            assert tl[name].shape == (2, 6, 8)
            np.testing.assert_array_equal(tl[name][0, :3].numpy(), recs[0].resid[layer])
            np.testing.assert_array_equal(tl[name][1].numpy(), recs[3].resid[layer])
            assert not tl[name][0, 3:].any()
        pooled = s.pooled("1", items=[3])
        np.testing.assert_allclose(pooled[0], recs[3].resid["1"][recs[3].is_audio].mean(0), rtol=1e-6)
    # plain h5py, no interp: the documented layouts
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format"] == "interp-activations" and f.attrs["format_version"] == 2
        off = f["items/offsets"][:]
        assert off.shape == (8,) and f["items/id"][5].decode() == "i5"
        if finished:
            assert f.attrs["layout"] == "single" and off[-1] == f["resid/0"].shape[0]
            np.testing.assert_array_equal(f["resid/1"][off[5]:off[6]], recs[5].resid["1"])
            assert not list(tmp_path.glob("s.h5.parts-*"))  # the parts went into the one file
        else:
            assert f.attrs["layout"] == "parts" and "resid" not in f
            folder = tmp_path / f.attrs["parts_folder"]
            starts = np.concatenate([[0], np.cumsum(f["parts/n_rows"][:])])
            k = int(np.searchsorted(starts, off[5], side="right") - 1)
            with h5py.File(folder / f["parts/file"][k].decode(), "r") as part:
                a = off[5] - starts[k]
                np.testing.assert_array_equal(part["resid/1"][a:a + off[6] - off[5]], recs[5].resid["1"])


def test_resume_removes_what_an_interrupted_append_left(tmp_path):
    rng = np.random.default_rng(1)
    w = StoreWriter.create(tmp_path / "s.h5", {}, ["0"], 4, "float16")
    w.append([_record(i, 2, 4, ["0"], rng) for i in range(3)])
    # what a kill can leave: a part written but never committed, temporary files, the
    # staging index and parts folder of an abandoned --overwrite run
    (w.parts_dir / "part-000001.h5").write_bytes(b"uncommitted")
    (w.parts_dir / ".part-000002.h5.tmp-123").write_bytes(b"half")
    (tmp_path / ".s.h5.tmp-123").write_bytes(b"half an index")
    (tmp_path / ".s.h5.staging-abc").write_bytes(b"staged index")
    (tmp_path / "s.h5.parts-abc").mkdir()
    (tmp_path / "other.h5").write_bytes(b"not ours")
    assert StoreWriter(tmp_path / "s.h5").resume() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5", "s.h5", w.parts_dir.name]
    assert [p.name for p in w.parts_dir.iterdir()] == ["part-000000.h5"]
    with ActivationStore(tmp_path / "s.h5") as s:
        assert s.n_items == 3 and s.n_rows == 6 and not s.complete


def test_format_1_stores_stay_readable_and_are_not_appended_to(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:  # the format-1 layout, written in place by older versions
        f.attrs.update(format="interp-activations", format_version=1, layers=json.dumps(["0"]), d_model=2,
                       dtype="float32", n_items=1, complete=False)
        for name, data in {"id": np.array(["a", "b"], dtype=object), "task": np.array(["", ""], dtype=object),
                           "label": np.array(["", ""], dtype=object), "transcript": np.array(["", ""], dtype=object),
                           "meta": np.array(["{}", "{}"], dtype=object)}.items():
            f.create_dataset(f"items/{name}", data=data, dtype=h5py.string_dtype())
        f["items/offsets"] = np.array([0, 2, 3])
        for name in ("token_id", "index"):
            f[f"positions/{name}"] = np.zeros(3, np.int64)
        f["positions/is_audio"] = np.ones(3, bool)
        f["positions/time_start"] = f["positions/time_end"] = np.zeros(3)
        f["resid/0"] = np.arange(6, dtype=np.float32).reshape(3, 2)
    with ActivationStore(path) as s:  # the second item was never committed: unseen
        assert s.ids == ["a"] and s.read(0).tolist() == [[0, 1], [2, 3]]
    with pytest.raises(Exception, match="older interp"):
        StoreWriter(path)


def _n_committed(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["n_items"])
    except (OSError, KeyError):
        return 0


def test_sigkill_then_resume_is_byte_identical(tiny_model_dir, tones, tmp_path):
    model = tiny_model_dir("qwen2-audio")
    manifest = tones(12, min_s=1.0, max_s=2.0)
    args = ["trace", str(model), "--data", str(manifest), "--layers", "all", "--positions", "all",
            "--batch-size", "2", "--device", "cpu"]
    ref, broken = tmp_path / "ref.h5", tmp_path / "broken.h5"
    env = {**os.environ, "COLUMNS": "200"}
    subprocess.run(INTERP + args + ["--out", str(ref)], check=True, capture_output=True, env=env)

    kills = 0
    rng = np.random.default_rng(0)
    for attempt in range(2):  # every kill point of an append is covered by test_store_integrity's sweep
        extra = ["--resume"] if broken.exists() else []
        proc = subprocess.Popen(INTERP + args + ["--out", str(broken)] + extra, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        target = _n_committed(broken) + 2 + int(rng.integers(0, 3))
        deadline = time.time() + 120
        while proc.poll() is None and _n_committed(broken) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere, mid-batch included
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # a killed store opens and its committed items are complete
        with ActivationStore(broken) as s:
            assert s.n_rows == s.offsets[-1] and s.read("0").shape[0] == s.n_rows
    assert kills >= 1
    done = subprocess.run(INTERP + args + ["--out", str(broken), "--resume"], capture_output=True, env=env, text=True)
    assert done.returncode == 0, done.stderr
    with ActivationStore(ref) as a, ActivationStore(broken) as b:
        assert a.n_items == b.n_items == 12 and b.complete
        assert a.ids == b.ids
        for layer in a.layers:
            assert a.read(layer, dtype=np.float16).tobytes() == b.read(layer, dtype=np.float16).tobytes()
        for name in a.positions:
            np.testing.assert_array_equal(a.positions[name], b.positions[name])
