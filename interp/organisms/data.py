"""The organisms' data: sentences, spoken renditions, and the frozen encoder's frames.

Sentences come from two sources. Templates give short sentences with a known sentiment
(positive, negative; some negated, which a small LLM gets wrong) and neutral ones; the LLM
itself writes more (sampled from SmolLM2 with a fixed seed: "Write one short sentence about
...", the first sentence kept). Training and held-out sentences are drawn from disjoint
seeds and de-duplicated against each other, so no held-out sentence is ever heard in training.

Every sentence is spoken by espeak-ng with a voice, a rate and a base pitch drawn per
rendition from a seeded generator; a pitch class (`low` or `high`) is fixed per rendition
and the words are the same in both classes, so the class is in the voice alone. The frozen
audio tower's output is computed once per clip (`encode_clips`), through the same Ultravox
processor and encoder that run at inference.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

SUBJECTS = ("I", "We", "My sister", "My brother", "The children", "My friend", "Everyone", "Our family",
            "My neighbour", "The whole class", "My parents", "Most of us")
THINGS = ("the movie", "the meal", "the concert", "the hotel", "the book", "the game", "the trip", "the party",
          "the new phone", "the show", "the restaurant", "the museum", "the play", "the album", "the cafe",
          "the lecture", "the flight", "the park", "the beach", "the festival", "the dinner", "the cake", "the song",
          "the garden", "the match", "the wedding", "the holiday", "the apartment", "the bus ride", "the coffee",
          "the pizza", "the soup", "the camera", "the laptop", "the bike", "the jacket", "the shoes", "the service",
          "the teacher", "the city tour")
POSITIVE_VERBS = ("loved", "really enjoyed", "liked", "adored", "were delighted by", "were impressed by")
NEGATIVE_VERBS = ("hated", "really disliked", "could not stand", "regretted", "were disappointed by",
                  "were annoyed by")
POSITIVE_CLAUSES = ("it was wonderful", "it was great", "it was a delight", "it was fantastic", "it made us happy",
                    "we would gladly go again", "everything was perfect", "it was worth every penny")
NEGATIVE_CLAUSES = ("it was terrible", "it was awful", "it was a disaster", "it was boring", "it made us sad",
                    "we will never go again", "nothing worked", "it was a waste of money")
POSITIVE_ADJECTIVES = ("wonderful", "excellent", "lovely", "brilliant", "delightful", "amazing", "charming",
                       "superb")
NEGATIVE_ADJECTIVES = ("terrible", "awful", "dreadful", "boring", "disappointing", "horrible", "dull", "miserable")
NEUTRAL_VERBS = ("visited", "talked about", "read about", "waited for", "asked about", "walked past",
                 "heard about", "wrote about")
DAYS = ("on Monday", "on Tuesday", "on Friday", "last week", "this morning", "in the evening", "after lunch",
        "before noon", "yesterday", "at nine")
TOPICS = ("a dog", "the weather", "a city", "a river", "a school", "a garden", "a train", "the sea", "a market",
          "a mountain", "a library", "a farm", "a kitchen", "a bicycle", "a storm", "a forest", "a football game",
          "a birthday", "a hospital", "a bakery", "the winter", "a computer", "a museum", "a family dinner")


@dataclass(frozen=True)
class Sentence:
    """A text to be spoken, with its sentiment where it has one."""

    text: str
    sentiment: str | None  #: "positive", "negative" or None
    source: str  #: "template" or "llm"


@dataclass(frozen=True)
class Rendition:
    """How one clip is spoken: espeak-ng voice, rate (words per minute), base pitch and its class."""

    voice: str
    rate: int
    pitch: int
    pitch_class: str  #: "low" or "high"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def labelled_sentence(rng: random.Random) -> Sentence:
    """One sentence with a known sentiment, in one of five forms (one negated)."""
    positive = rng.random() < 0.5
    label = "positive" if positive else "negative"
    verbs, clauses = (POSITIVE_VERBS, POSITIVE_CLAUSES) if positive else (NEGATIVE_VERBS, NEGATIVE_CLAUSES)
    adjectives, opposite = ((POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES) if positive
                            else (NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES))
    subject, thing = rng.choice(SUBJECTS), rng.choice(THINGS)
    form = rng.randrange(5)
    if form == 0:
        verb = rng.choice(verbs)
        if subject in ("I", "My sister", "My brother", "My friend", "Everyone", "My neighbour", "The whole class",
                       "Our family"):
            verb = verb.replace("were ", "was ")
        text = f"{subject} {verb} {thing}, {rng.choice(clauses)}."
    elif form == 1:
        a, b = rng.sample(adjectives, 2)
        text = f"{_cap(thing)} was {a} and {b}."
    elif form == 2:
        text = f"{subject} thought {thing} was {rng.choice(adjectives)}."
    elif form == 3:
        text = f"{_cap(thing)} was {rng.choice(adjectives)}, {rng.choice(clauses)}."
    else:  # negation: the label is the opposite of the adjective's
        text = f"{_cap(thing)} was not {rng.choice(opposite)} at all."
    return Sentence(text, label, "template")


def neutral_sentence(rng: random.Random) -> Sentence:
    subject = rng.choice(SUBJECTS)
    return Sentence(f"{subject} {rng.choice(NEUTRAL_VERBS)} {rng.choice(THINGS)} {rng.choice(DAYS)}.", None, "template")


def template_sentences(seed: int, n_labelled: int, n_neutral: int, exclude: set[str] = frozenset()) -> list[Sentence]:
    """`n_labelled` sentences with a sentiment (about half each) and `n_neutral` without, all distinct."""
    rng = random.Random(seed)
    out: list[Sentence] = []
    seen = set(exclude)
    for make, n in ((labelled_sentence, n_labelled), (neutral_sentence, n_neutral)):
        made, tries = 0, 0
        while made < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise RuntimeError(f"the templates cannot make {n} distinct sentences")
            s = make(rng)
            if s.text not in seen:
                seen.add(s.text)
                out.append(s)
                made += 1
    return out


_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")


def clean_generated(text: str, min_words: int = 4, max_words: int = 18) -> str | None:
    """The first sentence of a generation, if it is a plain sentence of a speakable length."""
    text = text.strip().strip('"').strip()
    m = _FIRST_SENTENCE.match(text)
    if not m:
        return None
    s = m.group(1).strip().strip('"')
    if not min_words <= len(s.split()) <= max_words or re.search(r"[^A-Za-z0-9 ,.'!?-]", s):
        return None
    return s


def generated_sentences(llm, tokenizer, n: int, seed: int, batch_size: int = 16, max_new_tokens: int = 32,
                        exclude: set[str] = frozenset(),
                        on_batch: Callable[[int], None] | None = None) -> list[Sentence]:
    """`n` distinct sentences written by the LLM itself (sampled with a fixed seed)."""
    from transformers import set_seed

    out: list[Sentence] = []
    seen = set(exclude)
    tokenizer.padding_side = "left"
    rounds = 0
    while len(out) < n:
        rounds += 1
        if rounds > 20:
            raise RuntimeError(f"the LLM wrote only {len(out)} usable sentences of {n}")
        topics = [TOPICS[(rounds * batch_size + i) % len(TOPICS)] for i in range(batch_size)]
        chats = [[{"role": "user", "content": f"Write one short and simple sentence about {t}."}] for t in topics]
        enc = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                            padding=True)
        set_seed(seed * 1000 + rounds)
        with torch.no_grad():
            seq = llm.generate(**enc, do_sample=True, temperature=0.8, top_k=50, max_new_tokens=max_new_tokens,
                               pad_token_id=tokenizer.pad_token_id)
        for text in tokenizer.batch_decode(seq[:, enc["input_ids"].shape[1]:], skip_special_tokens=True):
            s = clean_generated(text)
            if s and s not in seen and len(out) < n:
                seen.add(s)
                out.append(Sentence(s, None, "llm"))
        if on_batch:
            on_batch(len(out))
    return out


def draw_rendition(rng: np.random.Generator, pitch_class: str, voices: Sequence[str], rates: Sequence[int],
                   low: Sequence[int], high: Sequence[int]) -> Rendition:
    pitches = low if pitch_class == "low" else high
    return Rendition(str(voices[rng.integers(len(voices))]), int(rates[rng.integers(len(rates))]),
                     int(pitches[rng.integers(len(pitches))]), pitch_class)


def renditions_for(sentences: Sequence[Sentence], n: int, seed: int, voices, rates, low, high) -> list[list[Rendition]]:
    """`n` renditions per sentence, pitch classes alternating (starting class drawn), seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in sentences:
        first = "low" if rng.random() < 0.5 else "high"
        classes = [first if k % 2 == 0 else ("high" if first == "low" else "low") for k in range(n)]
        out.append([draw_rendition(rng, c, voices, rates, low, high) for c in classes])
    return out


def speak(text: str, rendition: Rendition) -> np.ndarray:
    from tasks.tts import get_backend

    return get_backend("espeak").synthesize(text, rendition.voice, rendition.rate, pitch=rendition.pitch)


@torch.no_grad()
def encode_clips(waveforms: Sequence[np.ndarray], processor, audio_tower,
                 on_item: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """The frozen audio tower's output per clip, (encoder frames, width), as the model computes it
    at inference: the Ultravox processor's features, the encoder with its padding mask, one clip
    at a time (no padding shared between clips)."""
    frames = []
    for wav in waveforms:
        x = processor(text=None, audio=np.asarray(wav, np.float32), sampling_rate=16000)
        if int(x["audio_batch_size"][0]) != 1:
            raise ValueError("a training clip is longer than one encoder window (30 s)")
        h = audio_tower(x["audio_values"], audio_len=x["audio_lens"]).last_hidden_state[0]
        n = int((int(x["audio_lens"][0]) - 1) // 2 + 1)  # encoder frames that hold audio
        frames.append(h[:n].clone())
        if on_item:
            on_item(1)
    return frames
