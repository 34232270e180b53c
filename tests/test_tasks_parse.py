"""Answer parsers on tables of tricky generations: letters, words, synonyms, hedges,
refusals and several labels at once. "unparsed" is the right answer whenever a reply
commits to no label or to more than one."""

import pytest

from tasks import get_task
from tasks.parse import UNPARSED, clean_generation, exact_match, normalize_answer

U = UNPARSED

AGNEWS = [
    ("Sports", "Sports"),
    ("sports", "Sports"),
    ("SPORTS.", "Sports"),
    ('"Business"', "Business"),
    ("**Sci/Tech**", "Sci/Tech"),
    ("Sci-Tech", "Sci/Tech"),
    ("Science/Technology", "Sci/Tech"),
    ("Science and Technology", "Sci/Tech"),
    ("Technology", "Sci/Tech"),
    ("World", "World"),
    ("World News", "World"),
    ("International news", "World"),
    ("The answer is Business.", "Business"),
    ("Topic: Sports", "Sports"),
    ("The topic of this article is World.", "World"),
    ("I think it's World.", "World"),
    ("I would classify this article as Sci/Tech.", "Sci/Tech"),
    ("This news article falls under the category of Business, since it discusses quarterly earnings.", "Business"),
    ("The article is about the World Cup final, so Sports.", "Sports"),
    ("Category: Business\nExplanation: the deal involves a sports club.", "Business"),
    ("Sports. The story covers a football match.", "Sports"),
    ("Not World, but Sports.", "Sports"),
    ("It's not about business; it's about science.", "Sci/Tech"),
    ("Business rather than World.", "Business"),
    ("It could be Sports or Business.", U),
    ("World/Business", U),
    ("This is a mix of Business and Sci/Tech topics.", U),
    ("I cannot determine the topic of this article.", U),
    ("I'm sorry, I can't help with that.", U),
    ("Entertainment", U),
    ("", U),
    ("Sure! Based on the content, the most fitting topic is Sci/Tech.", "Sci/Tech"),
    ("<think>could be business or world</think>Sports", "Sports"),
    ("I'm not sure whether it is World or Business.", U),
    ("sci tech", "Sci/Tech"),
    ("The answer: Sci/Tech (technology news).", "Sci/Tech"),
]

SST2 = [
    ("positive", "positive"),
    ("Positive.", "positive"),
    ("NEGATIVE", "negative"),
    ("'negative'", "negative"),
    ("Sentiment: positive", "positive"),
    ("**Sentiment:** Negative", "negative"),
    ("The sentiment of this review is positive.", "positive"),
    ("The review is clearly negative.", "negative"),
    ("I would say the sentiment is positive.", "positive"),
    ("Positive!!!", "positive"),
    ("positive sentiment", "positive"),
    ("The reviewer liked the film, so the sentiment is positive.", "positive"),
    ("Negative (not positive).", "negative"),
    ("It's positive, not negative.", "positive"),
    ("Favorable", "positive"),
    ("unfavourable", "negative"),
    ("Thumbs down.", "negative"),
    ("Good", "positive"),
    ("Bad.", "negative"),
    ("The answer is negative.", "negative"),
    ("The review is not positive.", U),
    ("Neither positive nor negative.", U),
    ("Mixed.", U),
    ("Neutral", U),
    ("positive/negative", U),
    ("It has both positive and negative aspects.", U),
    ("I cannot determine whether it is positive or negative.", U),
    ("I can't answer whether this is positive.", U),
    ("As an AI, I don't have feelings, but the review seems positive.", "positive"),
    ("The reviewer says the acting was not good, so the sentiment is negative.", "negative"),
    ("Negative. The reviewer criticises the plot, though the music is good.", "negative"),
    ("Answer: Positive\nReason: the reviewer calls it a charming film without a single bad scene.", "positive"),
    ("", U),
    ("I'm sorry, but I can't help with that request.", U),
]

MELD = [
    ("joy", "joy"),
    ("Joy.", "joy"),
    ("happy", "joy"),
    ("The speaker sounds happy.", "joy"),
    ("Emotion: anger", "anger"),
    ("The speaker is angry.", "anger"),
    ("Furious", "anger"),
    ("Sad", "sadness"),
    ("sadness", "sadness"),
    ("The speaker seems disappointed and sad.", "sadness"),
    ("Surprised!", "surprise"),
    ("She sounds shocked.", "surprise"),
    ("Fear", "fear"),
    ("scared", "fear"),
    ("The speaker is afraid of what comes next.", "fear"),
    ("disgusted", "disgust"),
    ("Disgust.", "disgust"),
    ("neutral", "neutral"),
    ("No particular emotion.", "neutral"),
    ("The speaker expresses no strong emotion; the tone is neutral.", "neutral"),
    ("The emotion is surprise.", "surprise"),
    ("The speaker doesn't sound happy; they sound angry.", "anger"),
    ("Not sad, but scared.", "fear"),
    ("I'd say joy.", "joy"),
    ("Joy or surprise.", U),
    ("The speaker sounds both angry and sad.", U),
    ("It could be fear or surprise, hard to say.", U),
    ("I cannot tell the emotion from this clip.", U),
    ("Confused", U),
    ("", U),
    ("Mad", "anger"),
    ("Emotion: **Joy** (the speaker laughs)", "joy"),
    ("The speaker isn't happy.", U),
    ("Answer: sadness.", "sadness"),
]

MUSTARD = [
    ("Yes", "sarcastic"),
    ("yes.", "sarcastic"),
    ("No", "not_sarcastic"),
    ("No.", "not_sarcastic"),
    ("Sarcastic", "sarcastic"),
    ("not sarcastic", "not_sarcastic"),
    ("not_sarcastic", "not_sarcastic"),
    ("Non-sarcastic", "not_sarcastic"),
    ("Yes, the speaker is being sarcastic.", "sarcastic"),
    ("No, the speaker is sincere.", "not_sarcastic"),
    ("Yes, definitely sarcastic.", "sarcastic"),
    ("The speaker is not being sarcastic.", "not_sarcastic"),
    ("The speaker isn't being sarcastic here.", "not_sarcastic"),
    ("I don't think the speaker is sarcastic.", "not_sarcastic"),
    ("There is no sarcasm in this utterance.", "not_sarcastic"),
    ("The remark is ironic.", "sarcastic"),
    ("Sarcasm.", "sarcastic"),
    ("The speaker is genuinely asking.", "not_sarcastic"),
    ("No doubt, it is sarcastic.", "sarcastic"),
    ("Without a doubt, sarcastic.", "sarcastic"),
    ("It is said sarcastically.", "sarcastic"),
    ("The tone is mocking.", "sarcastic"),
    ("I'm not sure if it's sarcastic.", U),
    ("It's hard to tell whether the speaker is sarcastic.", U),
    ("No, it is sarcastic.", U),
    ("Yes and no.", U),
    ("It could be sarcastic or sincere.", U),
    ("I cannot determine that from the audio.", U),
    ("", U),
    ("Maybe.", U),
    ("Answer: yes", "sarcastic"),
    ("The answer is no.", "not_sarcastic"),
    ("It's hard to say, but probably sarcastic.", "sarcastic"),
    ("The speaker does not sound sincere.", "sarcastic"),
]

CSQA_ITEM = {"id": "q", "choices": ["river bank", "ocean", "desert", "bank", "mountain"], "label": "B"}
CSQA = [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("B)", "B"),
    ("[C]", "C"),
    ("The answer is (B).", "B"),
    ("The answer is B.", "B"),
    ("Answer: E", "E"),
    ("answer: e", "E"),
    ("Option D", "D"),
    ("The correct option is C.", "C"),
    ("B) ocean", "B"),
    ("B: ocean", "B"),
    ("B. ocean", "B"),
    ("I would choose D because deserts are dry.", "D"),
    ("I think it's C.", "C"),
    ("**A**", "A"),
    ("A", "A"),
    ("a", "A"),
    ("A jellyfish lives in the (B) ocean.", "B"),
    ("Not A, but C.", "C"),
    ("ocean", "B"),
    ("The ocean.", "B"),
    ("The answer is the ocean.", "B"),
    ("bank", "D"),
    ("a river bank", "A"),
    ("A or B", U),
    ("Either B or C.", U),
    ("B and C are both plausible.", U),
    ("I don't know.", U),
    ("None of the options is correct.", U),
    ("", U),
    ("The answer is a tricky one.", U),
    ("e.g. a mountain", "E"),
    ("The answer is B. Option A is wrong because rivers are fresh water.", "B"),
]

TRIVIAQA = [
    ("Paris", "Paris"),
    ("Paris.", "Paris"),
    ("The answer is Paris.", "Paris"),
    ("Answer: Paris", "Paris"),
    ("It's Paris.", "Paris"),
    ("I think it's Paris.", "Paris"),
    ("I'm not sure, but I think it's Paris.", "Paris"),
    ("Paris. It is the capital of France.", "Paris"),
    ("**Paris**", "Paris"),
    ('"Paris"', "Paris"),
    ("Washington, D.C.", "Washington, D.C"),
    ("J. K. Rowling. She wrote the books.", "J. K. Rowling"),
    ("St. Louis", "St. Louis"),
    ("Mt. Everest is the answer.", "Mt. Everest"),
    ("Probably Mount Everest.", "Mount Everest"),
    ("The answer is: the Pacific Ocean", "the Pacific Ocean"),
    ("Final answer: 1969", "1969"),
    ("1969.", "1969"),
    ("Sure! The answer is Jupiter.", "Jupiter"),
    ("I believe the answer is Leonardo da Vinci.", "Leonardo da Vinci"),
    ("Neil Armstrong (1969)", "Neil Armstrong (1969)"),
    ("<think>Moon landing was 1969</think>1969", "1969"),
    ("Au\nGold has the symbol Au.", "Au"),
    ("I don't know.", U),
    ("I'm sorry, I don't have that information.", U),
    ("Unknown", U),
    ("No idea.", U),
    ("", U),
    ("   ", U),
    ("As an AI language model, I cannot browse the internet.", U),
    ("Sorry, I can't answer that.", U),
    ("...", U),
]


@pytest.mark.parametrize("task, table", [("agnews", AGNEWS), ("sst2", SST2), ("meld", MELD), ("mustard", MUSTARD),
                                         ("csqa", CSQA), ("triviaqa", TRIVIAQA)])
def test_every_answer_a_parser_can_give_is_exercised(task, table):
    """The parser itself, run on each table, gives every label of the task and "unparsed" (an
    open-answer parser: "unparsed" and at least four answers), so no label goes untested."""
    spec = get_task(task)
    given = {spec.parse(generation, CSQA_ITEM if task == "csqa" else None) for generation, _ in table}
    if spec.kind == "classification":
        assert given == {*spec.labels, U}, (task, {*spec.labels, U} - given)
    else:
        assert U in given and len(given - {U}) >= 4


@pytest.mark.parametrize("generation, expected", AGNEWS)
def test_agnews_parser(generation, expected):
    assert get_task("agnews").parse(generation) == expected


@pytest.mark.parametrize("generation, expected", SST2)
def test_sst2_parser(generation, expected):
    assert get_task("sst2").parse(generation) == expected


@pytest.mark.parametrize("generation, expected", MELD)
def test_meld_parser(generation, expected):
    assert get_task("meld").parse(generation) == expected


@pytest.mark.parametrize("generation, expected", MUSTARD)
def test_mustard_parser(generation, expected):
    assert get_task("mustard").parse(generation) == expected


@pytest.mark.parametrize("generation, expected", CSQA)
def test_csqa_parser(generation, expected):
    assert get_task("csqa").parse(generation, CSQA_ITEM) == expected


def test_csqa_without_item_reads_letters_only():
    task = get_task("csqa")
    assert task.parse("The answer is (C).") == "C"
    assert task.parse("ocean") == U


@pytest.mark.parametrize("generation, expected", TRIVIAQA)
def test_triviaqa_parser(generation, expected):
    assert get_task("triviaqa").parse(generation) == expected


def test_parsed_labels_belong_to_the_label_set():
    for name, table in [("agnews", AGNEWS), ("sst2", SST2), ("meld", MELD), ("mustard", MUSTARD), ("csqa", CSQA)]:
        task = get_task(name)
        for generation, _ in table:
            assert task.parse(generation, CSQA_ITEM if name == "csqa" else None) in (*task.labels, U)


@pytest.mark.parametrize("text, expected", [
    ("The Beatles", "beatles"),
    ("  Washington,  D.C. ", "washington d c"),
    ("an_apple", "apple"),
    ("Rock 'n' Roll", "rock n roll"),
    ("\u2018Quoted\u2019", "quoted"),
    ("A Tale of Two Cities", "tale of two cities"),
])
def test_triviaqa_normalisation_follows_the_official_eval(text, expected):
    assert normalize_answer(text) == expected


def test_triviaqa_exact_match_against_any_alias():
    item = {"id": "t1", "label": "The Beatles", "answers": ["The Beatles", "Beatles", "the fab four"]}
    task = get_task("triviaqa")
    assert task.is_correct(task.parse("The answer is the Beatles."), item)
    assert task.is_correct("Fab Four", item)
    assert not task.is_correct("The Rolling Stones", item)
    assert not task.is_correct("Beatles and Wings", item)  # exact match, not containment
    assert not task.is_correct(U, item)
    assert not exact_match("", ["", "x"])


def test_score_counts_unparsed_as_wrong():
    task = get_task("sst2")
    items = [{"id": str(i), "label": lab} for i, lab in enumerate(["positive", "negative", "positive", "negative"])]
    preds = [task.parse(g) for g in ["Positive", "negative.", "I can't tell", "Positive"]]
    score = task.score(preds, items)
    assert (score.n, score.correct, score.unparsed) == (4, 2, 1)
    assert score.accuracy == 0.5


def test_clean_generation_strips_markup_and_reasoning():
    assert clean_generation("<think>hmm B?</think> **Answer:** \u201cC\u201d") == 'Answer: "C"'
    assert clean_generation(None) == ""
