"""The six tasks of the study: labels, what is spoken, prompts, answer parsing and scoring.

A `Task` is a small frozen record. Four tasks are text-sufficient (TriviaQA, AG News,
SST-2, CommonsenseQA: spoken by TTS from their text); two need acoustics (MELD emotion,
MUStARD sarcasm: natural speech). Prompt wording is data (`templates.json`), overridable
per run with `load_templates(path)` / `get_task(name, templates=...)`, and one instruction
per task is shared by the speech-LLM prompt and the cascade prompt, so the two systems
are asked the same question.
"""

from __future__ import annotations

import dataclasses
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from interp.errors import InterpError
from tasks.parse import UNPARSED, ChoiceParser, LabelParser, OpenAnswerParser, exact_match

TEMPLATES_PATH = Path(__file__).with_name("templates.json")
LETTERS = ("A", "B", "C", "D", "E")


@dataclass(frozen=True)
class Score:
    """Accuracy of parsed predictions; unparsed answers count as wrong and are reported."""

    n: int
    """Items scored."""
    correct: int
    """Items whose prediction is right."""
    unparsed: int
    """Items whose generation named no label, or several."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def as_dict(self) -> dict:
        return {"n": self.n, "correct": self.correct, "unparsed": self.unparsed, "accuracy": self.accuracy}


@dataclass(frozen=True, eq=False)
class Task:
    """One evaluation task: its label set, what is spoken, how it is asked and scored."""

    name: str
    """Short name: triviaqa, agnews, sst2, csqa, meld, mustard."""
    title: str
    """Human-readable name."""
    labels: tuple[str, ...]
    """Closed label set; empty for open answers (TriviaQA)."""
    text_sufficient: bool
    """True when the transcript alone determines the answer (the speech is TTS of the text)."""
    kind: str
    """'open', 'classification' or 'multiple_choice'."""
    instruction: str
    """The task wording shared by the speech and the text prompt."""
    speech_template: str = "{instruction}"
    """Frames the instruction for a speech LLM (the audio travels separately)."""
    text_template: str = "Transcript of the audio:\n{transcript}\n\n{instruction}"
    """Frames the instruction for a cascade's text LLM; {transcript} stands in for the audio."""
    parser: LabelParser | ChoiceParser | OpenAnswerParser = field(default=None, repr=False)
    """Turns a generation into a label or UNPARSED."""

    def spoken_text(self, item: Mapping) -> str:
        """What TTS speaks for this item: its text; for multiple choice the question and its options."""
        if self.kind == "multiple_choice":
            question = _text(item, ("question", "text"), self.name)
            options = " ".join(f"{letter}: {_sentence(text)}" for letter, text in _options(item, self.name))
            return f"{_sentence(question)} {options}"
        return _text(item, ("text", "transcript", "question", "utterance"), self.name)

    def speech_prompt(self, item: Mapping) -> str:
        """The instruction sent with the audio to a speech LLM."""
        return self._render(self.speech_template, item, transcript=None)

    def text_prompt(self, item: Mapping, transcript: str) -> str:
        """The same instruction for a cascade's text LLM, with `transcript` in place of the audio."""
        return self._render(self.text_template, item, transcript=transcript)

    def parse(self, generated_text: object, item: Mapping | None = None) -> str:
        """A label (a letter for multiple choice, the short answer for open tasks) or "unparsed".

        For multiple choice, passing the item lets an answer that quotes an option's text
        ("the ocean") count as that option's letter.
        """
        if self.kind == "multiple_choice":
            return self.parser.parse(generated_text, item)
        return self.parser.parse(generated_text)

    def is_correct(self, prediction: str, item: Mapping) -> bool:
        """Right answer? Open tasks: normalised exact match against any alias; others: label equality."""
        if prediction is None or prediction == UNPARSED:
            return False
        if self.kind == "open":
            answers = list(item.get("answers") or []) + ([item["label"]] if item.get("label") else [])
            if not answers:
                raise InterpError(f"item {item.get('id', '?')} has no 'answers' or 'label'; scoring {self.name} needs its answer aliases")
            return exact_match(prediction, answers)
        label = item.get("label")
        if label is None:
            raise InterpError(f"item {item.get('id', '?')} has no 'label'; scoring {self.name} needs labelled items")
        return str(prediction).strip().casefold() == str(label).strip().casefold()

    def score(self, predictions: Sequence[str], items: Sequence[Mapping]) -> Score:
        """Accuracy over parsed predictions, counting the unparsed ones."""
        if len(predictions) != len(items):
            raise InterpError(f"{len(predictions)} predictions for {len(items)} items; give one prediction per item")
        correct = sum(self.is_correct(p, it) for p, it in zip(predictions, items))
        return Score(n=len(items), correct=correct, unparsed=sum(p == UNPARSED for p in predictions))

    def check_label(self, label: object, where: str) -> str:
        """The canonical spelling of `label`, or InterpError naming `where` and the label set."""
        if self.kind == "open":
            if not str(label or "").strip():
                raise InterpError(f"{where}: empty answer; every {self.name} item needs an answer")
            return str(label)
        for known in self.labels:
            if str(label).strip().casefold() == known.casefold():
                return known
        raise InterpError(f"{where}: unknown {self.name} label {label!r}; expected one of {', '.join(self.labels)}")

    def with_templates(self, templates: Mapping | str | Path | None) -> "Task":
        """This task with its prompt wording taken from `templates` (merged over the defaults)."""
        merged = load_templates(templates) if not isinstance(templates, Mapping) else _merge(_defaults(), templates, "templates")
        own = merged["tasks"].get(self.name, {})
        return dataclasses.replace(
            self,
            instruction=own.get("instruction", self.instruction),
            speech_template=own.get("speech", merged["speech"]),
            text_template=own.get("text", merged["text"]),
        )

    def _render(self, template: str, item: Mapping, transcript: str | None) -> str:
        fields = {k: v for k, v in item.items() if isinstance(v, (str, int, float, bool))}
        fields.update(task=self.name, labels=", ".join(self.labels))
        if self.kind == "multiple_choice" and item.get("choices"):
            fields["options"] = "\n".join(f"{letter}: {text}" for letter, text in _options(item, self.name))
        if transcript is not None:
            fields["transcript"] = transcript
        fields["instruction"] = _format(self.instruction, fields, f"{self.name} instruction")
        return _format(template, fields, f"{self.name} prompt template")


def _format(template: str, fields: Mapping, what: str) -> str:
    try:
        return string.Formatter().vformat(template, (), _Fields(fields, what))
    except (ValueError, IndexError) as e:
        raise InterpError(f"{what} is not a valid template ({e}); write literal braces as {{{{ and }}}}") from None


class _Fields(dict):
    def __init__(self, fields: Mapping, what: str):
        super().__init__(fields)
        self.what = what

    def __missing__(self, key):
        raise InterpError(f"{self.what} uses {{{key}}}, which this item does not have; available: {', '.join(sorted(self))}")


def _text(item: Mapping, keys: Sequence[str], task: str) -> str:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    raise InterpError(f"item {item.get('id', '?')} of {task} has no text to speak (fields {', '.join(keys)} are empty)")


def _options(item: Mapping, task: str) -> list[tuple[str, str]]:
    choices = item.get("choices")
    if isinstance(choices, Mapping):
        pairs = sorted((str(k).upper(), str(v)) for k, v in choices.items())
    elif isinstance(choices, (list, tuple)):
        pairs = list(zip(LETTERS, (str(c) for c in choices)))
    else:
        pairs = []
    if len(pairs) != 5 or any(not text.strip() for _, text in pairs):
        raise InterpError(f"item {item.get('id', '?')} of {task} needs five non-empty 'choices' (A-E)")
    return pairs


def _sentence(text: str) -> str:
    """End with punctuation, so TTS pauses between the question and each option."""
    text = " ".join(text.split())
    return text if text[-1:] in ".?!" else text + "."


# ---- templates ---------------------------------------------------------------------------

def _defaults() -> dict:
    return json.loads(TEMPLATES_PATH.read_text(encoding="utf-8"))


def load_templates(path: str | Path | None = None) -> dict:
    """The default templates, with a user's JSON or TOML file (any subset) merged over them."""
    defaults = _defaults()
    if path is None:
        return defaults
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"templates file not found: {path}; write one with `interp data templates --out FILE`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InterpError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            user = tomllib.loads(text)
        else:
            user = json.loads(text)
    except ValueError as e:
        raise InterpError(f"{path}: cannot parse templates ({str(e).splitlines()[0]}); use JSON or TOML") from None
    return _merge(defaults, user, str(path))


def _merge(defaults: dict, user: Mapping, where: str) -> dict:
    if not isinstance(user, Mapping):
        raise InterpError(f"{where}: templates must be an object with 'speech', 'text' and/or 'tasks'")
    merged = {"speech": defaults["speech"], "text": defaults["text"],
              "tasks": {k: dict(v) for k, v in defaults["tasks"].items()}}
    for key, value in user.items():
        if key.startswith("_"):
            continue
        if key in ("speech", "text"):
            merged[key] = _template_string(value, f"{where}: '{key}'")
        elif key == "tasks":
            if not isinstance(value, Mapping):
                raise InterpError(f"{where}: 'tasks' must map task names to {{'instruction', 'speech', 'text'}}")
            for name, own in value.items():
                if name not in merged["tasks"]:
                    raise InterpError(f"{where}: unknown task {name!r} in templates; tasks are {', '.join(merged['tasks'])}")
                if not isinstance(own, Mapping):
                    raise InterpError(f"{where}: tasks.{name} must be an object with 'instruction', 'speech' or 'text'")
                for k, v in own.items():
                    if k not in ("instruction", "speech", "text"):
                        raise InterpError(f"{where}: tasks.{name}.{k} is not a template; use 'instruction', 'speech' or 'text'")
                    merged["tasks"][name][k] = _template_string(v, f"{where}: tasks.{name}.{k}")
        else:
            raise InterpError(f"{where}: unknown key {key!r}; templates have 'speech', 'text' and 'tasks'")
    for name, own in merged["tasks"].items():
        speech, text = own.get("speech", merged["speech"]), own.get("text", merged["text"])
        if "{transcript}" in speech:
            raise InterpError(f"{where}: the speech template of {name} uses {{transcript}}; a speech LLM must hear the audio, not read its transcript")
        if "{transcript}" not in text:
            raise InterpError(f"{where}: the text template of {name} lacks {{transcript}}; the cascade's LLM needs the transcript in place of the audio")
    return merged


def _template_string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InterpError(f"{where} must be a non-empty string")
    return value


# ---- the six tasks -----------------------------------------------------------------------

_AGNEWS = LabelParser(
    labels=("World", "Sports", "Business", "Sci/Tech"),
    synonyms={
        "World": (r"world[ -]news", r"world (?:affairs|politics|events)", r"world (?:category|topic|section|class)",
                  r"international (?:news|affairs|politics|relations)", r"global (?:news|affairs|politics)",
                  "foreign affairs", "geopolitics", "geopolitical"),
        "Sports": ("sports", "sport", "sporting", "athletics"),
        "Business": ("business", "economy", "economics", "economic news", "finance", "financial", "business news"),
        "Sci/Tech": (r"sci(?:ence)?\s*(?:/|&|\+|-|and)?\s*tech(?:nology)?", r"science\s*(?:and|&|/)\s*technology",
                     "science", "scientific", "technology", "technological", "tech"),
    },
    weak={"World": ("world", "politics", "international", "global"),
          "Business": ("markets", "money", "corporate", "economic")},
)

_SST2 = LabelParser(
    labels=("negative", "positive"),
    synonyms={"positive": ("positively", "favou?rable", "thumbs up"),
              "negative": ("negatively", "unfavou?rable", "thumbs down")},
    weak={"positive": ("good", "great", "pos", "praise", "liked it"),
          "negative": ("bad", "poor", "neg", "critical", "disliked it")},
)

_MELD = LabelParser(
    labels=("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"),
    synonyms={
        "neutral": (r"no (?:particular |strong |clear |obvious |specific )?emotions?", "emotionless", "neutrality"),
        "joy": ("joyful", "joyous", "happy", "happiness", "happily", "delighted", "glad", "cheerful", "elated",
                "excited", "excitement", "pleased", "amused", "amusement"),
        "surprise": ("surprised", "surprising", "shocked", "shock", "astonished", "astonishment", "amazed",
                     "amazement", "stunned"),
        "anger": ("angry", "angrily", "furious", "fury", "rage", "annoyed", "annoyance", "irritated", "irritation",
                  "frustrated", "frustration", "outraged"),
        "sadness": ("sad", "sadly", "unhappy", "sorrow", "sorrowful", "grief", "depressed", "melancholy",
                    "heartbroken", "disappointed", "disappointment"),
        "disgust": ("disgusted", "disgusting", "revulsion", "revolted", "repulsed", "grossed out"),
        "fear": ("fearful", "afraid", "scared", "frightened", "terrified", "anxious", "anxiety", "nervous",
                 "worried", "panic", "panicked"),
    },
    weak={"neutral": ("calm", "none", "flat"), "anger": ("mad",)},
)

_MUSTARD = LabelParser(
    labels=("sarcastic", "not_sarcastic"),
    synonyms={
        "sarcastic": ("sarcastically", "sarcasm", "ironic", "ironically", "irony", "mocking", "mockingly"),
        "not_sarcastic": (r"not[ _-](?:being )?sarcastic", r"not (?:being )?ironic", "not sarcasm", "no sarcasm",
                          r"non-?sarcastic", "sincere", "sincerely", "genuine", "genuinely", "earnest", "earnestly"),
    },
    weak={"sarcastic": ("yes",), "not_sarcastic": ("no",)},
    # "isn't being sarcastic" names the other label; it is not a guess.
    negated={"sarcastic": "not_sarcastic", "not_sarcastic": "sarcastic"},
)


def _task(name, title, labels, text_sufficient, kind, parser) -> Task:
    return Task(name=name, title=title, labels=labels, text_sufficient=text_sufficient, kind=kind,
                instruction="", parser=parser).with_templates(None)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("triviaqa", "TriviaQA", (), True, "open", OpenAnswerParser()),
        _task("agnews", "AG News", _AGNEWS.labels, True, "classification", _AGNEWS),
        _task("sst2", "SST-2", _SST2.labels, True, "classification", _SST2),
        _task("csqa", "CommonsenseQA", LETTERS, True, "multiple_choice", ChoiceParser()),
        _task("meld", "MELD", _MELD.labels, False, "classification", _MELD),
        _task("mustard", "MUStARD", _MUSTARD.labels, False, "classification", _MUSTARD),
    )
}


# ---- simple tasks for small backbones ---------------------------------------------------
# The study's tasks are too hard for a 135M-parameter LLM (SmolLM2 is near chance on AG News).
# These two are what the model organisms (`interp.organisms`) are evaluated on: one a small
# LLM answers from a transcript, one no transcript can answer. Their items are made by
# `interp.organisms.data`; their text prompt puts the transcript where the speech prompt puts
# the audio (after the instruction), as Ultravox's training substitutes text for audio.

_PITCH = LabelParser(
    labels=("low", "high"),
    synonyms={"low": ("low-pitched", "deep", "lower"), "high": ("high-pitched", "higher")},
)

SIMPLE_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("sentiment", "Simple sentiment", _SST2.labels, True, "classification", _SST2),
        _task("pitch", "Voice pitch", _PITCH.labels, False, "classification", _PITCH),
    )
}


def get_task(name: str, templates: Mapping | str | Path | None = None) -> Task:
    """The task called `name` (one of the study's six or a simple task), with prompt templates
    from `templates` when given."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    aliases = {"commonsenseqa": "csqa", "sst": "sst2", "ag": "agnews", "agnewsnews": "agnews", "sarcasm": "mustard"}
    key = aliases.get(key, key)
    task = TASKS.get(key) or SIMPLE_TASKS.get(key)
    if task is None:
        raise InterpError(f"unknown task {name!r}; choose one of {', '.join([*TASKS, *SIMPLE_TASKS])}")
    return task if templates is None else task.with_templates(templates)


def check_task_rows(rows: Sequence[Mapping]) -> None:
    """Refuse manifest rows a behavioural run cannot answer: an item without a `task`, or a
    task that does not exist (before any model loads)."""
    missing = [str(r.get("id")) for r in rows if not r.get("task")]
    if missing:
        raise InterpError(f"{len(missing)} item(s) have no 'task' (e.g. '{missing[0]}'); behavioural runs need the "
                          "task of every item (e.g. from `interp data load`)")
    for name in sorted({str(r["task"]) for r in rows}):
        get_task(name)


def speech_prompt(row: Mapping) -> str | None:
    """The instruction a speech LLM hears with an item: its task's speech prompt, or None for an
    item with no task or an unknown one (callers fall back to a neutral instruction)."""
    name = row.get("task")
    if not name:
        return None
    try:
        return get_task(name).speech_prompt(row)
    except InterpError:
        return None
