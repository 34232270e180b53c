"""`interp compare` and cascades.compare on synthetic predictions files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint
from typer.testing import CliRunner

import cli
from cascades.answers import read_predictions
from cascades.compare import compare_files
from cascades.report import write_report
from cascades.plots import ACCURACY_PNG, KAPPA_PNG, write_plots
from interp.errors import InterpError

LABELS = {"ag_news": ["world", "sports", "business", "sci/tech"], "sst2": ["positive", "negative"]}
SNRS = [None, 10.0, 0.0]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _system_rows(system: str, error_rate: float, seed: int, n: int = 60, with_system: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for task, labels in LABELS.items():
        for i in range(n):
            for snr in SNRS:
                label = labels[i % len(labels)]
                wrong = rng.random() < error_rate + (0.0 if snr is None else 0.02 * (10 - snr))
                pred = str(rng.choice(labels + ["unparsed"])) if wrong else label
                row = {"id": f"{task}-{i}", "task": task, "snr_db": snr, "prediction": pred, "label": label}
                if with_system:
                    row["system"] = system
                rows.append(row)
    return rows


@pytest.fixture
def two_files(tmp_path):
    a = _write(tmp_path / "speech.jsonl", _system_rows("speech-llm", 0.2, seed=1))
    b = _write(tmp_path / "cascade.jsonl", _system_rows("cascade", 0.15, seed=2))
    return a, b


def _cell(rows, task, snr):
    return {r["id"]: r for r in rows if r["task"] == task and r["snr_db"] == snr}


def test_report_matches_directly_computed_statistics(two_files):
    a_path, b_path = two_files
    rows_a = [json.loads(x) for x in a_path.read_text().splitlines()]
    rows_b = [json.loads(x) for x in b_path.read_text().splitlines()]
    report = compare_files([a_path, b_path], n_resamples=500, seed=0)
    assert [s["name"] for s in report.systems] == ["speech-llm", "cascade"]
    assert len(report.comparisons) == len(LABELS) * len(SNRS)

    p_values = []
    for c in report.comparisons:
        assert (c.system_a, c.system_b) == ("speech-llm", "cascade")
        ca_rows, cb_rows = _cell(rows_a, c.task, c.snr_db), _cell(rows_b, c.task, c.snr_db)
        ids = sorted(ca_rows)
        pa = [ca_rows[i]["prediction"] for i in ids]
        pb = [cb_rows[i]["prediction"] for i in ids]
        ok_a = np.array([ca_rows[i]["prediction"] == ca_rows[i]["label"] for i in ids])
        ok_b = np.array([cb_rows[i]["prediction"] == cb_rows[i]["label"] for i in ids])
        assert c.n == len(ids) == 60
        assert c.kappa == pytest.approx(cohen_kappa_score(pa, pb), abs=1e-12)
        assert c.kappa_ci_low < c.kappa < c.kappa_ci_high
        assert c.agreement == pytest.approx(np.mean(np.array(pa) == np.array(pb)))
        assert c.accuracy_a.n_correct == ok_a.sum() and c.accuracy_b.n_correct == ok_b.sum()
        assert (c.accuracy_a.ci_low, c.accuracy_a.ci_high) == pytest.approx(proportion_confint(ok_a.sum(), 60, method="wilson"))
        both_wrong = [i for i, (x, y) in enumerate(zip(ok_a, ok_b)) if not x and not y]
        assert c.n_both_wrong == len(both_wrong)
        assert c.n_same_wrong == sum(pa[i] == pb[i] for i in both_wrong)
        if both_wrong:
            assert c.error_overlap == pytest.approx(c.n_same_wrong / len(both_wrong))
        table = [[np.sum(ok_a & ok_b), np.sum(ok_a & ~ok_b)], [np.sum(~ok_a & ok_b), np.sum(~ok_a & ~ok_b)]]
        assert c.mcnemar_p == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)
        assert (c.mcnemar_a_only_correct, c.mcnemar_b_only_correct) == (table[0][1], table[1][0])
        p_values.append(c.mcnemar_p)
    q = multipletests(p_values, method="fdr_bh")[1]
    assert [c.mcnemar_q for c in report.comparisons] == pytest.approx(list(q))
    assert report.settings["n_tests"] == len(p_values)

    # Clean first, then milder to harsher noise.
    assert [c.snr_db for c in report.comparisons[:3]] == [None, 10.0, 0.0]
    acc = {(a.system, a.task, a.snr_db): a for a in report.accuracy}
    cell = _cell(rows_a, "sst2", 0.0)
    assert acc[("speech-llm", "sst2", 0.0)].accuracy.n_correct == sum(r["prediction"] == r["label"] for r in cell.values())
    assert acc[("speech-llm", "sst2", 0.0)].n_unparsed == sum(r["prediction"] == "unparsed" for r in cell.values())


def test_report_files_and_plots_are_written(two_files, tmp_path):
    report = compare_files(list(two_files), n_resamples=200)
    out = tmp_path / "report"
    plots = write_plots(report, out)
    paths = write_report(report, out, plots)
    assert {p.name for p in plots} == {KAPPA_PNG, ACCURACY_PNG}
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_nan(token):
        raise AssertionError(f"report.json holds {token}, which is not JSON")

    data = json.loads(paths["json"].read_text(), parse_constant=no_nan)
    assert data["comparisons"][0]["kappa"] == pytest.approx(report.comparisons[0].kappa)
    assert data["comparisons"][0]["snr_db"] is None
    md = paths["markdown"].read_text()
    assert "| speech-llm | cascade | ag_news | clean | 60 |" in md and KAPPA_PNG in md
    assert sorted(os.listdir(out)) == sorted(["report.json", "report.md", KAPPA_PNG, ACCURACY_PNG])  # no temp files left


def test_unshared_items_are_reported_and_left_out(tmp_path):
    rows_a = _system_rows("A", 0.2, seed=1, n=20)
    rows_b = _system_rows("B", 0.2, seed=2, n=20)
    rows_a = [r for r in rows_a if r["id"] != "sst2-3"] + [{"id": "extra-a", "task": "sst2", "prediction": "positive", "label": "positive", "system": "A"}]
    rows_b = [r for r in rows_b if not (r["id"] == "sst2-5" and r["snr_db"] == 0.0)]
    report = compare_files([_write(tmp_path / "a.jsonl", rows_a), _write(tmp_path / "b.jsonl", rows_b)], n_resamples=100)
    (cov,) = report.coverage
    assert (cov.n_only_a, cov.n_only_b) == (2, 3)  # extra-a, sst2-5@0dB | sst2-3 at three SNRs
    assert {"id": "extra-a", "snr_db": None} in cov.examples_only_a
    assert {"id": "sst2-5", "snr_db": 0.0} in cov.examples_only_a
    assert [k["id"] for k in cov.examples_only_b] == ["sst2-3"] * 3
    cells = {(c.task, c.snr_db): c for c in report.comparisons}
    assert cells[("sst2", None)].n == 19 and cells[("sst2", 0.0)].n == 18 and cells[("ag_news", None)].n == 20
    # The statistics use the shared items only.
    a = {r["id"]: r["prediction"] for r in rows_a if r.get("task") == "sst2" and r.get("snr_db") == 0.0}
    b = {r["id"]: r["prediction"] for r in rows_b if r["task"] == "sst2" and r["snr_db"] == 0.0}
    shared = sorted(a.keys() & b.keys())
    assert cells[("sst2", 0.0)].kappa == pytest.approx(cohen_kappa_score([a[i] for i in shared], [b[i] for i in shared]))


def test_system_defaults_to_file_stem_and_same_system_files_merge(tmp_path):
    rows = _system_rows("x", 0.2, seed=3, n=10, with_system=False)
    clean = [r for r in rows if r["snr_db"] is None]
    noisy = [r for r in rows if r["snr_db"] is not None]
    ref = _write(tmp_path / "reference.jsonl", _system_rows("x", 0.1, seed=4, n=10, with_system=False))
    # Two runs of one system written separately (clean, noisy) name it in the rows.
    c = _write(tmp_path / "run_clean.jsonl", [dict(r, system="model") for r in clean])
    n = _write(tmp_path / "run_noisy.jsonl", [dict(r, system="model") for r in noisy])
    report = compare_files([ref, c, n], n_resamples=100)
    assert [(s["name"], s["n_items"], len(s["files"])) for s in report.systems] == [("reference", 60, 1), ("model", 60, 2)]
    assert report.coverage[0].n_paired == 60 and report.coverage[0].n_only_a == 0


def test_answers_are_case_insensitive_and_unparsed_is_always_wrong(tmp_path):
    a = _write(tmp_path / "a.jsonl", [
        {"id": "1", "prediction": "Positive", "label": "positive"},
        {"id": "2", "prediction": " NEGATIVE ", "label": "positive"},
        {"id": "3", "prediction": "", "label": "negative"},
        {"id": "4", "prediction": "unparsed", "correct": True},
    ])
    b = _write(tmp_path / "b.jsonl", [
        {"id": "1", "prediction": "positive", "correct": False},  # the file's scorer wins over label
        {"id": "2", "prediction": "negative", "label": "positive"},
        {"id": "3", "prediction": "UNPARSED", "label": "negative"},
        {"id": "4", "prediction": "positive", "correct": True},
    ])
    rows = {p.id: p for p in read_predictions(a)}
    assert rows["1"].correct is True and rows["2"].prediction == "negative" and rows["3"].prediction == "unparsed"
    assert rows["4"].correct is False
    (c,) = compare_files([a, b], n_resamples=50).comparisons
    assert c.agreement == 0.75  # only item 4 differs: "unparsed" vs "positive"
    assert (c.accuracy_a.n_correct, c.accuracy_b.n_correct) == (1, 1)
    assert (c.n_both_wrong, c.n_same_wrong) == (2, 2)  # items 2 and 3, both "same wrong answer"


def test_unknown_correctness_leaves_out_correctness_statistics(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": str(i), "prediction": "xy"[i % 2]} for i in range(10)])
    b = _write(tmp_path / "b.jsonl", [{"id": str(i), "prediction": "xy"[i % 3 % 2], "label": "x"} for i in range(10)])
    report = compare_files([a, b], n_resamples=50)
    (c,) = report.comparisons
    assert c.mcnemar_p is None and c.mcnemar_q is None and c.accuracy_a is None and c.error_overlap is None
    assert "correctness unknown" in c.note and not math.isnan(c.kappa)
    assert report.settings["n_tests"] == 0
    assert next(x for x in report.accuracy if x.system == "a").accuracy is None


def test_adding_a_system_does_not_change_an_existing_pair(two_files, tmp_path):
    third = _write(tmp_path / "third.jsonl", _system_rows("third", 0.3, seed=9))
    two = compare_files(list(two_files), n_resamples=300, seed=4).comparisons
    three = compare_files([*two_files, third], n_resamples=300, seed=4).comparisons
    pair = [c for c in three if (c.system_a, c.system_b) == ("speech-llm", "cascade")]
    assert [(c.kappa_ci_low, c.kappa_ci_high) for c in pair] == [(c.kappa_ci_low, c.kappa_ci_high) for c in two]
    assert len(three) == 3 * len(two)


def test_accuracy_only_tasks_get_no_pairwise_statistics(two_files):
    report = compare_files(list(two_files), n_resamples=50, accuracy_only=["ag_news"])
    assert {c.task for c in report.comparisons} == {"sst2"}
    assert any(a.task == "ag_news" for a in report.accuracy)


def test_kappa_undefined_is_reported_not_raised(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": str(i), "prediction": "positive", "label": "positive"} for i in range(5)])
    b = _write(tmp_path / "b.jsonl", [{"id": str(i), "prediction": "positive", "label": "positive"} for i in range(5)])
    (c,) = compare_files([a, b], n_resamples=50).comparisons
    assert math.isnan(c.kappa) and "expected agreement is 1" in c.kappa_undefined_reason
    assert c.mcnemar_p == 1.0


BAD_INPUTS = {
    "not_json": ('{"id": "1", "prediction": "a"}\n{"id": 2, "prediction": \n', "bad.jsonl:2: not valid JSON"),
    "not_object": ('["id", "prediction"]\n', "bad.jsonl:1: expected a JSON object"),
    "missing_id": ('{"id": "1", "prediction": "a"}\n{"prediction": "b"}\n', "bad.jsonl:2: missing required field 'id'"),
    "missing_prediction": ('{"id": "1"}\n', "bad.jsonl:1: missing required field 'prediction'"),
    "duplicate": ('{"id": "1", "prediction": "a"}\n{"id": "2", "prediction": "a"}\n{"id": "1", "prediction": "b"}\n', "bad.jsonl:3: duplicate id '1'"),
    "duplicate_snr": ('{"id": "1", "snr_db": 5, "prediction": "a"}\n{"id": "1", "snr_db": 5.0, "prediction": "b"}\n', "bad.jsonl:2: duplicate id '1' at 5 dB"),
    "bad_snr": ('{"id": "1", "snr_db": "loud", "prediction": "a"}\n', "bad.jsonl:1: 'snr_db' must be a number"),
    "bad_correct": ('{"id": "1", "prediction": "a", "correct": "yes"}\n', "bad.jsonl:1: 'correct' must be true or false"),
    "task_conflict": ('{"id": "1", "task": "ag_news", "prediction": "a"}\n{"id": "2", "task": "sst2", "prediction": "a"}\n', "bad.jsonl:1: id '1' has task 'ag_news' but task 'sst2'"),
    "no_overlap": ('{"id": "x1", "prediction": "a"}\n', "share no items"),
    "empty": ("\n", "bad.jsonl has no predictions"),
    "system_on_some_lines": ('{"id": "1", "system": "s", "prediction": "a"}\n{"id": "2", "prediction": "a"}\n', "bad.jsonl:2: no 'system' field, but"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_one_line_interp_error(tmp_path, case):
    good = _write(tmp_path / "good.jsonl", [
        {"id": "1", "task": "sst2", "prediction": "a"},
        {"id": "2", "task": "sst2", "prediction": "b"},
    ])
    text, expected = BAD_INPUTS[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(InterpError) as err:
        compare_files([good, bad], n_resamples=10)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_duplicate_id_at_another_snr_is_not_a_duplicate(tmp_path):
    rows = [{"id": "1", "prediction": "a", "snr_db": s} for s in (None, 0, 5)]
    assert len(read_predictions(_write(tmp_path / "a.jsonl", rows))) == 3


def test_one_system_is_an_error(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "1", "prediction": "a", "system": "s"}])
    b = _write(tmp_path / "b.jsonl", [{"id": "2", "prediction": "a", "system": "s"}])
    with pytest.raises(InterpError, match="need at least two systems"):
        compare_files([a, b])


def _compare_argv(*args: str) -> list[str]:
    return ["compare", *args]


def test_cli_compare_writes_report(two_files, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, _compare_argv(*map(str, two_files), "--out", str(out), "--resamples", "200"))
    assert result.exit_code == 0, result.output
    assert "speech-llm vs cascade" in result.output and "report.md" in result.output
    assert (out / "report.json").is_file() and (out / KAPPA_PNG).is_file() and (out / ACCURACY_PNG).is_file()


@pytest.mark.parametrize("case", ["missing_prediction", "task_conflict", "no_overlap"])
def test_cli_bad_input_exits_nonzero_with_one_line(two_files, tmp_path, case):
    text, expected = BAD_INPUTS[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text, encoding="utf-8")
    good = _write(tmp_path / "good.jsonl", [{"id": "1", "task": "sst2", "prediction": "a"}, {"id": "2", "task": "sst2", "prediction": "b"}])
    # A wide terminal: Rich would otherwise fold a long message at 80 columns.
    env = dict(os.environ, COLUMNS="400")
    proc = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", *_compare_argv(str(good), str(bad), "--out", str(tmp_path / "out"))],
        capture_output=True, text=True, env=env, cwd=Path(cli.__file__).parent, timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
