"""Dataset loaders: each on its shipped sample (released format) and on malformed files,
whose errors must name the file and the line."""

import json
import shutil

import pytest

from interp.errors import InterpError
from tasks import get_task, load_dataset, sample_audio_dir, sample_path
from tasks.datasets import SAMPLE_FILES, detokenize, read_items, write_dataset

TASK_NAMES = ["triviaqa", "agnews", "sst2", "csqa", "meld", "mustard"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_loader_reads_its_sample(name):
    task = get_task(name)
    rows = load_dataset(name, sample_path(name), sample_audio_dir(name))
    assert len(rows) == 12
    assert len({r["id"] for r in rows}) == 12
    for row in rows:
        assert row["task"] == name and row["transcript"].strip()
        assert task.spoken_text(row).strip()
        if task.labels:
            assert row["label"] in task.labels
        if not task.text_sufficient:
            assert row["audio"].endswith(".wav")
    if task.labels:
        assert len({r["label"] for r in rows}) == len(task.labels)  # the samples cover every label


def test_sample_specifics():
    ag = load_dataset("agnews", sample_path("agnews"))
    assert ag[0]["label"] == "Business" and ag[0]["transcript"].startswith("Harbor Freight Line Posts Record Quarter (Reuters). Reuters -")
    assert "country's" in ag[4]["transcript"] and "\\" not in ag[9]["transcript"]
    sst = load_dataset("sst2", sample_path("sst2"))
    assert sst[4]["transcript"] == "the lead actor's wooden delivery drains the life out of a promising script."
    assert sst[4]["label"] == "negative" and sst[0]["label"] == "positive"
    csqa = load_dataset("csqa", sample_path("csqa"))
    assert csqa[0]["choices"][1] == "refrigerator" and csqa[0]["label"] == "B"
    assert csqa[0]["transcript"].endswith("A: cupboard. B: refrigerator. C: oven. D: garden. E: mailbox.")
    tq = load_dataset("triviaqa", sample_path("triviaqa"))
    assert tq[0]["label"] == "Mars" and {"Mars", "red planet"} <= set(tq[0]["answers"])
    meld = load_dataset("meld", sample_path("meld"), sample_audio_dir("meld"))
    assert meld[0]["id"] == "meld-dia0_utt0" and meld[0]["audio"].endswith("dia0_utt0.wav") and meld[0]["speaker"] == "Rachel"
    must = load_dataset("mustard", sample_path("mustard"), sample_audio_dir("mustard"))
    assert must[0]["label"] == "sarcastic" and must[1]["label"] == "not_sarcastic" and must[0]["context"]


def test_limit_and_text_only_meld():
    assert len(load_dataset("agnews", sample_path("agnews"), limit=3)) == 3
    rows = load_dataset("meld", sample_path("meld"))
    assert all(r["audio"] is None for r in rows)
    with pytest.raises(InterpError, match="positive"):
        load_dataset("agnews", sample_path("agnews"), limit=0)


def test_detokenize():
    assert detokenize("it 's not a -lrb- bad -rrb- film , is n't it ?") == "it's not a (bad) film, isn't it?"


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


MALFORMED = [
    ("agnews", "agnews.csv", '"1","t","d"\n"2","t","d"\n"3","only two"\n', ":3: expected 3 columns"),
    ("agnews", "agnews.csv", '"1","t","d"\n"7","t","d"\n', ":2: unknown AG News class index '7'"),
    ("agnews", "agnews.csv", '"1","t","d"\n"2","",""\n', ":2: empty title and description"),
    ("agnews", "agnews.csv", b'"1","t","d"\n"2","caf\xe9","d"\n', ":2: not UTF-8"),
    ("sst2", "sst2.tsv", "a good film\t1\n", ":1: header lacks sentence, label"),
    ("sst2", "sst2.tsv", "sentence\tlabel\nfine\t1\nawful\t2\n", ":3: unknown SST-2 label '2'"),
    ("sst2", "sst2.tsv", "sentence\tlabel\n \t1\n", ":2: empty sentence"),
    ("sst2", "sst2.tsv", "sentence\tlabel\nfine\t1\tx\n", ":2: 3 columns where the header has 2"),
    ("csqa", "csqa.jsonl", '{"id": "a", "question": {"stem": "q?", "choices": []}, "answerKey": "A"}\n',
     ":1: expected five non-empty choices"),
    ("csqa", "csqa.jsonl", "\n{not json}\n", ":2: not valid JSON"),
    ("csqa", "csqa.jsonl", json.dumps({"id": "a", "question": {"stem": "q?", "choices": [
        {"label": x, "text": x.lower()} for x in "ABCDE"]}}) + "\n", ":1: no 'answerKey'"),
    ("csqa", "csqa.jsonl", json.dumps({"id": "a", "question": {"stem": "q?", "choices": [
        {"label": x, "text": x.lower()} for x in "ABCDE"]}, "answerKey": "F"}) + "\n", ":1: unknown csqa label 'F'"),
    ("triviaqa", "triviaqa.json", '{"Data": [\n  {"Question": "q?",\n   "Answer": {"Value": "x", "Aliases": []}\n  ]}',
     ":4: not valid JSON"),
    ("triviaqa", "triviaqa.json", '{"data": []}', "expected a JSON object with a 'Data' list"),
    ("triviaqa", "triviaqa.json", '{"Data": [\n {"QuestionId": "q1", "Question": "q?", "Answer": {"Value": "x", "Aliases": []}},\n'
     ' {"QuestionId": "q2", "Question": "r?", "Answer": {"Aliases": ["y"]}}\n]}', ":3: missing 'Answer.Value'"),
    ("meld", "meld.csv", "Utterance,Speaker,Emotion,Dialogue_ID\nhi,Ross,joy,0\n", ":1: header lacks Utterance_ID"),
    ("meld", "meld.csv", "Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\nhi,Ross,joy,0,0\nhey,Ross,confused,0,1\n",
     ":3: unknown meld label 'confused'"),
    ("meld", "meld.csv", "Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\nhi,Ross,joy,zero,0\n",
     ":2: Dialogue_ID and Utterance_ID must be integers"),
    ("meld", "meld.csv", "Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\n\"hi,Ross,joy,0,0\n", "malformed CSV"),
    ("mustard", "sarcasm_data.json", '{\n "1_1": {"utterance": "hi", "sarcasm": false},\n "1_2": {"utterance": "oh great", "sarcasm": "yes"}\n}',
     ":3: entry '1_2' has 'sarcasm' 'yes'"),
    ("mustard", "sarcasm_data.json", '{\n "1_1": {"utterance": "", "sarcasm": false}\n}', ":2: entry '1_1' has an empty 'utterance'"),
    ("mustard", "sarcasm_data.json", '["not", "a", "mapping"]', "expected a JSON object mapping clip ids"),
]


@pytest.mark.parametrize("task, name, content, message", MALFORMED)
def test_malformed_file_names_file_and_line(tmp_path, task, name, content, message):
    path = _write(tmp_path, name, content)
    with pytest.raises(InterpError) as err:
        load_dataset(task, path)
    text = str(err.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def test_every_task_has_a_malformed_case():
    from tasks import TASKS

    assert {t for t, *_ in MALFORMED} == set(TASKS)  # the tasks the code defines, not this file's list


def test_sst2_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"idx": [0, 1], "sentence": ["a fine film .", "a dull film ."], "label": [1, 0]}), tmp_path / "s.parquet")
    rows = load_dataset("sst2", tmp_path / "s.parquet")
    assert [r["label"] for r in rows] == ["positive", "negative"] and rows[0]["transcript"] == "a fine film."
    pq.write_table(pa.table({"text": ["x"], "label": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(InterpError, match="parquet lacks columns sentence"):
        load_dataset("sst2", tmp_path / "bad.parquet")


def test_agnews_header_row_is_tolerated(tmp_path):
    path = _write(tmp_path, "train.csv", 'Class Index,Title,Description\n2,"Cup final","A late goal won it."\n')
    (row,) = load_dataset("agnews", path)
    assert row["label"] == "Sports" and row["transcript"] == "Cup final. A late goal won it."


def test_missing_clips(tmp_path):
    audio = tmp_path / "clips"
    shutil.copytree(sample_audio_dir("meld"), audio)
    (audio / "dia1_utt1.wav").unlink()
    with pytest.raises(InterpError, match=r"meld\.csv:6: no clip dia1_utt1\.wav or dia1_utt1\.mp4"):
        load_dataset("meld", sample_path("meld"), audio)
    rows = load_dataset("meld", sample_path("meld"), audio, missing_audio="keep")
    assert [r["id"] for r in rows if r["audio"] is None] == ["meld-dia1_utt1"]
    with pytest.raises(InterpError, match="audio folder not found"):
        load_dataset("mustard", sample_path("mustard"), tmp_path / "nowhere")


def test_bad_paths_and_names(tmp_path):
    with pytest.raises(InterpError, match="file not found"):
        load_dataset("agnews", tmp_path / "missing.csv")
    with pytest.raises(InterpError, match="unknown task 'imdb'"):
        load_dataset("imdb", sample_path("sst2"))
    with pytest.raises(InterpError, match="holds no agnews items"):
        load_dataset("agnews", _write(tmp_path, "empty.csv", "\n"))


def test_video_clips_need_ffmpeg(tmp_path, monkeypatch):
    import interp.audio

    monkeypatch.setattr("shutil.which", lambda name: None)
    (tmp_path / "dia0_utt0.mp4").write_bytes(b"not really a video")
    rows = [{"id": "meld-dia0_utt0", "task": "meld", "audio": str(tmp_path / "dia0_utt0.mp4"), "label": "joy"}]
    with pytest.raises(InterpError, match="ffmpeg is not on PATH.*ffmpeg -i"):
        write_dataset(rows, tmp_path / "out" / "meld.jsonl")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InterpError, match="video container"):
        interp.audio.load_audio(tmp_path / "dia0_utt0.mp4")


def test_write_dataset_and_read_items_round_trip(tmp_path):
    from interp.manifest import read_manifest

    rows = load_dataset("mustard", sample_path("mustard"), sample_audio_dir("mustard"))
    out = write_dataset(rows, tmp_path / "m.jsonl")
    back = read_manifest(out)
    assert [r["id"] for r in back] == [r["id"] for r in rows] and back[0]["audio"] == rows[0]["audio"]
    text_rows = load_dataset("agnews", sample_path("agnews"), limit=4)
    manifest = write_dataset(text_rows, tmp_path / "ag.jsonl")
    assert [r["id"] for r in read_items(None, manifest)] == [r["id"] for r in text_rows]
    assert len(read_items("agnews", sample_path("agnews"), limit=2)) == 2
    with pytest.raises(InterpError, match="not 'sst2'"):
        read_items("sst2", manifest)
    with pytest.raises(InterpError, match="pass --task"):
        read_items(None, sample_path("agnews"))


def test_sample_files_are_small():
    from tasks.datasets import SAMPLES_DIR

    total = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 2_000_000
    assert set(SAMPLE_FILES) == set(TASK_NAMES)


def test_video_clips_are_extracted_with_ffmpeg(tmp_path, monkeypatch):
    import os
    import sys

    from interp.manifest import read_manifest

    # A stand-in ffmpeg that "extracts" by copying a sample WAV to its output argument.
    wav = sample_audio_dir("meld") / "dia0_utt0.wav"
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport shutil, sys\nshutil.copy({str(wav)!r}, sys.argv[-1])\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "dia0_utt0.mp4").write_bytes(b"video")
    (clips / "dia0_utt1.wav").write_bytes(wav.read_bytes())
    rows = load_dataset("meld", sample_path("meld"), clips, limit=2)
    assert rows[0]["audio"].endswith(".mp4") and rows[1]["audio"].endswith(".wav")
    out = read_manifest(write_dataset(rows, tmp_path / "m.jsonl"))
    assert out[0]["audio"] == str(tmp_path / "m_audio" / "meld-dia0_utt0.wav")
    assert out[0]["source_audio"].endswith("dia0_utt0.mp4") and out[1]["audio"].endswith("dia0_utt1.wav")


def test_staged_manifest_paths_resolve_from_their_final_folder(tmp_path):
    """Audio outside the staging folder keeps pointing at itself once the manifest is moved."""
    from interp.manifest import read_manifest, write_manifest

    (tmp_path / "data").mkdir()
    clip = tmp_path / "data" / "a.wav"
    clip.write_bytes(b"x")
    final = tmp_path / "out" / "deep"
    stage = final / ".staging-x"
    stage.mkdir(parents=True)
    write_manifest(stage / "m.jsonl", [{"id": "a", "audio": str(clip)}, {"id": "b", "audio": str(stage / "b.wav")}],
                   staged=(stage, final))
    (stage / "m.jsonl").rename(final / "m.jsonl")
    rows = read_manifest(final / "m.jsonl")
    assert rows[0]["audio"] == str(clip.resolve()) and rows[1]["audio"] == str((final / "b.wav").resolve())
