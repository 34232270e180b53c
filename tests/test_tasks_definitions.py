"""Task definitions: names, label sets, spoken text, prompts that share one instruction,
and user-overridable templates."""

import json

import pytest

from interp.errors import InterpError
from tasks import TASKS, Task, get_task, load_templates
from tasks.datasets import load_dataset, sample_path

CSQA_ITEM = {"id": "q1", "question": "Where do fish live", "choices": ["sky", "water", "sand", "tree", "road"], "label": "B"}


def test_the_six_tasks():
    assert list(TASKS) == ["triviaqa", "agnews", "sst2", "csqa", "meld", "mustard"]
    assert {n for n, t in TASKS.items() if t.text_sufficient} == {"triviaqa", "agnews", "sst2", "csqa"}
    assert get_task("agnews").labels == ("World", "Sports", "Business", "Sci/Tech")
    assert get_task("sst2").labels == ("negative", "positive")
    assert get_task("csqa").labels == ("A", "B", "C", "D", "E")
    assert get_task("meld").labels == ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
    assert get_task("mustard").labels == ("sarcastic", "not_sarcastic")
    assert get_task("triviaqa").labels == ()
    assert all(isinstance(t, Task) for t in TASKS.values())
    assert get_task("CommonsenseQA") is TASKS["csqa"] and get_task("SST-2") is TASKS["sst2"]


def test_unknown_task_lists_the_names():
    with pytest.raises(InterpError, match="unknown task 'imdb'; choose one of triviaqa, agnews, sst2, csqa, meld, mustard"):
        get_task("imdb")


def test_tasks_are_frozen():
    with pytest.raises(AttributeError):
        get_task("sst2").name = "x"


def test_spoken_text():
    assert get_task("csqa").spoken_text(CSQA_ITEM) == "Where do fish live. A: sky. B: water. C: sand. D: tree. E: road."
    assert get_task("sst2").spoken_text({"id": "1", "text": "  a  fine film "}) == "a fine film"
    with pytest.raises(InterpError, match="five non-empty 'choices'"):
        get_task("csqa").spoken_text({"id": "q", "question": "why?", "choices": ["a", "b"]})
    with pytest.raises(InterpError, match="no text to speak"):
        get_task("agnews").spoken_text({"id": "n", "text": " "})


@pytest.mark.parametrize("name", list(TASKS))
def test_speech_and_text_prompts_share_the_instruction(name):
    task = get_task(name)
    item = load_dataset(name, sample_path(name), limit=1)[0]
    speech = task.speech_prompt(item)
    text = task.text_prompt(item, "TRANSCRIPT-GOES-HERE")
    assert task.instruction and task.instruction in speech and task.instruction in text
    assert "TRANSCRIPT-GOES-HERE" in text and "TRANSCRIPT-GOES-HERE" not in speech
    assert item["transcript"] not in speech  # the speech LLM must hear, not read, the item
    for label in task.labels if task.kind == "classification" and name != "mustard" else ():
        assert label.lower() in task.instruction.lower()


def test_templates_override_from_json_and_toml(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"tasks": {"sst2": {"instruction": "Label the review: {labels}."}},
                                                 "text": "Heard: {transcript}\n{instruction}"}))
    task = get_task("sst2", templates=tmp_path / "t.json")
    assert task.speech_prompt({"id": "1"}) == "Label the review: negative, positive."
    assert task.text_prompt({"id": "1"}, "nice") == "Heard: nice\nLabel the review: negative, positive."
    assert get_task("sst2").instruction != task.instruction  # the defaults are untouched
    (tmp_path / "t.toml").write_text('[tasks.meld]\nspeech = "Speaker {speaker}. {instruction}"\n')
    meld = get_task("meld", templates=tmp_path / "t.toml")
    assert meld.speech_prompt({"id": "m", "speaker": "Ross"}).startswith("Speaker Ross. Which emotion")
    assert get_task("agnews", templates={"tasks": {"agnews": {"instruction": "Topic?"}}}).speech_prompt({}) == "Topic?"
    assert load_templates()["tasks"]["csqa"]["instruction"].startswith("Answer this multiple-choice question")


@pytest.mark.parametrize("content, match", [
    ({"tasks": {"imdb": {"instruction": "x"}}}, "unknown task 'imdb'"),
    ({"tasks": {"sst2": {"prompt": "x"}}}, "tasks.sst2.prompt is not a template"),
    ({"speech": "{instruction} {transcript}"}, "speech template of .* uses {transcript}"),
    ({"text": "{instruction}"}, "lacks {transcript}"),
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"tasks": {"sst2": {"instruction": ""}}}, "non-empty string"),
])
def test_bad_templates_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InterpError, match=match):
        load_templates(path)


def test_template_placeholders_are_checked_when_rendered(tmp_path):
    task = get_task("sst2", templates={"tasks": {"sst2": {"speech": "{instruction} ({genre})"}}})
    with pytest.raises(InterpError, match=r"uses \{genre\}, which this item does not have"):
        task.speech_prompt({"id": "1"})
    assert task.speech_prompt({"id": "1", "genre": "drama"}).endswith("(drama)")
    with pytest.raises(InterpError, match="not a valid template"):
        get_task("sst2", templates={"speech": "{instruction"}).speech_prompt({})
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InterpError, match="cannot parse templates"):
        load_templates(tmp_path / "broken.json")
    with pytest.raises(InterpError, match="templates file not found"):
        load_templates(tmp_path / "missing.json")


def test_is_correct_and_check_label():
    assert get_task("agnews").is_correct("Sports", {"id": "1", "label": "Sports"})
    assert not get_task("agnews").is_correct("unparsed", {"id": "1", "label": "Sports"})
    assert get_task("csqa").is_correct(get_task("csqa").parse("the answer is water", CSQA_ITEM), CSQA_ITEM)
    with pytest.raises(InterpError, match="no 'label'"):
        get_task("sst2").is_correct("positive", {"id": "x"})
    assert get_task("meld").check_label("Joy", "f:1") == "joy"
    with pytest.raises(InterpError, match="f:1: unknown meld label 'bored'"):
        get_task("meld").check_label("bored", "f:1")
    with pytest.raises(InterpError, match="one prediction per item"):
        get_task("sst2").score(["positive"], [])
