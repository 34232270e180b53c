"""Sharded traces: `--shard K/N`, `interp store merge`, and ranks under torchrun. A merged store
must equal the store one process writes over the same manifest, dataset by dataset, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from interp.errors import InterpError
from interp.shard import Launch, Shard, rank_path
from interp.store import ActivationStore
from tests.helpers import one_line_error

LAYERS = ("--layers", "embed,0,1", "--batch-size", "2")


def datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_store(a, b) -> None:
    """Every dataset of `a` and `b`: the same names, dtypes, shapes and bytes (strings: the same values)."""
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    assert "resid/0" in da and "positions/is_audio" in da and "items/id" in da
    for name in da:
        x, y = da[name], db[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype == object:
            assert x.tolist() == y.tolist(), name
        else:
            assert x.tobytes() == y.tobytes(), name
    with ActivationStore(a) as sa, ActivationStore(b) as sb:
        assert sa.ids == sb.ids and sa.attrs["manifest_fingerprint"] == sb.attrs["manifest_fingerprint"]


# ---- the split ------------------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,count", [(7, 2, 3), (10, 3, 4), (3, 2, 5), (1, 1, 1), (16, 4, 2)])
def test_shards_partition_the_manifest_on_batch_boundaries(n, batch, count):
    bounds = [Shard(k, count).bounds(n, batch) for k in range(count)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (a, b), (c, _) in zip(bounds, bounds[1:]):
        assert b == c and a <= b
    assert all(a % batch == 0 for a, _ in bounds if a < n)
    sizes = [b - a for a, b in bounds]
    # balanced to within one batch
    assert max(sizes) - min(s for s in sizes) <= batch + (n % batch or batch)


@pytest.mark.parametrize("spec,needle", [("2/2", "below N"), ("1", "not K/N"), ("a/b", "not K/N"), ("0/0", "at least 1")])
def test_bad_shard_specs_are_one_line(spec, needle):
    with pytest.raises(InterpError, match=needle):
        Shard.parse(spec)


def test_launcher_environment_gives_rank_shard_and_path(tmp_path):
    assert Launch.from_env({}) is None
    launch = Launch.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    assert launch.shard == Shard(1, 4) and launch.local_rank == 0
    assert rank_path(tmp_path / "acts.h5", launch.shard) == tmp_path / "acts.shard-1-of-4.h5"
    with pytest.raises(InterpError, match="not below WORLD_SIZE"):
        Launch.from_env({"RANK": "4", "WORLD_SIZE": "4"})


# ---- trace and merge ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced(tmp_path_factory, tiny_model_dir):
    """A 7-item manifest traced whole and as 3 shards (batches of 2: shards of 2, 2 and 3 items)."""
    from click.testing import CliRunner

    from interp.cli import app
    from tests.conftest import write_tones

    root = tmp_path_factory.mktemp("shards")
    model, manifest = tiny_model_dir("qwen2-audio"), write_tones(root / "audio", 7)
    runner = CliRunner()
    import typer.main

    command = typer.main.get_command(app)

    def cli(*args):
        r = runner.invoke(command, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r

    cli("trace", model, "--data", manifest, "--out", root / "whole.h5", *LAYERS)
    for k in range(3):
        cli("trace", model, "--data", manifest, "--out", root / f"s{k}.h5", *LAYERS, "--shard", f"{k}/3")
    return {"root": root, "model": model, "manifest": manifest}


def test_merged_shards_equal_one_process_byte_for_byte(traced, run_cli):
    root = traced["root"]
    with ActivationStore(root / "s1.h5") as s:
        assert s.n_items == 2 and s.attrs["shard"] and '"index": 1' in s.attrs["shard"]
    merged = root / "merged.h5"
    # shards given in any order are merged in shard order
    code, out, err = run_cli("store", "merge", root / "s2.h5", root / "s0.h5", root / "s1.h5", "--out", merged)
    assert code == 0, err
    assert_same_store(root / "whole.h5", merged)
    with ActivationStore(merged) as s:
        assert s.complete and s.attrs["shard"] == "" and s.n_items == 7


def test_analyses_of_the_merged_store_equal_one_process(traced, run_cli, tiny_adapter):
    """A probe sweep, a LEACE fit, the logit lens and a TransformerLens export give the same
    numbers on both."""
    from interp.analysis.lens import lens_store
    from interp.analysis.leace import fit_eraser
    from interp.analysis.sweep import plan_probe, run_probe

    root = traced["root"]
    merged = root / "merged-analysis.h5"
    assert run_cli("store", "merge", *(root / f"s{k}.h5" for k in range(3)), "--out", merged)[0] == 0
    results = []
    for path in (root / "whole.h5", merged):
        with ActivationStore(path) as store:
            probe = run_probe(plan_probe(store, "label", layers="all", positions="audio-mean"), keep_probes=True)
            sweep = probe.to_dict()
            del sweep["store"]
            coefs = {k: p.coef.tobytes() for k, p in probe.probes.items()}
            eraser = fit_eraser(store, "label", layers="0,1")
            factors = {k: (e.proj_left.numpy().tobytes(), e.proj_right.numpy().tobytes())
                       for k, e in eraser.layer_erasers.items()}
            cache = {k: v.numpy().tobytes() for k, v in store.to_transformer_lens(items=[0, 6]).items()}
            lens = lens_store(tiny_adapter("qwen2-audio"), store, layers="0,1")
            read = [(it.id, it.text, {k: v.tobytes() for k, v in it.top_ids.items()},
                     {k: v.tobytes() for k, v in it.top_probs.items()}) for it in lens.items]
            results.append((sweep, coefs, factors, cache, read, json.dumps([lens.precision, lens.n_scored], sort_keys=True)))
    assert results[0][0]["layers"] and results[0][2] and len(results[0][4]) == 7
    assert results[0] == results[1]


def test_merge_refuses_shards_that_do_not_fit(traced, run_cli, tmp_path):
    import shutil

    root = traced["root"]
    s0, s1, s2 = (root / f"s{k}.h5" for k in range(3))
    out = tmp_path / "m.h5"
    one_line_error(*run_cli("store", "merge", s0, s2, "--out", out)[::2], "shard 1/3 is missing")
    one_line_error(*run_cli("store", "merge", s0, s1, s2, s1, "--out", out)[::2], "both shard 1/3")
    one_line_error(*run_cli("store", "merge", s0, s1, root / "whole.h5", "--out", out)[::2], "is not a shard")
    for key, value, needle in (("model_fingerprint", "0" * 16, "model (fingerprint)"),
                               ("positions", "all", "positions"), ("layers", '["embed", "0"]', "layers"),
                               ("dtype", "float32", "store dtype")):
        bad = tmp_path / f"bad-{key}.h5"
        shutil.copy(s1, bad)
        with h5py.File(bad, "r+") as f:
            f.attrs[key] = value
        one_line_error(*run_cli("store", "merge", s0, bad, s2, "--out", out)[::2], needle)
    assert not out.exists()
    assert run_cli("store", "merge", s0, s1, s2, "--out", out)[0] == 0
    one_line_error(*run_cli("store", "merge", s0, s1, s2, "--out", out)[::2], "--overwrite")


def test_merge_refuses_another_manifest_and_an_incomplete_shard(traced, run_cli, tmp_path, monkeypatch):
    import interp.trace as tr

    root, model, manifest = traced["root"], traced["model"], traced["manifest"]
    other = tmp_path / "other.h5"  # the first 5 items: another manifest, split otherwise
    assert run_cli("trace", model, "--data", manifest, "--out", other, *LAYERS, "--shard", "1/3", "--limit", "5")[0] == 0
    one_line_error(*run_cli("store", "merge", root / "s0.h5", other, root / "s2.h5", "--out", tmp_path / "m.h5")[::2],
                   "another manifest")
    # a shard whose trace died after its first batch
    calls = {"n": 0}
    record = tr.record

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return record(*a, **k)

    monkeypatch.setattr(tr, "record", dies)
    cut = tmp_path / "cut.h5"
    run_cli("trace", model, "--data", manifest, "--out", cut, *LAYERS, "--shard", "2/3")
    monkeypatch.setattr(tr, "record", record)
    with ActivationStore(cut) as s:
        assert not s.complete and s.n_items == 2
    one_line_error(*run_cli("store", "merge", root / "s0.h5", root / "s1.h5", cut, "--out", tmp_path / "m.h5")[::2],
                   "incomplete", "--resume")
    # resuming it as another shard is refused; as itself it completes, and then merges
    one_line_error(*run_cli("trace", model, "--data", manifest, "--out", cut, *LAYERS, "--shard", "1/3", "--resume")[::2],
                   "cannot resume", "shard 2/3")
    one_line_error(*run_cli("trace", model, "--data", manifest, "--out", cut, *LAYERS, "--resume")[::2],
                   "cannot resume", "whole manifest")
    assert run_cli("trace", model, "--data", manifest, "--out", cut, *LAYERS, "--shard", "2/3", "--resume")[0] == 0
    merged = tmp_path / "m.h5"
    assert run_cli("store", "merge", root / "s0.h5", root / "s1.h5", cut, "--out", merged)[0] == 0
    assert_same_store(root / "whole.h5", merged)


# ---- under a launcher ------------------------------------------------------------------------


def launcher(name: str) -> list[str]:
    """The command line that starts two CPU processes of what follows under `name`'s launcher."""
    import socket

    bin_dir = Path(sys.executable).parent
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python"]
    with socket.socket() as s:  # accelerate's default port may be taken by a parallel run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # accelerate starts several CPU processes through torchrun with --multi_gpu (its plain CPU
    # launcher starts one, or needs MPI)
    return [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "--no_python"]


def launch(name: str, args: list, cwd: Path) -> None:
    interp = Path(sys.executable).with_name("interp")
    proc = subprocess.run([*launcher(name), str(interp), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["torchrun", "accelerate"])
def test_two_ranks_under_a_launcher_trace_and_merge_like_one_process(name, traced, tmp_path):
    """Two CPU processes (gloo): each traces its rank's shard, rank 0 merges into --out."""
    out = tmp_path / "acts.h5"
    launch(name, ["trace", traced["model"], "--data", traced["manifest"], "--out", out, *LAYERS], tmp_path)
    assert rank_path(out, Shard(0, 2)).is_file() and rank_path(out, Shard(1, 2)).is_file()
    assert_same_store(traced["root"] / "whole.h5", out)
