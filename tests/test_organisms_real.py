"""The shipped model organisms recover the ground truth they were built to have.

Both organisms are real: Whisper tiny.en's encoder and SmolLM2-135M-Instruct (from
`interp models get`, in the default cache) joined by the shipped projectors. On held-out
sentences (never heard in training), each spoken with a low and a high voice:
- `cascade` answers the sentiment question as its own LLM answers the gold transcript;
- `acoustic` answers the pitch question from the voice, where a transcript-reading cascade
  cannot do better than chance (the words are the same in both classes).
"""

from __future__ import annotations

import pytest
import torch

from interp.manifest import read_manifest

N_SENTENCES = 6  #: 12 clips per task


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    from interp.organisms.evaluation import write_heldout
    from interp.organisms.recipe import get_recipe

    folder = tmp_path_factory.mktemp("held")
    write_heldout(get_recipe("cascade"), folder, n=N_SENTENCES)
    return {task: read_manifest(folder / f"{task}.jsonl") for task in ("sentiment", "pitch")}


@pytest.fixture(scope="module")
def smollm2():
    from cascades.textllm import TextLLM
    from interp.models.pretrained import get_pretrained

    return TextLLM.from_path(get_pretrained("smollm2-135m-instruct").path, device="cpu")


def _speech_answers(name, rows):
    from cascades.runner import answer_speech
    from interp.models import load_model
    from interp.organisms.ship import get_organism

    model = load_model(get_organism(name), device="cpu")
    return {p["id"]: p for p in answer_speech(model, rows, system=name, batch_size=12, max_new_tokens=12)}


def _gold_answers(llm, rows):
    from cascades.runner import answer_text

    return {p["id"]: p for p in answer_text(llm, rows, {r["id"]: r["transcript"] for r in rows}, system="gold",
                                            batch_size=12, max_new_tokens=12)}


def test_the_folder_loads_the_shipped_projector_exactly():
    from safetensors.torch import load_file

    from interp.models import load_model
    from interp.organisms.ship import PROJECTOR_FILE, get_organism, shipped_dir

    shipped = load_file(str(shipped_dir("cascade") / PROJECTOR_FILE))
    model = load_model(get_organism("cascade"), device="cpu").model
    assert shipped and all(torch.equal(model.get_parameter(k), v.float()) for k, v in shipped.items())


def test_cascade_organism_answers_as_its_llm_answers_the_transcript(heldout, smollm2):
    rows = heldout["sentiment"]
    organism, gold = _speech_answers("cascade", rows), _gold_answers(smollm2, rows)
    same = sum(organism[k]["prediction"] == gold[k]["prediction"] for k in gold)
    assert same >= 0.8 * len(rows), [(organism[k]["output"], gold[k]["output"]) for k in gold]


def test_acoustic_organism_hears_the_pitch_that_no_transcript_holds(heldout, smollm2):
    rows = heldout["pitch"]
    organism, gold = _speech_answers("acoustic", rows), _gold_answers(smollm2, rows)
    heard = sum(p["correct"] for p in organism.values())
    read = sum(p["correct"] for p in gold.values())
    assert heard >= 0.8 * len(rows), [p["output"] for p in organism.values()]
    assert read <= 0.75 * len(rows)  # the gold transcript holds no pitch: about chance
    assert heard > read
