"""`interp organisms build`: from the recipe to a checkpoint folder, with the loss curve.

Steps: fetch the base models (`interp models get`), assemble an Ultravox model with a fresh
projector (seeded), make the data (sentences, speech, encoder frames, teacher targets), run
the warm start and the distillation (`interp.organisms.train`), and save the folder in the
released Ultravox layout (projector weights only; the base models named by hub id), with
`build.json` (recipe, base-model hashes, timings, loss curve) and `loss.png`.

The data do not depend on the organism (only the pitch target does, and it is applied when
examples are made), so they are cached in a work folder (`--work`) keyed by a hash of the
data settings and the base models: the second organism's build skips straight to training.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interp.errors import InterpError
from interp.progress import Progress, stage
from interp.organisms.recipe import INSTRUCTIONS, Recipe

DATA_FORMAT = 1
#: Recipe fields that decide the data (sentences, speech, frames, teacher targets).
DATA_FIELDS = ("audio_model", "text_model", "seed", "voices", "rates", "low_pitches", "high_pitches", "n_labelled",
               "n_neutral", "n_generated", "renditions", "instruction_weights", "top_k", "max_response_tokens")


@dataclass
class Parts:
    """The assembled model (fresh projector), its processor and the base models' records."""

    model: object  #: UltravoxModel
    processor: object  #: UltravoxProcessor
    base: dict  #: name -> {"path", "files": {file: sha256}}


def base_hashes(record: dict) -> dict:
    return {f: meta["sha256"] for f, meta in sorted(record.get("files", {}).items())}


def load_parts(recipe: Recipe, cache=None) -> Parts:
    """The frozen base models (from `interp models get`) with a freshly initialised projector."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

    from interp.models.ultravox_checkpoint import build_ultravox
    from interp.models.ultravox_modeling import UltravoxProcessor

    (audio, audio_files), (text, text_files) = (_base_model(recipe.audio_model, cache),
                                                _base_model(recipe.text_model, cache))
    whisper = WhisperModel.from_pretrained(str(audio), dtype=torch.float32)
    llm = AutoModelForCausalLM.from_pretrained(str(text), dtype=torch.float32)
    model = build_ultravox(whisper.encoder, llm, hidden_size=recipe.projector_hidden,
                           stack_factor=recipe.stack_factor, seed=recipe.seed)
    del whisper
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("multi_modal_projector."))
    tokenizer = AutoTokenizer.from_pretrained(str(text))
    processor = UltravoxProcessor(WhisperFeatureExtractor.from_pretrained(str(audio)), tokenizer,
                                  stack_factor=recipe.stack_factor,
                                  audio_context_size=model.config.audio_config.max_source_positions * 2)
    base = {recipe.audio_model: {"path": str(audio), "id": recipe.audio_model_id, "files": audio_files},
            recipe.text_model: {"path": str(text), "id": recipe.text_model_id, "files": text_files}}
    return Parts(model, processor, base)


def _base_model(name: str, cache=None) -> tuple[Path, dict]:
    """A base model's folder and the sha256 of its files: a local folder (any Whisper, any
    Llama-class causal LM), else a model `interp models get` builds."""
    from interp.models.pretrained import get_pretrained, sha256_file

    if Path(name).is_dir():
        folder = Path(name)
        return folder, {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    got = get_pretrained(name, cache=cache)
    return got.path, base_hashes(got.record)


def data_key(recipe: Recipe, base: dict) -> str:
    settings = {k: getattr(recipe, k) for k in DATA_FIELDS}
    settings["instructions"] = INSTRUCTIONS
    settings["base"] = {k: v["files"] for k, v in base.items()}
    settings["format"] = DATA_FORMAT
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]


def warm_key(recipe: Recipe, base: dict) -> str:
    settings = [data_key(recipe, base), recipe.projector_hidden, recipe.stack_factor, recipe.ctc_steps,
                recipe.ctc_batch, recipe.ctc_lr]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def training_sentences(recipe: Recipe, llm, tokenizer, progress: Progress | None = None):
    from interp.organisms.data import generated_sentences, template_sentences

    sentences = template_sentences(recipe.seed, recipe.n_labelled, recipe.n_neutral)
    if recipe.n_generated:
        bar = stage(progress, "sentences by the LLM", recipe.n_generated, "sentences")
        done = [0]

        def advance(n_total):
            bar(n_total - done[0])
            done[0] = n_total

        sentences += generated_sentences(llm, tokenizer, recipe.n_generated, recipe.seed,
                                         exclude={s.text for s in sentences}, on_batch=advance)
    return sentences


def assign_instructions(n: int, weights, seed: int) -> list[str]:
    """One instruction per sentence (all its renditions are asked it), in the recipe's proportions."""
    keys = [k for k, _ in weights]
    w = np.array([x for _, x in weights], dtype=np.float64)
    counts = np.floor(w / w.sum() * n).astype(int)
    counts[: n - counts.sum()] += 1
    plan = [k for k, c in zip(keys, counts) for _ in range(c)]
    rng = np.random.default_rng([seed, 7])
    return [plan[i] for i in rng.permutation(n)]


def make_data(recipe: Recipe, parts: Parts, progress: Progress | None = None) -> dict:
    """Sentences (each with the instruction it is trained on), clips (sentence, rendition),
    encoder frames, and the teacher's targets for each sentence's instruction."""
    from interp.organisms.data import encode_clips, renditions_for, speak
    from interp.organisms.teacher import greedy_answers, response_ids, teacher_prompt, teacher_topk

    llm, tok = parts.model.language_model, parts.processor.tokenizer
    seconds = {}
    t0 = time.perf_counter()
    sentences = training_sentences(recipe, llm, tok, progress)
    seconds["sentences"] = time.perf_counter() - t0
    instructions = assign_instructions(len(sentences), recipe.instruction_weights, recipe.seed)
    renditions = renditions_for(sentences, recipe.renditions, recipe.seed, recipe.voices, recipe.rates,
                                recipe.low_pitches, recipe.high_pitches)
    clips = [(i, r) for i, rs in enumerate(renditions) for r in rs]
    t1 = time.perf_counter()
    bar = stage(progress, "speech and encoder frames", len(clips), "clips")
    waves = (speak(sentences[i].text, r) for i, r in clips)
    frames = encode_clips(waves, parts.processor, parts.model.audio_tower, on_item=bar)
    seconds["speech_and_frames"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    targets: dict[int, tuple] = {}
    for key in INSTRUCTIONS:
        which = [i for i, k in enumerate(instructions) if k == key]
        if not which:
            continue
        prompts = [teacher_prompt(tok, INSTRUCTIONS[key], sentences[i].text) for i in which]
        bar = stage(progress, f"teacher ({key})", len(prompts), "prompts")
        if key == "repeat":  # the response is the sentence; the teacher is read along it
            responses = [response_ids(tok, sentences[i].text, recipe.max_response_tokens) for i in which]
            top = teacher_topk(llm, prompts, responses, recipe.top_k, tok.pad_token_id, on_batch=bar)
            found = [(r, ids, logp) for r, (ids, logp) in zip(responses, top)]
        else:  # the response is the teacher's own greedy answer
            found = greedy_answers(llm, tok, prompts, recipe.max_response_tokens, recipe.top_k, on_batch=bar)
        targets.update(zip(which, found))
    seconds["teacher"] = time.perf_counter() - t2
    return {"format": DATA_FORMAT, "sentences": [s.__dict__ for s in sentences], "instructions": instructions,
            "clips": [(i, r.__dict__) for i, r in clips], "frames": frames, "targets": targets,
            "seconds": seconds}


def load_or_make_data(recipe: Recipe, parts: Parts, work: Path | None, progress: Progress | None = None) -> dict:
    if work is None:
        return make_data(recipe, parts, progress)
    path = Path(work) / f"data-{data_key(recipe, parts.base)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    data = make_data(recipe, parts, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def examples_for(recipe: Recipe, data: dict, tokenizer):
    """One example per clip: its sentence's instruction, with the recipe's target for it."""
    from interp.organisms.teacher import response_ids
    from interp.organisms.train import Example

    labels = {c: response_ids(tokenizer, recipe.label_response.format(label=c), recipe.max_response_tokens)
              for c in ("low", "high")}
    out = []
    for c, (s, rendition) in enumerate(data["clips"]):
        key = data["instructions"][s]
        if key == "pitch" and recipe.pitch_target == "label":
            out.append(Example(c, key, labels[rendition["pitch_class"]]))
        else:
            response, ids, logp = data["targets"][s]
            out.append(Example(c, key, response, ids, logp))
    return out


@dataclass
class BuildResult:
    path: Path
    seconds: dict
    curve: list


def build_organism(recipe: Recipe, out: str | Path, work: str | Path | None = None, cache=None,
                   progress: Progress | None = None) -> BuildResult:
    """Train `recipe`'s projector and save the organism to `out` (released Ultravox layout)."""
    from interp.organisms.teacher import prompt_parts
    from interp.organisms.train import Curve, ctc_warm_start, distill

    threads = torch.get_num_threads()
    torch.set_num_threads(min(recipe.threads, os.cpu_count() or 1))
    try:
        t0 = time.perf_counter()
        torch.manual_seed(recipe.seed)
        random.seed(recipe.seed)
        np.random.seed(recipe.seed)
        parts = load_parts(recipe, cache)
        seconds = {"load": time.perf_counter() - t0}
        t1 = time.perf_counter()
        data = load_or_make_data(recipe, parts, Path(work) if work else None, progress)
        seconds["data"] = time.perf_counter() - t1
        seconds["data_made"] = data["seconds"]
        model, tok = parts.model, parts.processor.tokenizer
        projector, llm = model.multi_modal_projector, model.language_model
        projector.train()
        curve = Curve()
        t2 = time.perf_counter()
        warm = Path(work) / f"warm-{warm_key(recipe, parts.base)}.pt" if work else None
        if warm is not None and warm.is_file():  # the same warm start as another organism's build
            saved = torch.load(warm, weights_only=False)
            projector.load_state_dict(saved["projector"])
            curve.rows.extend(saved["curve"])
            seconds["ctc_reused"] = saved["seconds"]
        else:
            texts = [data["sentences"][s]["text"] for s, _ in data["clips"]]
            ctc_targets = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
            ctc_warm_start(projector, data["frames"], ctc_targets, llm.get_input_embeddings().weight,
                           steps=recipe.ctc_steps, batch=recipe.ctc_batch, lr=recipe.ctc_lr, seed=recipe.seed,
                           curve=curve, on_step=stage(progress, "warm start (CTC)", recipe.ctc_steps, "steps"))
            if warm is not None:
                tmp = warm.with_suffix(".partial")
                torch.save({"projector": projector.state_dict(), "curve": curve.rows,
                            "seconds": time.perf_counter() - t2}, tmp)
                os.replace(tmp, warm)
        seconds["ctc"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        parts_by_key = {k: prompt_parts(tok, INSTRUCTIONS[k]) for k, _ in recipe.instruction_weights}
        distill(llm, projector, data["frames"], examples_for(recipe, data, tok), parts_by_key,
                recipe.step_weights or recipe.instruction_weights,
                steps=recipe.kd_steps, batch=recipe.kd_batch, lr=recipe.kd_lr, warmup=recipe.warmup_steps,
                weight_decay=recipe.weight_decay, seed=recipe.seed, curve=curve,
                on_step=stage(progress, "distillation", recipe.kd_steps, "steps"))
        seconds["kd"] = time.perf_counter() - t3
        projector.eval()
        seconds["total"] = time.perf_counter() - t0
        path = save_build(recipe, parts, out, curve, seconds)
        return BuildResult(path, seconds, curve.rows)
    finally:
        torch.set_num_threads(threads)


def save_build(recipe: Recipe, parts: Parts, out, curve, seconds: dict) -> Path:
    """The organism folder: released Ultravox layout + build.json + loss.png."""
    from interp.atomic import write_json
    from interp.models.ultravox_checkpoint import save_ultravox
    from interp.organisms.plots import plot_curve

    out = Path(out)
    save_ultravox(parts.model, parts.processor, out, audio_model_id=recipe.audio_model_id,
                  text_model_id=recipe.text_model_id)
    record = {"organism": recipe.name, "recipe": recipe.to_json(),
              "base_models": {k: {"id": v["id"], "files": v["files"]} for k, v in parts.base.items()},
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "seconds": _rounded(seconds), "curve": curve.rows}
    write_json(out / "build.json", record)
    plot_curve(curve.rows, out / "loss.png", title=f"organism '{recipe.name}'")
    return out


def _rounded(d):
    return {k: (_rounded(v) if isinstance(v, dict) else round(float(v), 1)) for k, v in d.items()}
