"""`interp demo` runs the study end to end on the real models and writes what it says it writes."""

from __future__ import annotations

import json
from pathlib import Path

from interp.store import ActivationStore


def test_demo_writes_every_output(run_cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--out", out, "--n-sentences", "2")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    # held-out speech: every clip an item of both tasks, clean and in babble
    clean = [json.loads(l) for l in Path(summary["data"]["clean"]).read_text().splitlines()]
    noisy = [json.loads(l) for l in Path(summary["data"]["noisy"]).read_text().splitlines()]
    assert len(clean) == len(noisy) == 8 and {r["task"] for r in clean} == {"sentiment", "pitch"}
    assert {r["pitch_class"] for r in clean} == {"low", "high"} and all(r["snr_db"] == 0.0 for r in noisy)
    # real models: the organisms' folders name their base models, which are the converted real ones
    assert set(summary["models"]) == {"whisper-tiny.en", "smollm2-135m-instruct", "organism:cascade",
                                      "organism:acoustic"}
    with ActivationStore(summary["stores"]["organism_cascade"]) as s:
        assert s.n_items == 4 and s.complete and len(s.layers) == 31  # embed + 30 blocks of SmolLM2
    with ActivationStore(summary["stores"]["whisper_encoder"]) as s:
        assert s.attrs["component"] == "encoder"
    # behaviour: four systems; the gold cascade on clean items only; the report compares them
    systems = {}
    for path in summary["predictions"]:
        preds = [json.loads(l) for l in Path(path).read_text().splitlines()]
        systems[preds[0]["system"]] = preds
    assert {k: len(v) for k, v in systems.items()} == {"organism:cascade": 16, "organism:acoustic": 16,
                                                       "cascade:whisper-tiny.en->smollm2": 16,
                                                       "cascade:gold->smollm2": 8}
    report = json.loads(Path(summary["compare"]["json"]).read_text())
    assert report and all(Path(p).is_file() for p in summary["compare"]["plots"])
    # a real Whisper hears the held-out sentences (not the random noise of a tiny checkpoint)
    words = {w.strip(".,").lower() for t in summary["transcripts"].values() for w in t.split()}
    assert words & {w.strip(".,").lower() for r in clean for w in r["transcript"].split()}
    # probes, lens and erasure
    assert set(summary["probes"]) == {"label", "pitch_class", "pitch", "energy", "chars", "whisper_encoder_ctc"}
    assert all(Path(p).is_file() for p in summary["probes"].values())
    assert all(Path(p.strip()).is_file() for p in summary["lens"].split(","))
    implicit = [json.loads(l) for l in Path(summary["implicit_cascade"]).read_text().splitlines()]
    assert len(implicit) == 4 and implicit[0]["system"].startswith("cascade:lens-L")
    assert len(summary["figures"]) == 11 and all(Path(p).is_file() for p in summary["figures"])
    erase = Path(summary["erase"]["markdown"]).read_text()
    assert "baseline" in erase and "random subspace" in erase
    assert "interp demo" in stdout and "ground truth" in err
