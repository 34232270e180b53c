"""`interp demo`: every capability of the toolkit, end to end, on built-in tiny models and
built-in speech, in one output folder.

The models are tiny checkpoints of the real classes (Qwen2-Audio as the speech LLM, Whisper as
ASR and encoder control). So that there is a behaviour to explain, the speech LLM is first
taught the demo items' answers (`teach_answers`: a few dozen AdamW steps on the clean items,
which it memorises); Whisper stays random, so the cascade answers from noise. Scores are about
the demo, not about speech LLMs: what the demo shows is each step running, what it writes, and
that the instruments see the effects they should (an erased concept drops accuracy, a random
subspace of the same rank does not). Each step is a library call that the CLI could make on its
own; `run_demo` returns a dict of what was written, step by step.
"""

from __future__ import annotations

from pathlib import Path

from interp.atomic import write_json
from interp.progress import Progress, stage


def run_demo(out: str | Path, progress: Progress | None = None, n_per_task: int = 3) -> dict:
    """Run the demo into `out`, reporting each stage to `progress` (`interp.progress`)."""
    from cascades.agreement import accuracy_table
    from cascades.asr import transcribe
    from cascades.predictions import PredictionsFile
    from cascades.runner import answer_speech, answer_text
    from cascades.textllm import TextLLM
    from interp.manifest import read_manifest
    from interp.models import load_model
    from interp.testing import make_tiny
    from interp.trace import trace
    from tasks import demo_data, speech_prompt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outputs: dict = {}

    # 1. models and data
    models = {f: make_tiny(f, out / "models" / f) for f in ("qwen2-audio", "whisper")}
    outputs["models"] = {k: str(v) for k, v in models.items()}
    data = demo_data(out / "data", tasks=("agnews", "sst2"), n_per_task=n_per_task, snrs=(0.0,))
    clean, noisy = read_manifest(data["clean"]), read_manifest(data["noisy"][0.0])
    outputs["data"] = {"clean": str(data["clean"]), "noisy_0db": str(data["noisy"][0.0])}
    speech = load_model(models["qwen2-audio"], device="cpu")
    losses = teach_answers(speech, clean, progress=progress)
    speech.model.save_pretrained(models["qwen2-audio"])
    outputs["teach_loss"] = {"first": round(losses[0], 4), "last": round(losses[-1], 4), "steps": len(losses)}
    whisper = load_model(models["whisper"], device="cpu")

    # 2. traces: the speech LLM's residual stream, and Whisper's encoder as the control model
    store = out / "acts.h5"
    trace(speech, clean, store, layers="all", positions="all", dtype="float32", batch_size=4, overwrite=True,
          prompt=speech_prompt, progress=progress)
    enc_store = out / "whisper_encoder.h5"
    trace(whisper, clean, enc_store, layers="all", positions="audio", dtype="float32", batch_size=4, overwrite=True,
          component="encoder", prompt=speech_prompt, progress=progress)
    outputs["stores"] = {"speech_llm": str(store), "whisper_encoder": str(enc_store)}

    # 3. behaviour: the speech LLM and its matched cascade (Whisper -> its own backbone), clean and noisy
    items = clean + noisy
    with PredictionsFile(out / "preds_speech_llm.jsonl", overwrite=True) as speech_preds:
        answer_speech(speech, items, system="qwen2-audio-tiny", batch_size=4, max_new_tokens=8,
                      on_batch=speech_preds.add, progress=progress)
    texts = transcribe(models["whisper"], items, batch_size=4, progress=progress)
    with PredictionsFile(out / "preds_cascade.jsonl", overwrite=True) as cascade_preds:
        answer_text(TextLLM.from_speech_model(speech), items, texts, system="cascade:whisper-tiny->self",
                    batch_size=4, max_new_tokens=8, on_batch=cascade_preds.add, progress=progress)
    outputs["predictions"] = [str(speech_preds.path), str(cascade_preds.path)]
    outputs["accuracy"] = accuracy_table(speech_preds.rows + cascade_preds.rows)

    # 4. agreement statistics
    from cascades.compare import compare_files
    from cascades.plots import write_plots
    from cascades.report import write_report

    report = compare_files([speech_preds.path, cascade_preds.path], n_resamples=2000)
    plots = write_plots(report, out / "compare")
    files = write_report(report, out / "compare", plots=plots)
    outputs["compare"] = {k: str(v) for k, v in files.items()} | {"plots": [str(p) for p in plots]}

    outputs.update(_mechanistic(speech, store, clean, out, progress))
    write_json(out / "summary.json", outputs)
    return outputs


TEACH_STEPS = 40


def teach_answers(adapter, rows: list, steps: int = TEACH_STEPS, lr: float = 3e-3, seed: int = 0,
                  progress: Progress | None = None) -> list[float]:
    """Train the whole model (teacher forcing) to answer each item's speech prompt with its label.

    One batch of every item, left-padded, the label and the end-of-turn token appended after
    the prompt; the loss counts only the answer tokens. Returns the loss per step.
    """
    import torch

    from interp.audio import load_audio
    from tasks import get_task

    tok = adapter.tokenizer
    batch = adapter.prepare([load_audio(r["audio"], adapter.sampling_rate) for r in rows],
                            [get_task(r["task"]).speech_prompt(r) for r in rows], padding_side="left")
    end = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else tok.eos_token
    answers = [tok(str(r["label"]) + end, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(map(len, answers))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, a in enumerate(answers):
        ids[i, :len(a)], mask[i, :len(a)] = torch.tensor(a), 1
    inputs = dict(batch.inputs)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], mask], 1)
    labels = torch.cat([torch.full_like(batch.inputs["input_ids"], -100), ids.masked_fill(mask == 0, -100)], 1)
    advance = stage(progress, "teach the speech LLM", steps, "steps")
    torch.manual_seed(seed)
    optimiser = torch.optim.AdamW(adapter.model.parameters(), lr=lr)
    adapter.model.train()
    losses = []
    try:
        for _ in range(steps):
            loss = adapter.model(**inputs, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.detach().item())
            advance(1)
    finally:
        adapter.model.eval()
    return losses


def _mechanistic(speech, store: Path, clean: list, out: Path, progress: Progress | None) -> dict:
    """Probes (label, energy, ctc), the logit lens and a LEACE erasure experiment on the speech LLM's store."""
    from interp.analysis.lens import TokenForms, lens_store
    from interp.analysis.lens_outputs import emit_manifest, write_lens
    from interp.analysis.plots import write_lens_plots, write_probe_plot
    from interp.analysis.probing import ProbeConfig
    from interp.analysis.sweep import plan_probe, run_probe
    from interp.store import ActivationStore

    outputs: dict = {"probes": {}}
    config = ProbeConfig(folds=3, ctc_epochs=20)  # a handful of demo items
    with ActivationStore(store) as st:
        for target in ("label", "energy", "ctc"):
            result = run_probe(plan_probe(st, target, config=config), progress=progress)
            write_json(out / "probes" / f"{target}.json", result.to_dict())
            outputs["probes"][target] = str(write_probe_plot(result, out / "probes" / f"{target}.png"))
        lens = lens_store(speech, st, progress=progress)
    last = lens.layers[-1]
    files = [write_lens(lens, out / "lens" / "lens.jsonl", speech.tokenizer)]
    files += write_lens_plots(lens, TokenForms(speech.tokenizer), out / "lens" / "lens.png")
    files.append(emit_manifest(lens, last, out / "lens" / f"implicit_L{last}.jsonl"))
    outputs["lens"] = ", ".join(map(str, files))

    # LEACE erasure of the label at every block, kept on through generation, with its random control
    from interp.experiments.erase import erase_experiment
    from interp.experiments.erase_report import write_erase_report

    layers = ",".join(str(i) for i in range(speech.n_layers))
    with ActivationStore(store) as st:
        result = erase_experiment(speech, clean, st, "label", layers, out / "erase", batch_size=4, max_new_tokens=8,
                                  holdout=0.3, controls=("random",), progress=progress)
    outputs["erase"] = {k: str(v) for k, v in write_erase_report(result, out / "erase").items()}
    return outputs


def describe(outputs: dict) -> list[tuple[str, str]]:
    """(what, where) rows for printing."""
    rows = [("tiny models", ", ".join(outputs["models"].values())),
            ("speech (clean / 0 dB babble)", f"{outputs['data']['clean']} / {outputs['data']['noisy_0db']}"),
            ("activation stores", ", ".join(outputs["stores"].values())),
            ("predictions", ", ".join(outputs["predictions"])),
            ("agreement report", outputs["compare"]["markdown"])]
    for key in ("probes", "lens", "erase"):
        value = outputs.get(key)
        if isinstance(value, dict):
            rows += [(f"{key}: {k}", str(v)) for k, v in value.items()]
        elif value:
            rows.append((key, str(value)))
    return rows
