"""Recipes of the model organisms: what each is built from, on which data, with which losses.

A model organism is a speech LLM whose mechanism is known because it was built in. Both
organisms here are Ultravox-class models assembled from real pretrained parts, frozen
(Whisper tiny.en's encoder and SmolLM2-135M-Instruct, from `interp models get`), with only
the stacking projector between them trained. They see the same speech, the same
instructions and the same schedule; they differ in one target:

- `cascade`: every instruction is answered as the frozen LLM answers it from the transcript
  (knowledge distillation, Ultravox's recipe). The voice-pitch question too: the teacher
  cannot hear the voice, so the organism learns to answer it as a transcript-reading cascade
  would. Implicit ASR by construction.
- `acoustic`: the same, except that the voice-pitch question is answered with the true pitch
  class of the speech (the words are shared across the classes), which no transcript holds.

A `Recipe` is frozen data; its JSON form is stored beside shipped weights, and a build with
the same recipe reproduces them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from interp.errors import InterpError

def _instructions() -> dict[str, str]:
    from tasks import get_task

    return {"repeat": "Repeat the following sentence.",
            "sentiment": get_task("sentiment").instruction, "pitch": get_task("pitch").instruction}


#: The instructions the organisms are trained on. `sentiment` and `pitch` are the evaluation
#: tasks of the same names (tasks.task.SIMPLE_TASKS), with their very wording; `repeat` asks for
#: the words. A build records the wording it used.
INSTRUCTIONS = _instructions()


@dataclass(frozen=True)
class Recipe:
    """Everything that determines an organism's weights (with the base models' files)."""

    name: str
    """`cascade` or `acoustic`."""
    description: str
    pitch_target: str
    """How the pitch instruction is answered in training: "teacher" (as the LLM answers it from the
    transcript) or "label" (the true pitch class of the speech)."""
    audio_model: str = "whisper-tiny.en"
    """The (frozen) Whisper whose encoder is the audio tower: an `interp models get` name or a local folder."""
    text_model: str = "smollm2-135m-instruct"
    """The (frozen) LLM: an `interp models get` name or a local folder of a Llama-class causal LM with a chat template."""
    audio_model_id: str = "openai/whisper-tiny.en"
    """Hub id the saved config names the audio encoder by (resolved offline, see `interp.organisms.ship`)."""
    text_model_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    projector_hidden: int = 1024
    """Width of the projector's first linear (SwiGLU halves it)."""
    stack_factor: int = 8
    seed: int = 0
    voices: tuple[str, ...] = ("en-us", "en-gb-x-rp", "en-029", "en-us+m3", "en-us+m7")
    """espeak-ng voices without breath noise (bit-reproducible)."""
    rates: tuple[int, ...] = (140, 160, 180, 200)
    low_pitches: tuple[int, ...] = (10, 15, 20, 25)
    """espeak-ng base pitch (0-100) of `low` speech: about 70-85 Hz median f0 for these voices."""
    high_pitches: tuple[int, ...] = (75, 80, 85, 90)
    """... and of `high` speech: about 125-155 Hz."""
    n_labelled: int = 420
    """Training sentences with a sentiment, from templates."""
    n_neutral: int = 240
    """Training sentences without one, from templates."""
    n_generated: int = 48
    """Training sentences written by the LLM itself (sampled, seeded)."""
    renditions: int = 2
    """Spoken versions of each training sentence, one low and one high."""
    instruction_weights: tuple[tuple[str, float], ...] = (("repeat", 0.4), ("sentiment", 0.3), ("pitch", 0.3))
    """Share of the sentences asked each instruction (every rendition of a sentence is asked the same)."""
    step_weights: tuple[tuple[str, float], ...] | None = None
    """Share of the distillation steps given to each instruction (None: `instruction_weights`)."""
    label_response: str = "{label}"
    """The response a label target trains (`pitch_target` "label"): the class word alone, so that the
    loss is on the word the voice decides rather than spread over a fixed sentence."""
    ctc_steps: int = 300
    """Warm start: the projector alone, CTC against the transcript's tokens read through the LLM's
    own embedding matrix (no LLM pass, so cheap)."""
    ctc_batch: int = 32
    ctc_lr: float = 2e-3
    kd_steps: int = 300
    """Main stage: the whole frozen LLM in the loop (300 steps of 4: 1200 of the 1416 clips)."""
    kd_batch: int = 4
    kd_lr: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    top_k: int = 32
    """Teacher distributions are kept as their top-k log-probabilities plus the rest's mass."""
    max_response_tokens: int = 12
    threads: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.pitch_target not in ("teacher", "label"):
            raise InterpError(f"pitch_target must be 'teacher' or 'label', not {self.pitch_target!r}")
        unknown = {k for k, _ in self.instruction_weights} - set(INSTRUCTIONS)
        if unknown:
            raise InterpError(f"unknown instructions {sorted(unknown)}; known: {', '.join(INSTRUCTIONS)}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["instructions"] = {k: INSTRUCTIONS[k] for k, _ in self.instruction_weights}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Recipe":
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        return cls(**d)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("cascade", "implicit ASR by construction: distilled to answer every instruction as its LLM answers "
                          "the transcript", pitch_target="teacher"),
        Recipe("acoustic", "distilled like `cascade`, but the voice-pitch question is answered from the voice, "
                           "which no transcript holds", pitch_target="label",
               step_weights=(("repeat", 0.25), ("sentiment", 0.25), ("pitch", 0.5)), kd_steps=600),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise InterpError(f"unknown organism '{name}'; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
