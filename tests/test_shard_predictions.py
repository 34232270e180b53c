"""Sharded behavioural runs: `interp run|cascade --shard K/N` and `interp merge-predictions` give
the predictions file one process writes (every field but the timing `seconds`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import one_line_error

ARGS = ("--batch-size", "2", "--max-new-tokens", "3")


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _untimed(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, demo_manifests):
    """`interp run` over the demo manifest: whole, and as shards 0/2 and 1/2."""
    import typer.main
    from click.testing import CliRunner

    from interp.cli import app

    root = tmp_path_factory.mktemp("pred-shards")
    model, data = tiny_model_dir("qwen2-audio"), demo_manifests["clean"]
    command, runner = typer.main.get_command(app), CliRunner()
    for out, extra in (("whole.jsonl", ()), ("p0.jsonl", ("--shard", "0/2")), ("p1.jsonl", ("--shard", "1/2"))):
        r = runner.invoke(command, [str(a) for a in ("run", model, "--data", data, "--out", root / out, *ARGS, *extra)])
        assert r.exit_code == 0, r.output
    return {"root": root, "model": model, "data": data}


def test_merged_run_shards_equal_one_process(runs, run_cli):
    root = runs["root"]
    p0, p1 = _read(root / "p0.jsonl"), _read(root / "p1.jsonl")
    assert len(p0) == 2 and len(p1) == 4  # 6 items in batches of 2: shards of 1 and 2 batches
    assert p1[0]["shard"]["index"] == 1 and p1[0]["shard"]["start"] == 2
    out = root / "merged.jsonl"
    code, _, err = run_cli("merge-predictions", root / "p1.jsonl", root / "p0.jsonl", "--out", out)
    assert code == 0, err
    whole, merged = _read(root / "whole.jsonl"), _read(out)
    assert _untimed(merged) == _untimed(whole)
    assert all("shard" not in r for r in merged)
    assert [list(r) for r in merged] == [list(r) for r in whole]  # the same fields in the same order


def test_merge_predictions_refuses_what_does_not_fit(runs, run_cli, tmp_path):
    root = runs["root"]
    p0, p1, whole = root / "p0.jsonl", root / "p1.jsonl", root / "whole.jsonl"
    out = tmp_path / "m.jsonl"
    one_line_error(*run_cli("merge-predictions", p0, "--out", out)[::2], "shard 1/2 is missing")
    one_line_error(*run_cli("merge-predictions", p0, p1, whole, "--out", out)[::2], "not a shard")
    one_line_error(*run_cli("merge-predictions", p0, p1, p1, "--out", out)[::2], "both shard 1/2")
    cut = tmp_path / "cut.jsonl"
    cut.write_text(p1.read_text().splitlines(keepends=True)[0])
    one_line_error(*run_cli("merge-predictions", p0, cut, "--out", out)[::2], "incomplete", "--resume")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "model_fingerprint": "0" * 16}) + "\n" for r in _read(p1)))
    one_line_error(*run_cli("merge-predictions", p0, other, "--out", out)[::2], "model (fingerprint)")
    assert not out.exists()


def test_run_shard_resume_checks_its_shard(runs, run_cli, tmp_path):
    model, data, root = runs["model"], runs["data"], runs["root"]
    out = tmp_path / "p.jsonl"
    out.write_text((root / "p1.jsonl").read_text())
    one_line_error(*run_cli("run", model, "--data", data, "--out", out, *ARGS, "--shard", "0/2", "--resume")[::2],
                   "cannot resume", "shard 1/2")
    one_line_error(*run_cli("run", model, "--data", data, "--out", out, *ARGS, "--resume")[::2],
                   "cannot resume", "whole manifest")
    one_line_error(*run_cli("run", model, "--data", data, "--out", out, "--batch-size", "3", "--max-new-tokens", "3",
                            "--shard", "1/2", "--resume")[::2], "cannot resume", "--batch-size")
    one_line_error(*run_cli("run", model, "--data", data, "--out", out, *ARGS, "--shard", "2/2")[::2], "below N")


def test_sharded_gold_cascade_merges_to_one_process(runs, run_cli, tmp_path):
    model, data = runs["model"], runs["data"]
    base = ("cascade", "--transcripts", "gold", "--llm", f"self:{model}", "--data", data, *ARGS)
    assert run_cli(*base, "--out", tmp_path / "whole.jsonl")[0] == 0
    for k in range(3):
        assert run_cli(*base, "--out", tmp_path / f"c{k}.jsonl", "--shard", f"{k}/3")[0] == 0
    assert run_cli("merge-predictions", *(tmp_path / f"c{k}.jsonl" for k in range(3)), "--out", tmp_path / "m.jsonl")[0] == 0
    assert _untimed(_read(tmp_path / "m.jsonl")) == _untimed(_read(tmp_path / "whole.jsonl"))


@pytest.mark.parametrize("name", ["torchrun", "accelerate"])
def test_two_ranks_under_a_launcher_run_and_merge_like_one_process(name, runs, tmp_path):
    from tests.test_shard import launch

    out = tmp_path / "preds.jsonl"
    launch(name, ["run", runs["model"], "--data", runs["data"], "--out", out, *ARGS], tmp_path)
    assert (tmp_path / "preds.shard-1-of-2.jsonl").is_file()
    assert _untimed(_read(out)) == _untimed(_read(runs["root"] / "whole.jsonl"))
