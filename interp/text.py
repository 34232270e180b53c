"""Text as the toolkit compares it: one normalisation for probe targets, one word error rate.

`normalise_text` is how transcripts become character targets (the `ctc` and `chars` probes and
concepts); `word_error_rate` is how a transcription is scored (a cascade's ASR, the check of a
converted Whisper), with jiwer after lower-casing and stripping punctuation on both sides.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence


def normalise_text(text: str) -> str:
    """Transcript text as probes see it: NFKC, case-folded, anything but letters, digits and
    apostrophes turned into spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", str(text or "")).casefold()
    text = re.sub(r"[^\w']|_", " ", text)
    return " ".join(text.split())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (jiwer) after lower-casing and stripping punctuation on both sides."""
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])
    refs = [norm(r) or "<empty>" for r in references]
    hyps = [norm(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))
