"""Held-out spoken items for the organisms' tasks, and the sentences they must not share.

`write_heldout` speaks labelled template sentences that are not among the training
sentences (a different seed, de-duplicated against the recipe's training templates), each
twice: once `low` and once `high`, with voices and rates drawn from a seed of their own. Each
clip is one item of the `sentiment` task (label: the sentence's sentiment) and one of the
`pitch` task (label: its pitch class). The same words are thus heard in both pitch classes, so
a transcript carries no information about the pitch label.

Written: `audio/*.wav`, `manifest.jsonl` (both tasks), `sentiment.jsonl` and `pitch.jsonl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from interp.organisms.recipe import Recipe

HELDOUT_SEED_OFFSET = 10_000


def heldout_sentences(recipe: Recipe, n: int, seed_offset: int = HELDOUT_SEED_OFFSET):
    """`n` labelled sentences none of which the recipe's training templates hold, the sentiments
    alternating (positive first), so that any `n >= 2` holds both."""
    from interp.organisms.data import template_sentences

    train = {s.text for s in template_sentences(recipe.seed, recipe.n_labelled, recipe.n_neutral)}
    pool = template_sentences(recipe.seed + seed_offset, 4 * n + 8, 0, exclude=train)
    by_label = {k: [s for s in pool if s.sentiment == k] for k in ("positive", "negative")}
    return [by_label[("positive", "negative")[i % 2]][i // 2] for i in range(n)]


def write_heldout(recipe: Recipe, out: str | Path, n: int = 60, seed_offset: int = HELDOUT_SEED_OFFSET,
                  on_item: Callable[[str], None] | None = None) -> Path:
    """Speak `n` held-out sentences in both pitch classes; returns the manifest of both tasks."""
    from interp.atomic import write_jsonl
    from interp.audio import write_wav
    from interp.organisms.data import renditions_for, speak
    from tasks.outputs import staged_output

    sentences = heldout_sentences(recipe, n, seed_offset)
    renditions = renditions_for(sentences, 2, recipe.seed + seed_offset, recipe.voices, recipe.rates,
                                recipe.low_pitches, recipe.high_pitches)
    rows: dict[str, list[dict]] = {"sentiment": [], "pitch": []}
    out = Path(out)
    with staged_output(out) as stage:
        for i, (sentence, pair) in enumerate(zip(sentences, renditions)):
            for r in sorted(pair, key=lambda r: r.pitch_class != "low"):
                clip = f"h{i:03d}-{r.pitch_class}"
                wav = speak(sentence.text, r)
                path = stage / "audio" / f"{clip}.wav"
                write_wav(path, wav, 16000)
                common = {"audio": f"audio/{clip}.wav", "transcript": sentence.text, "sentence": i,
                          "pitch_class": r.pitch_class, "tts_voice": r.voice, "tts_rate": r.rate,
                          "tts_pitch": r.pitch, "duration_s": round(len(wav) / 16000, 3)}
                rows["sentiment"].append({"id": f"{clip}-sentiment", "task": "sentiment", "label": sentence.sentiment,
                                          **common})
                rows["pitch"].append({"id": f"{clip}-pitch", "task": "pitch", "label": r.pitch_class, **common})
                if on_item:
                    on_item(clip)
        write_jsonl(stage / "sentiment.jsonl", rows["sentiment"])
        write_jsonl(stage / "pitch.jsonl", rows["pitch"])
        write_jsonl(stage / "manifest.jsonl", rows["sentiment"] + rows["pitch"])
    return out / "manifest.jsonl"
