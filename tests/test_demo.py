"""`interp demo` runs every capability end to end and writes what it says it writes."""

from __future__ import annotations

import json
from pathlib import Path

from interp.store import ActivationStore


def test_demo_writes_every_output(run_cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--out", out, "--n-per-task", "2")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    # speech synthesised for two text-sufficient tasks, clean and one noisy condition
    clean = [json.loads(l) for l in Path(summary["data"]["clean"]).read_text().splitlines()]
    noisy = [json.loads(l) for l in Path(summary["data"]["noisy_0db"]).read_text().splitlines()]
    assert {r["task"] for r in clean} == {"agnews", "sst2"} and all(r["snr_db"] == 0.0 for r in noisy)
    with ActivationStore(summary["stores"]["speech_llm"]) as s:
        assert s.n_items == len(clean) and s.complete
    with ActivationStore(summary["stores"]["whisper_encoder"]) as s:
        assert s.attrs["component"] == "encoder"
    # behaviour: both systems answered every item, clean and noisy; the report compares them
    for path in summary["predictions"]:
        preds = [json.loads(l) for l in Path(path).read_text().splitlines()]
        assert len(preds) == len(clean) + len(noisy)
        assert {p["snr_db"] for p in preds} == {None, 0.0}
    report = json.loads(Path(summary["compare"]["json"]).read_text())
    assert report and all(Path(p).is_file() for p in summary["compare"]["plots"])
    # probes, lens and erasure
    assert set(summary["probes"]) == {"label", "energy", "ctc"}
    assert all(Path(p).is_file() for p in summary["probes"].values())
    assert all(Path(p.strip()).is_file() for p in summary["lens"].split(","))
    erase = Path(summary["erase"]["markdown"]).read_text()
    assert "baseline" in erase and "random subspace" in erase
    assert "interp demo" in stdout and "taught the demo items' answers" in err
    # the taught speech LLM answers its items; erasing the label takes that away, a random subspace does not
    assert summary["teach_loss"]["last"] < summary["teach_loss"]["first"] / 4
    speech = [json.loads(l) for l in Path(summary["predictions"][0]).read_text().splitlines()]
    assert sum(p["correct"] for p in speech if p["snr_db"] is None) >= 3  # of 4 clean items
    accuracy: dict = {}
    for row in json.loads(Path(summary["erase"]["json"]).read_text())["accuracy"]:
        accuracy.setdefault(row["system"], []).append(row["correct"])
    assert sum(accuracy["label erased"]) < sum(accuracy["baseline"]) <= sum(accuracy["random subspace"]) + 1
