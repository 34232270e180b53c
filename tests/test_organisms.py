"""The model organisms' parts that need no trained weights: the distillation loss, the shared
prompt cache, the data's guarantees (held-out sentences never heard, pitch in the voice alone)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp.organisms.recipe import RECIPES, Recipe, get_recipe
from interp.organisms.teacher import topk_kl


def test_topk_kl_is_the_full_kl_when_k_covers_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    t = torch.log_softmax(teacher, -1)
    top = t.topk(11, -1)
    expected = torch.nn.functional.kl_div(torch.log_softmax(student, -1), t, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(topk_kl(student, top.indices, top.values), expected, atol=1e-6, rtol=1e-5)


def test_topk_kl_is_the_kl_between_the_bucketed_distributions():
    """With k < vocab, the loss is KL over k + 1 outcomes: the teacher's top k and 'the rest'."""
    g = torch.Generator().manual_seed(1)
    teacher, student = 3 * torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    t, s = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    top = t.topk(6, -1)
    got = topk_kl(student, top.indices, top.values)
    for i in range(4):
        keep = top.indices[i]
        rest = torch.ones(50, dtype=torch.bool)
        rest[keep] = False
        p = torch.cat([t[i, keep].exp(), t[i, rest].exp().sum()[None]])
        q = torch.cat([s[i, keep].exp(), s[i, rest].exp().sum()[None]])
        assert float(got[i]) == pytest.approx(float((p * (p.log() - q.log())).sum()), rel=1e-4, abs=1e-6)
    assert (got >= -1e-6).all()


def test_distillation_with_the_shared_prompt_cache_equals_the_whole_sequence(tiny_model_dir):
    """The text before the audio is run once and its cache shared across the batch: the loss and
    its gradient equal those of running each example's whole sequence, prompt included."""
    from interp.models.ultravox_checkpoint import load_ultravox
    from interp.organisms.teacher import PromptParts
    from interp.organisms.train import Example, distill_loss, prefix_cache

    model, _ = load_ultravox(tiny_model_dir("ultravox"), dtype=torch.float32)
    llm, projector = model.language_model, model.multi_modal_projector
    d_audio = model.config.audio_config.d_model
    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(n, d_audio, generator=g) for n in (24, 40)]
    parts = PromptParts(prefix=[5, 6, 7, 8], suffix=[9, 10])
    vocab = llm.config.vocab_size
    top = torch.log_softmax(torch.randn(3, vocab, generator=g), -1).topk(4, -1)
    examples = [Example(0, "repeat", [11, 12, 2], top.indices, top.values), Example(1, "pitch", [13, 2])]

    loss = distill_loss(llm, projector, frames, examples, parts, prefix_cache(llm, parts.prefix))
    grad = torch.autograd.grad(loss, list(projector.parameters()))

    embed = llm.get_input_embeddings()
    losses = []
    for ex in examples:
        audio = projector(frames[ex.clip][None])[0]
        x = torch.cat([embed(torch.tensor(parts.prefix)), audio, embed(torch.tensor(parts.suffix)),
                       embed(torch.tensor(ex.response[:-1]))])
        logits = llm(inputs_embeds=x[None]).logits[0]
        start = len(parts.prefix) + len(audio) + len(parts.suffix) - 1
        logits = logits[start:start + len(ex.response)]
        losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(ex.response)) if ex.teacher_ids is None
                      else topk_kl(logits, ex.teacher_ids, ex.teacher_logp).mean())
    whole = torch.stack(losses).mean()
    torch.testing.assert_close(loss, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(grad, torch.autograd.grad(whole, list(projector.parameters()))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_held_out_sentences_are_never_training_sentences():
    from interp.organisms.data import template_sentences
    from interp.organisms.evaluation import heldout_sentences

    recipe = get_recipe("cascade")
    train = {s.text for s in template_sentences(recipe.seed, recipe.n_labelled, recipe.n_neutral)}
    held = heldout_sentences(recipe, 60)
    assert len(held) == 60 and not train & {s.text for s in held}
    assert {s.sentiment for s in held} == {"positive", "negative"}


def test_espeak_base_pitch_sets_the_voice_f0():
    """The pitch classes are in the voice: espeak's base pitch moves the speech's median F0."""
    import librosa

    from tasks.tts import get_backend

    recipe = get_recipe("acoustic")
    f0 = {}
    for pitch in (recipe.low_pitches[-1], recipe.high_pitches[0]):  # the closest low and high settings
        wav = get_backend("espeak").synthesize("The concert was lovely and bright.", "en-us", 160, pitch=pitch)
        track, voiced, _ = librosa.pyin(wav.astype(np.float32), fmin=50, fmax=400, sr=16000)
        f0[pitch] = float(np.nanmedian(track[voiced]))
    low, high = f0[recipe.low_pitches[-1]], f0[recipe.high_pitches[0]]
    assert high > 1.3 * low, f0


def test_pitch_out_of_range_is_one_clear_error():
    from interp.errors import InterpError
    from tasks.tts import get_backend

    with pytest.raises(InterpError, match="pitch 140 is out of range"):
        get_backend("espeak").synthesize("Hello.", pitch=140)


def test_held_out_items_share_their_words_across_pitch_classes(tmp_path):
    from interp.manifest import read_manifest
    from interp.organisms.evaluation import write_heldout

    manifest = write_heldout(get_recipe("cascade"), tmp_path / "held", n=3)
    pitch = read_manifest(tmp_path / "held" / "pitch.jsonl")
    assert len(read_manifest(manifest)) == 12 and len(pitch) == 6
    by_sentence: dict = {}
    for row in pitch:
        by_sentence.setdefault(row["transcript"], set()).add(row["label"])
    assert all(labels == {"low", "high"} for labels in by_sentence.values()) and len(by_sentence) == 3


def test_recipes_round_trip_through_their_json_and_refuse_unknown_settings():
    from interp.errors import InterpError

    for recipe in RECIPES.values():
        assert Recipe.from_json(recipe.to_json()) == recipe
    with pytest.raises(InterpError, match="pitch_target"):
        get_recipe("cascade").replace(pitch_target="voice")
    with pytest.raises(InterpError, match="unknown organism 'parrot'"):
        get_recipe("parrot")


def test_only_the_acoustic_organism_trains_the_pitch_label_and_on_the_class_word():
    """The organisms differ in one target: `acoustic` answers the pitch question with the clip's
    pitch class ("low"/"high"), `cascade` with the teacher's answer from the transcript."""
    from interp.organisms.build import examples_for
    from interp.testing.tokenizers import make_tokenizer

    tok = make_tokenizer(["<|im_start|>", "<|im_end|>"])
    teacher = (tok("high", add_special_tokens=False)["input_ids"], torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 2))
    data = {"clips": [(0, {"pitch_class": "low"}), (0, {"pitch_class": "high"}), (1, {"pitch_class": "low"})],
            "instructions": ["pitch", "sentiment"], "targets": {0: teacher, 1: teacher}}
    acoustic = examples_for(get_recipe("acoustic"), data, tok)
    cascade = examples_for(get_recipe("cascade"), data, tok)
    assert [tok.decode(e.response, skip_special_tokens=True) for e in acoustic[:2]] == ["low", "high"]
    assert acoustic[0].teacher_ids is None and acoustic[2].teacher_ids is not None  # sentiment: the teacher
    assert all(e.response == teacher[0] and e.teacher_ids is not None for e in cascade)


def test_an_organism_builds_from_other_parts_and_the_build_is_reproducible(tiny_model_dir, tmp_path):
    """Any Whisper and any Llama-class LLM (local folders; tiny ones here): the build trains only
    the projector, saves a folder every command loads, records the base models' file hashes, and
    a second build with the same recipe gives the same weights bit for bit."""
    from safetensors.torch import load_file

    from interp.models import load_model
    from interp.models.backbone import extract_language_model
    from interp.organisms.build import build_organism

    llama = extract_language_model(load_model(tiny_model_dir("ultravox"), device="cpu"), tmp_path / "llama")
    recipe = get_recipe("acoustic").replace(
        name="tiny", audio_model=str(tiny_model_dir("whisper")), text_model=str(llama), audio_model_id="tiny/whisper",
        text_model_id="tiny/llama", n_labelled=4, n_neutral=2, n_generated=0, ctc_steps=3, ctc_batch=4, kd_steps=4,
        kd_batch=2, warmup_steps=1, projector_hidden=32, threads=1)
    first = build_organism(recipe, tmp_path / "a", work=tmp_path / "work")
    second = build_organism(recipe, tmp_path / "b")  # no shared work folder: everything made again
    a, b = load_file(str(first.path / "model.safetensors")), load_file(str(second.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(k.startswith("multi_modal_projector.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["stage"] for r in first.curve].count("kd") == 4 and (first.path / "loss.png").is_file()
    record = json.loads((first.path / "build.json").read_text())
    assert set(record["base_models"]) == {recipe.audio_model, recipe.text_model}
    assert all(record["base_models"][k]["files"] for k in record["base_models"])
    model = load_model(first.path, device="cpu", audio_model=tiny_model_dir("whisper"), text_model=llama)
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight.detach(), a["multi_modal_projector.linear_1.weight"])


def test_organism_commands_refuse_bad_input_in_one_line(run_cli, tmp_path):
    code, _, err = run_cli("organisms", "get", "parrot")
    assert code == 2 and "unknown organism 'parrot'; choose one of cascade, acoustic" in err and "Traceback" not in err
    code, _, err = run_cli("organisms", "build", "cascade", "--out", tmp_path / "o", "--text-model", tmp_path / "none")
    assert code == 2 and "is not a folder" in err and not (tmp_path / "o").exists()
    code, out, _ = run_cli("organisms", "list")
    assert code == 0 and "cascade" in out and "acoustic" in out and "yes" in out  # both ship weights
