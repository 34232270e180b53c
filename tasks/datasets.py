"""Loaders for the six datasets in their standard released formats, read from local files.

Nothing is downloaded: each loader reads the file a user already has and returns manifest
rows (`id`, `task`, `transcript`, `label`, ... ; see interp.manifest), so every command
downstream reads one format. Text-sufficient rows carry no `audio` until `interp data
synth` speaks them; MELD and MUStARD rows point at their clips in `audio_dir`.

Formats:
- AG News: CSV without header (a header row is tolerated): class index 1-4, title, description.
- SST-2: GLUE TSV with a `sentence<TAB>label` header (label 0/1), or parquet with those columns.
- CommonsenseQA: JSON Lines with `id`, `question.stem`, `question.choices[{label,text}]`, `answerKey`.
- TriviaQA: JSON `{"Data": [{"Question", "QuestionId", "Answer": {"Value", "Aliases", "NormalizedAliases"}}]}`.
- MELD: CSV with `Utterance`, `Speaker`, `Emotion`, `Dialogue_ID`, `Utterance_ID`; clips `dia{D}_utt{U}.mp4|wav`.
- MUStARD: `sarcasm_data.json`, key -> `utterance`, `speaker`, `context`, `sarcasm`; clips `{key}.mp4|wav`.

A malformed row raises InterpError naming the file and line (JSON files: the line of the
offending entry where it can be found).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Callable

from interp.errors import InterpError
from interp.progress import Progress
from interp.progress import stage as start_stage
from interp.manifest import parse_jsonl
from tasks.formats import csv_records, csv_rows, line_of, parse_json, read_parquet, read_text, tsv_records
from tasks.task import LETTERS, get_task

SAMPLES_DIR = Path(__file__).with_name("samples")
SAMPLE_FILES = {"triviaqa": "triviaqa.json", "agnews": "agnews.csv", "sst2": "sst2.tsv", "csqa": "csqa.jsonl",
                "meld": "meld.csv", "mustard": "sarcasm_data.json"}
SAMPLE_AUDIO_DIRS = {"meld": "meld_audio", "mustard": "mustard_audio"}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".mp4", ".mkv", ".webm", ".avi", ".mov")
AGNEWS_CLASSES = {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"}


def sample_path(task: str) -> Path:
    """The sample file shipped for `task`, in its dataset's released format."""
    return SAMPLES_DIR / SAMPLE_FILES[get_task(task).name]


def sample_audio_dir(task: str) -> Path | None:
    """The folder of sample clips for MELD / MUStARD; None for TTS tasks."""
    name = SAMPLE_AUDIO_DIRS.get(get_task(task).name)
    return SAMPLES_DIR / name if name else None


def load_dataset(task: str, path: str | Path, audio_dir: str | Path | None = None, limit: int | None = None,
                 missing_audio: str = "error") -> list[dict]:
    """Manifest rows for `task` from `path` in its released format.

    `audio_dir` (MELD, MUStARD) is searched for each row's clip; `missing_audio` is "error"
    (default) or "keep" (the row keeps `audio` None, for the caller to count and drop).
    """
    name = get_task(task).name
    path = Path(path)
    from interp.errors import path_problem

    problem = path_problem(path, f"{name} file")
    if problem:
        raise InterpError(f"{problem}; pass the dataset file in its released format (e.g. {SAMPLE_FILES[name]})")
    if limit is not None and limit < 1:
        raise InterpError(f"--limit must be a positive number of items, got {limit}")
    if missing_audio not in ("error", "keep"):
        raise InterpError(f"missing_audio must be 'error' or 'keep', got {missing_audio!r}")
    if audio_dir is not None:
        audio_dir = Path(audio_dir)
        if not audio_dir.is_dir():
            raise InterpError(f"audio folder not found: {audio_dir}; pass the folder holding the {name} clips")
    loader = _LOADERS[name]
    if name in ("meld", "mustard"):
        rows = loader(path, limit, lambda stem, where: _attach(stem, where, audio_dir, missing_audio))
    else:
        rows = loader(path, limit)
    if not rows:
        raise InterpError(f"{path} holds no {name} items; check that it is the right file")
    _check_unique(rows, path)
    return rows


def find_audio(audio_dir: str | Path, stem: str) -> Path | None:
    """The first clip named `stem` with a known audio or video suffix in `audio_dir`."""
    for suffix in AUDIO_SUFFIXES:
        for candidate in (Path(audio_dir) / f"{stem}{suffix}", Path(audio_dir) / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_items(task: str | None, path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows to speak: a manifest (JSON Lines with 'transcript' or 'text') or a released dataset file."""
    from interp.manifest import read_manifest

    path = Path(path)
    if path.suffix.lower() == ".jsonl" and path.is_file() and _is_manifest(path):
        rows = read_manifest(path, limit=limit, require_audio=False)
        for row in rows:
            if not row.get("task") and task is None:
                raise InterpError(f"{path}: row {row['id']} has no 'task'; pass --task")
            if task is not None and row.get("task") and get_task(row["task"]).name != get_task(task).name:
                raise InterpError(f"{path}: row {row['id']} is task {row['task']!r}, not {task!r}; drop --task or split the manifest")
            row.setdefault("task", get_task(task).name if task else row.get("task"))
        return rows
    if task is None:
        raise InterpError(f"{path} is not a manifest; pass --task to read it as a dataset file")
    return load_dataset(task, path, limit=limit, missing_audio="keep")


# ---- one loader per dataset ---------------------------------------------------------------

def _load_agnews(path: Path, limit: int | None) -> list[dict]:
    rows = []
    for line, fields in csv_rows(path):
        if line == 1 and fields and not fields[0].strip().isdigit() and "class" in fields[0].lower():
            continue  # the Kaggle copy has a header; the original has none
        if len(fields) != 3:
            raise InterpError(f"{path}:{line}: expected 3 columns (class index, title, description), got {len(fields)}")
        index, title, description = fields
        try:
            label = AGNEWS_CLASSES[int(index)]
        except (ValueError, KeyError):
            raise InterpError(f"{path}:{line}: unknown AG News class index {index!r}; expected 1-4 (World, Sports, Business, Sci/Tech)") from None
        title, description = _clean_agnews(title), _clean_agnews(description)
        if not title and not description:
            raise InterpError(f"{path}:{line}: empty title and description; remove the row")
        text = f"{_end_sentence(title)} {description}".strip() if title else description
        rows.append({"id": f"agnews-{len(rows) + 1:05d}", "task": "agnews", "transcript": text, "text": text,
                     "label": label, "title": title, "description": description, "source_line": line})
        if limit and len(rows) >= limit:
            break
    return rows


def _load_sst2(path: Path, limit: int | None) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        records = ((f"row {i}", r) for i, r in enumerate(read_parquet(path, ("sentence", "label"))))
    else:
        records = tsv_records(path, ("sentence", "label"))
    rows = []
    for where, record in records:
        sentence = str(record.get("sentence") or "").strip()
        if not sentence:
            raise InterpError(f"{path}:{where}: empty sentence; remove the row")
        label = str(record.get("label")).strip()
        if label not in ("0", "1"):
            raise InterpError(f"{path}:{where}: unknown SST-2 label {label!r}; expected 0 (negative) or 1 (positive)")
        text = detokenize(sentence)
        rows.append({"id": f"sst2-{len(rows) + 1:05d}", "task": "sst2", "transcript": text, "text": text,
                     "label": "positive" if label == "1" else "negative", "sentence": sentence})
        if limit and len(rows) >= limit:
            break
    return rows


def _load_csqa(path: Path, limit: int | None) -> list[dict]:
    task = get_task("csqa")
    rows = []
    for line, record in parse_jsonl(read_text(path), path):
        where = f"{path}:{line}"
        question = record.get("question")
        if not isinstance(question, dict) or not str(question.get("stem") or "").strip():
            raise InterpError(f"{where}: missing 'question.stem'; expected the CommonsenseQA JSONL format")
        choices = question.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise InterpError(f"{where}: 'question.choices' must be a list of {{label, text}}")
        by_letter = {str(c.get("label", "")).strip().upper(): str(c.get("text") or "").strip() for c in choices}
        if sorted(by_letter) != list(LETTERS) or not all(by_letter.values()):
            raise InterpError(f"{where}: expected five non-empty choices labelled A-E, got {sorted(by_letter)}")
        if "answerKey" not in record:
            raise InterpError(f"{where}: no 'answerKey' (the official test split is unlabelled); use the train or dev file")
        label = task.check_label(record["answerKey"], where)
        row = {"id": f"csqa-{record.get('id') or len(rows) + 1}", "task": "csqa", "question": question["stem"].strip(),
               "choices": [by_letter[letter] for letter in LETTERS], "label": label,
               "concept": question.get("question_concept")}
        row["transcript"] = task.spoken_text(row)
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    return rows


def _load_triviaqa(path: Path, limit: int | None) -> list[dict]:
    text = read_text(path)
    doc = parse_json(text, path, "TriviaQA")
    data = doc.get("Data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise InterpError(f"{path}: expected a JSON object with a 'Data' list (the TriviaQA release format)")
    rows = []
    for i, record in enumerate(data):
        qid = record.get("QuestionId") if isinstance(record, dict) else None
        line = line_of(text, f'"QuestionId": "{qid}"') or line_of(text, f'"{qid}"') if qid else None
        where = f"{path}:{line}" if line else f"{path}: Data[{i}]"
        if not isinstance(record, dict) or not str(record.get("Question") or "").strip():
            raise InterpError(f"{where}: missing 'Question' in Data[{i}]")
        answer = record.get("Answer")
        if not isinstance(answer, dict) or not str(answer.get("Value") or "").strip():
            raise InterpError(f"{where}: missing 'Answer.Value' in Data[{i}]; the unlabelled test split cannot be scored")
        aliases = answer.get("Aliases", [])
        normalized = answer.get("NormalizedAliases", [])
        if not isinstance(aliases, list) or not isinstance(normalized, list):
            raise InterpError(f"{where}: 'Answer.Aliases' and 'Answer.NormalizedAliases' must be lists")
        answers = list(dict.fromkeys([answer["Value"], *aliases, *normalized, *record.get("HumanAnswers", [])]))
        question = " ".join(record["Question"].split())
        rows.append({"id": f"triviaqa-{qid or i + 1}", "task": "triviaqa", "transcript": question, "text": question,
                     "label": answer["Value"], "answers": answers})
        if limit and len(rows) >= limit:
            break
    return rows


def _load_meld(path: Path, limit: int | None, attach: Callable[[str, str], str | None]) -> list[dict]:
    task = get_task("meld")
    rows = []
    for where, record in csv_records(path, ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")):
        try:
            dialogue, utterance = int(record["Dialogue_ID"]), int(record["Utterance_ID"])
        except ValueError:
            raise InterpError(f"{path}:{where}: Dialogue_ID and Utterance_ID must be integers") from None
        text = " ".join(str(record["Utterance"]).split())
        if not text:
            raise InterpError(f"{path}:{where}: empty Utterance; remove the row")
        label = task.check_label(record["Emotion"], f"{path}:{where}")
        stem = f"dia{dialogue}_utt{utterance}"
        rows.append({"id": f"meld-{stem}", "task": "meld", "audio": attach(stem, f"{path}:{where}"),
                     "transcript": text, "text": text, "label": label, "speaker": record["Speaker"].strip(),
                     "sentiment": record.get("Sentiment"), "dialogue_id": dialogue, "utterance_id": utterance})
        if limit and len(rows) >= limit:
            break
    return rows


def _load_mustard(path: Path, limit: int | None, attach: Callable[[str, str], str | None]) -> list[dict]:
    text = read_text(path)
    doc = parse_json(text, path, "MUStARD")
    if not isinstance(doc, dict):
        raise InterpError(f"{path}: expected a JSON object mapping clip ids to entries (sarcasm_data.json)")
    rows = []
    for key, entry in doc.items():
        line = line_of(text, f'"{key}":') or line_of(text, f'"{key}"')
        where = f"{path}:{line}" if line else f"{path}: entry {key!r}"
        if not isinstance(entry, dict):
            raise InterpError(f"{where}: entry {key!r} must be an object with 'utterance', 'speaker', 'sarcasm'")
        utterance = " ".join(str(entry.get("utterance") or "").split())
        if not utterance:
            raise InterpError(f"{where}: entry {key!r} has an empty 'utterance'")
        sarcasm = entry.get("sarcasm")
        if not isinstance(sarcasm, bool):
            raise InterpError(f"{where}: entry {key!r} has 'sarcasm' {sarcasm!r}; expected true or false")
        context = entry.get("context", [])
        if not isinstance(context, list):
            raise InterpError(f"{where}: entry {key!r} has a 'context' that is not a list of utterances")
        rows.append({"id": f"mustard-{key}", "task": "mustard", "audio": attach(str(key), where),
                     "transcript": utterance, "text": utterance, "label": "sarcastic" if sarcasm else "not_sarcastic",
                     "speaker": str(entry.get("speaker") or ""), "context": context,
                     "context_speakers": entry.get("context_speakers", []), "show": entry.get("show")})
        if limit and len(rows) >= limit:
            break
    return rows


_LOADERS = {"agnews": _load_agnews, "sst2": _load_sst2, "csqa": _load_csqa, "triviaqa": _load_triviaqa,
            "meld": _load_meld, "mustard": _load_mustard}


# ---- helpers ------------------------------------------------------------------------------

def detokenize(sentence: str) -> str:
    """Undo PTB tokenisation ("it 's a film , really .") so TTS reads natural text."""
    s = " ".join(sentence.split())
    for token, char in (("-lrb-", "("), ("-rrb-", ")"), ("-LRB-", "("), ("-RRB-", ")"), ("``", '"'), ("''", '"')):
        s = s.replace(token, char)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    s = re.sub(r" ([.,;:!?%)])", r"\1", s)
    s = re.sub(r"([($]) ", r"\1", s)
    return s.strip()


def _clean_agnews(s: str) -> str:
    # The release escapes entities without '&' (" #39;s") and marks line breaks with backslashes.
    s = re.sub(r"\s?#39;", "'", s)
    s = re.sub(r"(?<!&)#(\d+);", r"&#\1;", s)
    s = html.unescape(html.unescape(s.replace("quot;", '"').replace(" amp;", " &")))
    s = re.sub(r"<[^>]+>", " ", s).replace("\\", " ")
    return " ".join(s.split())


def _end_sentence(s: str) -> str:
    return s if s[-1:] in ".?!" else s + "."


def _attach(stem: str, where: str, audio_dir: Path | None, missing_audio: str) -> str | None:
    if audio_dir is None:
        return None
    found = find_audio(audio_dir, stem)
    if found is None and missing_audio == "error":
        raise InterpError(f"{where}: no clip {stem}.wav or {stem}.mp4 in {audio_dir}; fix --audio-dir or pass --skip-missing")
    return str(found.resolve()) if found else None


def _check_unique(rows: list[dict], path: Path) -> None:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise InterpError(f"{path}: item id {row['id']} appears twice; each item must be unique")
        seen.add(row["id"])


def _is_manifest(path: Path) -> bool:
    for text in read_text(path).splitlines():
        if text.strip():
            try:
                first = json.loads(text)
            except json.JSONDecodeError:
                return False
            return isinstance(first, dict) and ("transcript" in first or "text" in first or "task" in first) \
                and not isinstance(first.get("question"), dict)
    return False


def write_dataset(rows: list[dict], out: str | Path, sample_rate: int = 16000,
                  progress: Progress | None = None) -> Path:
    """Write `rows` as the manifest `out`; clips in video containers (MELD, MUStARD ship MP4)
    are first extracted with ffmpeg to WAVs in a folder beside it, `<out stem>_audio/`."""
    from interp.audio import VIDEO_SUFFIXES, extract_audio, require_ffmpeg
    from interp.manifest import write_manifest
    from tasks.outputs import audio_names, staged_output

    out = Path(out)
    if out.is_dir():
        raise InterpError(f"--out {out} is a folder; pass the manifest file to write, e.g. {out / 'manifest.jsonl'}")
    rows = [dict(r) for r in rows]
    videos = [r for r in rows if r.get("audio") and Path(r["audio"]).suffix.lower() in VIDEO_SUFFIXES]
    if videos:
        require_ffmpeg(videos[0]["audio"], sample_rate)  # before anything is written
    names = audio_names([r["id"] for r in videos])
    advance = start_stage(progress, "extracting audio", len(videos))
    with staged_output(out.parent) as stage:
        for row in videos:
            wav = stage / f"{out.stem}_audio" / names[row["id"]]
            extract_audio(row["audio"], wav, sample_rate)
            row["source_audio"], row["audio"] = row["audio"], str(wav)
            advance(1)
        write_manifest(stage / out.name, rows, staged=(stage, out.parent))
    return out
