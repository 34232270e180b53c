"""Answer parsers: free-form generated text -> one task label, or "unparsed".

Speech LLMs and cascades answer in sentences ("The answer is (B).", "I'd say this is
Sports news", "No, he means it"). Agreement statistics compare these answers item by
item, so a parser that guesses would manufacture agreement. The rule throughout: return
a label only when the text commits to exactly one; when it names none, or several, or
only inside a doubt ("not sure whether it is sarcastic"), return UNPARSED.

Three families:
- `LabelParser` for closed label sets (AG News, SST-2, MELD, MUStARD), driven by a table
  of synonyms per label;
- `ChoiceParser` for lettered multiple choice (CommonsenseQA), which reads letters and,
  given the item, the options' texts;
- `OpenAnswerParser` for open answers (TriviaQA): it extracts the short answer and
  `normalize_answer` / `exact_match` score it the way the official TriviaQA evaluation does.

Each looks for the answer in order of how explicitly it is stated: the whole reply, a
sentence that is only a label, an answer marker ("answer:", "the topic is"), and last a
scan of the whole text with negation ("not positive") and doubt ("whether") handled.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

UNPARSED = "unparsed"

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_TYPOGRAPHIC = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00b4": "'",
                              "\u00ab": '"', "\u00bb": '"', "\u2013": "-", "\u2014": "-", "\u00a0": " "})
# Markdown emphasis and headings carry no meaning for the answer and hide word boundaries.
_MARKUP = re.compile(r"[*_#`~|>]+")
_EDGE = " \t\n\"'()[]{}<>.,;:!?-"

# "No doubt it is sarcastic" and "not only ... but" contain negators that negate nothing.
_IDIOMS = re.compile(r"\b(?:no doubt|without (?:a |any )?doubt|not only|not just|no question|no wonder|"
                     r"nothing but|no matter)\b")
_CLAUSE_BREAK = re.compile(r"[,.;:!?\n()]|\b(?:but|however|although|though|whereas)\b")
_DOUBT = re.compile(r"\b(?:whether|if|unsure|uncertain|unclear|not sure|not certain|hard to (?:say|tell)|"
                    r"difficult to (?:say|tell)|can't tell|cannot tell|impossible to (?:say|tell)|"
                    r"cannot determine|can't determine|unable to determine)\b")
_NEGATION = re.compile(r"\b(?:not|no|never|neither|nor|none|without|hardly|barely|cannot|rather than|"
                       r"instead of|as opposed to|other than|\w+n't)\b")
_NEGATION_WINDOW = 6  # words before a label that can negate it


def clean_generation(text: object) -> str:
    """Drop reasoning blocks and markdown, normalise typographic quotes and dashes."""
    if text is None:
        return ""
    text = str(text)
    text = _THINK.sub(" ", text)
    if "</think>" in text.lower():  # an opening tag cut off by the prompt: keep what follows the close
        text = re.split(r"</think>", text, flags=re.I)[-1]
    text = text.translate(_TYPOGRAPHIC)
    text = _MARKUP.sub(" ", text)
    text = re.sub(r"[ \t]+", " ", text)
    return text.strip()


def _strip_edges(s: str) -> str:
    return s.strip(_EDGE).strip()


def _sentences(text: str) -> list[str]:
    return [s for s in (_strip_edges(p) for p in re.split(r"(?<=[.!?])\s+|\n+", text)) if s]


def _context(prefix: str) -> str:
    """'doubted', 'negated' or 'plain': how the clause before a label mention frames it."""
    clause = _CLAUSE_BREAK.split(prefix)[-1]
    words = clause.split()[-_NEGATION_WINDOW:]
    window = " ".join(words)
    if _DOUBT.search(window):
        return "doubted"
    if _NEGATION.search(window):
        return "negated"
    return "plain"


@dataclass(frozen=True, eq=False)
class LabelParser:
    """Closed label set, read through a synonym table.

    `synonyms[label]` are regex fragments (matched whole-word, case-insensitive) that name
    the label anywhere in a reply; `weak[label]` name it only when they are the whole
    answer, lead the reply ("No, ...") or follow an answer marker, because as loose words
    they are too common ("world", "yes", "good"). `negated[label]` is the label a negated
    mention means ("not sarcastic" is the other MUStARD label); a negated mention of any
    other label is dropped, never flipped to a guess.
    """

    labels: tuple[str, ...]
    synonyms: Mapping[str, tuple[str, ...]]
    weak: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    negated: Mapping[str, str] = field(default_factory=dict)
    markers: tuple[str, ...] = ("answer", "label", "category", "class", "classification", "prediction", "verdict",
                                "topic", "sentiment", "emotion", "tone", "mood")

    def __post_init__(self) -> None:
        # A label word is itself a strong synonym unless listed as weak (AG News' "world").
        strong = [(p, lab) for lab in self.labels for p in (lab.lower(), *self.synonyms.get(lab, ()))
                  if p not in self.weak.get(lab, ())]
        weak = [(p, lab) for lab, ps in self.weak.items() for p in ps]
        # Longest fragment first, so "sci/tech" wins over "tech" and "not sarcastic" over "sarcastic".
        by_length = lambda pairs: sorted(pairs, key=lambda pl: -len(pl[0]))  # noqa: E731
        object.__setattr__(self, "_scan", _alternation(by_length(strong), whole=False))
        object.__setattr__(self, "_exact", _alternation(by_length(strong + weak), whole=True))
        object.__setattr__(self, "_lead", _alternation(by_length(weak), whole=False) if weak else None)
        keys = "|".join(sorted(set(self.markers), key=len, reverse=True))
        object.__setattr__(self, "_marker", re.compile(
            rf"\b(?:final (?:answer|label)|{keys})\b[^.!?\n:=]{{0,30}}?(?:\bis\b|\bwould be\b|\bas\b|:|=)\s*([^.!?\n]*)"
            r"|\b(?:i(?:'d| would)? (?:say|choose|pick|select|go with)|i'm going with|classif(?:y|ied)\b[^.!?\n]{0,15}?\bas|"
            r"categori[sz]ed?\b[^.!?\n]{0,15}?\bas|falls? (?:under|into)|belongs? (?:to|in))\b\s*([^.!?\n]*)"))

    def parse(self, text: object) -> str:
        t = _IDIOMS.sub(" ", clean_generation(text).lower())
        if not _strip_edges(t):
            return UNPARSED
        # A sentence that is nothing but a label ("Sports." / "Answer: positive") is the most explicit answer.
        found = {lab for s in _sentences(t) if (lab := self.exact(s))}
        if found:
            return _one(found)
        for m in self._marker.finditer(t):
            group = 1 if m.group(1) is not None else 2
            if _context(t[: m.start(group)]) != "plain":  # "I can't answer whether it is positive"
                continue
            lab = self.exact(m.group(group))
            found |= {lab} if lab else self.mentions(t, m.start(group), m.end(group))
        if found:
            return _one(found)
        return _one(self.mentions(t, leading_weak=True))

    def exact(self, s: str) -> str | None:
        """The label `s` is, once fillers ("I think it's", "... news") are stripped; else None."""
        s = _strip_edges(_FILLER_SUFFIX.sub("", _FILLER_PREFIX.sub("", _strip_edges(s.lower()))))
        pattern, labels = self._exact
        m = pattern.fullmatch(s)
        return labels[m.lastgroup] if m else None

    def mentions(self, text: str, start: int = 0, end: int | None = None, leading_weak: bool = False) -> set[str]:
        """Labels named in text[start:end]; negated mentions are mapped or dropped, doubted ones dropped.

        The negation context is read from the whole text, so a span after an answer marker
        still sees the "not" that precedes it.
        """
        text = text.lower()
        end = len(text) if end is None else end
        found: set[str] = set()
        if leading_weak and self._lead is not None:
            head = _strip_edges(text)
            pattern, labels = self._lead
            m = pattern.match(head)
            if m and re.match(r"\s*(?:[,.;:!?/-]|$)", head[m.end():]):
                found.add(labels[m.lastgroup])
        pattern, labels = self._scan
        for m in pattern.finditer(text, start, end):
            label = labels[m.lastgroup]
            how = _context(text[: m.start()])
            if how == "doubted":
                continue
            if how == "negated":
                label = self.negated.get(label)
                if label is None:
                    continue
            found.add(label)
        return found


def _one(found: set[str]) -> str:
    return next(iter(found)) if len(found) == 1 else UNPARSED


def _alternation(pairs: Sequence[tuple[str, str]], whole: bool) -> tuple[re.Pattern, dict[str, str]]:
    """One regex over every fragment; each fragment's named group maps back to its label."""
    groups, labels = [], {}
    for i, (fragment, label) in enumerate(pairs):
        labels[f"g{i}"] = label
        body = fragment if any(c in fragment for c in "\\?()[]|+*") else re.escape(fragment)
        groups.append(f"(?P<g{i}>{body})" if whole else rf"(?<![\w-])(?P<g{i}>{body})(?![\w-])")
    return re.compile("|".join(groups), re.I), labels


_FILLER_PREFIX = re.compile(
    r"^(?:(?:i think|i believe|i'd say|i would say|i guess|my answer is|my guess is|probably|definitely|clearly|"
    r"likely|most likely|certainly|surely|it's|it is|it was|this is|that is|that's|this one is|"
    r"this (?:article|text|review|news|story|utterance|statement|remark|one) is|"
    r"the (?:article|text|review|news|story|utterance|statement|remark) is|"
    r"(?:the )?(?:final |correct )?(?:answer|label|category|topic|class|classification|sentiment|emotion|prediction)"
    r"(?: is| would be)?|about|the|an|a|so|well|ok|okay|sure|i'd go with|i choose|i pick)\b[\s:,=-]*)+")
_FILLER_SUFFIX = re.compile(
    r"(?:[\s-]+(?:news|category|topic|section|article|story|sentiment|review|emotion|class|label|one|"
    r"overall|for sure|i think|i believe|probably))+$")


# ---- multiple choice ---------------------------------------------------------------------

_LETTER_MARKER = re.compile(
    r"\b(?i:(?:final |correct |best )?answer|option|choice|choose|pick|select|go with|say|"
    r"letter)(?:\s+(?i:is|would be|should be|must be|will be))?\s*[:=-]?\s*"
    r"(?:(?i:option|choice|letter)\s*)?[(\[]?([A-Ea-e])[)\]]?(?![\w'-])")
_WHOLE_LETTER = re.compile(
    r"(?:(?:the )?(?:final |correct |best )?(?:answer|option|choice|letter)(?: is| would be)?\s*[:=-]?\s*)?"
    r"(?:option |choice |letter )?[(\[]?([a-e])[)\]]?(?:[.:)](?:\s+.*)?)?")
_TEXT_MARKER = re.compile(r"(?i)\b(?:answer|choice|option)\s*(?:is|would be|should be|:)\s*([^.\n]+)")
_LETTER_MENTIONS = re.compile(
    r"[(\[]([A-Ea-e])[)\]]"                              # (B)
    r"|(?<![\w'-])([A-E])(?:\)|:|\.(?![\w.]))"           # B)  B:  B.
    r"|(?<![\w'-])([B-E])(?![\w'-])"                     # a lone capital B-E
    r"|(?<![\w'-])(A)(?=\s*$|\s*[,;!?]|\s+(?:or|and|is|was|seems|would|could|might|because|since|as|fits)\b)"
)


@dataclass(frozen=True, eq=False)
class ChoiceParser:
    """Lettered multiple choice (A-E): reads letters, then, given the item, the options' texts."""

    letters: tuple[str, ...] = ("A", "B", "C", "D", "E")

    def parse(self, text: object, item: Mapping | None = None) -> str:
        raw = _IDIOMS.sub(" ", clean_generation(text))
        if not _strip_edges(raw):
            return UNPARSED
        m = _WHOLE_LETTER.fullmatch(_strip_edges(raw.lower()))
        if m:
            return m.group(1).upper()
        found = {m.group(1).upper() for m in _LETTER_MARKER.finditer(raw)
                 if self._is_letter(raw, m) and _context(raw[: m.start()].lower()) == "plain"}
        if found:
            return found.pop() if len(found) == 1 else UNPARSED
        choices = _choices(item)
        if choices:
            found = set()
            for m in _TEXT_MARKER.finditer(raw):
                found |= _option_mentions(m.group(1), choices)
            if found:
                return found.pop() if len(found) == 1 else UNPARSED
        found = set()
        for m in _LETTER_MENTIONS.finditer(raw):
            letter = next(g for g in m.groups() if g).upper()
            if _context(raw[: m.start()].lower()) == "plain":
                found.add(letter)
        if found:
            return found.pop() if len(found) == 1 else UNPARSED
        if choices:
            found = _option_mentions(raw, choices)
            if len(found) == 1:
                return found.pop()
        return UNPARSED

    @staticmethod
    def _is_letter(text: str, m: re.Match) -> bool:
        # "the answer is a river": a lower-case a/e after a marker is an article unless it ends the clause.
        if m.group(1).isupper():
            return True
        return re.match(r"\s*(?:$|[.,;:!?)\]\n])", text[m.end():]) is not None


def _choices(item: Mapping | None) -> dict[str, str]:
    if not item or not item.get("choices"):
        return {}
    choices = item["choices"]
    if isinstance(choices, Mapping):
        return {str(k).upper(): str(v) for k, v in choices.items()}
    return {"ABCDE"[i]: str(c) for i, c in enumerate(choices[:5])}


def _option_mentions(text: str, choices: Mapping[str, str]) -> set[str]:
    norm = " " + _plain_words(text) + " "
    found: set[str] = set()
    # Longest option first, blanking each match, so "bank" does not also fire inside "bank vault".
    for letter, option in sorted(choices.items(), key=lambda kv: -len(kv[1])):
        words = _plain_words(option)
        if not words:
            continue
        while (i := norm.find(f" {words} ")) >= 0:
            if _context(norm[:i]) == "plain":
                found.add(letter)
            norm = norm[:i] + " " + "#" * len(words) + " " + norm[i + len(words) + 2:]
    return found


def _plain_words(s: str) -> str:
    s = re.sub(r"[^\w\s',]", " ", s.lower())
    s = re.sub(r"\b(?:a|an|the)\b", " ", s)
    return " ".join(s.split())


# ---- open answers (TriviaQA) -------------------------------------------------------------

_ANSWER_MARKER = re.compile(
    r"(?i)\b(?:(?:the )?(?:final |correct |short )?answer(?: is|:| would be| =)|"
    r"i (?:think|believe|guess) (?:it's|it is|it was|that it's|the answer is|that)|"
    r"(?:it's|it is|that's|that is|that would be) (?:probably|likely|most likely)|i'm (?:fairly |pretty )?sure it's)\s*[:-]?\s*(.+)")
_REFUSAL = re.compile(
    r"(?i)^(?:i (?:do not|don't|cannot|can't|am unable to|am not able to|have no)\b|i'm (?:unable|not able|not sure|sorry)\b|"
    r"i am (?:not sure|sorry)\b|sorry\b|unfortunately\b|unknown$|no idea|not sure\b|unsure\b|n/?a$|none$|"
    r"as an ai\b|i apologi[sz]e|there is no (?:answer|way)|it is not possible|it's not possible|"
    r"i'm afraid\b|i can't\b|cannot (?:answer|determine|be determined))")
_LEADING_FILLER = re.compile(
    r"(?i)^(?:(?:well|so|sure|okay|ok|yes|hmm|certainly|of course|answer|the answer is|it's|it is|it was|"
    r"that's|that is|that would be|this is|probably|perhaps|maybe|likely|i think|i believe)\b[\s,:!-]*)+")
_TRAILING_FILLER = re.compile(r"(?i)\s*(?:is (?:the|my) (?:correct |right |final )?answer|,? i (?:think|believe)|"
                              r"\(?i think\)?|,? probably)\s*$")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "mt", "jr", "sr", "vs", "no", "ft", "lt", "col", "gen", "sgt", "prof", "rev", "co", "inc", "ltd"}


def normalize_answer(s: str) -> str:
    """TriviaQA's official normalisation: underscores and punctuation to spaces, lower case,
    articles (a, an, the) dropped, whitespace collapsed."""
    s = str(s).replace("_", " ").lower()
    exclude = set(string.punctuation + "\u2018\u2019\u00b4`")
    s = "".join(" " if ch in exclude else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split()).strip()


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    """Normalised exact match against any alias (the official metric, max over ground truths)."""
    if prediction is None or prediction == UNPARSED:
        return False
    pred = normalize_answer(prediction)
    return bool(pred) and any(pred == normalize_answer(a) for a in answers if a is not None)


def _first_sentence(s: str) -> str:
    """Up to the first sentence end that is not an abbreviation or an initial ("J. K. Rowling")."""
    for m in re.finditer(r"[.!?](?=\s+\S|\s*$)", s):
        before = re.search(r"(\w+)$", s[: m.start()])
        word = before.group(1) if before else ""
        if m.group(0) == "." and (len(word) == 1 or word.lower() in _ABBREVIATIONS):
            continue
        return s[: m.start()]
    return s


@dataclass(frozen=True, eq=False)
class OpenAnswerParser:
    """Open answer: the short answer the reply gives, or UNPARSED for refusals and empty replies."""

    def parse(self, text: object) -> str:
        t = clean_generation(text)
        lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
        if not lines:
            return UNPARSED
        marked = [m.group(1) for ln in lines for m in [_ANSWER_MARKER.search(ln)] if m]
        candidate = marked[-1] if marked else lines[0]
        if not marked and _REFUSAL.match(candidate):
            return UNPARSED
        candidate = _first_sentence(candidate.strip())
        candidate = _LEADING_FILLER.sub("", candidate)
        candidate = _TRAILING_FILLER.sub("", candidate)
        candidate = candidate.strip().strip("\"'").strip(" .,;:!?").strip()
        if not candidate or _REFUSAL.match(candidate) or not normalize_answer(candidate):
            return UNPARSED
        return candidate
