"""Forward passes and generations with interventions: `interp.run(adapter, batch,
interventions=[...], generate=True)` (this module's `run`, exported by the package).

With no interventions it is a plain forward / `generate` call. With interventions it is one
nnsight trace whose body visits the named sites the interventions act at (`interp.sites`), in
the order the model computes them, and lets each intervention rewrite its rows; under
generation the body runs for every step (`tracer.all()`), the prompt pass and each new token
alike, and each intervention acts on the steps it names. Generated ids are collected with a streamer, so
they come back even though the step loop is open-ended. The adapter's `generated` turns what
`generate` returned, or what the streamer saw, into (prompt + new ids, new ids), so both paths
return what the family's own `generate` does (Whisper's returns the new tokens alone).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers.generation.streamers import BaseStreamer

from interp.decoding import decoding_settings, greedy_kwargs
from interp.interventions import Intervention
from interp.positions import StepContext, position_masks
from interp.models.base import Batch, SpeechLM
from interp.sites import Site


@dataclass
class RunResult:
    logits: torch.Tensor | None  #: (batch, seq, vocab) of a forward pass
    sequences: torch.Tensor | None  #: (batch, prompt + new) ids of a generation
    new_tokens: torch.Tensor | None  #: (batch, new) ids generated after the prompt
    prompt_length: int
    decoding: dict | None = None  #: the decoding a generation ran (`interp.decoding.decoding_settings`)


class _Collect(BaseStreamer):
    """Collects the ids `generate` streams: the prompt first, then one column per step."""

    def __init__(self):
        self.chunks: list[torch.Tensor] = []

    def put(self, value):
        value = value.detach().cpu()
        self.chunks.append(value if value.dim() == 2 else value[:, None])

    def end(self):
        pass


def _get(envoy, site: Site):
    return envoy.input if site.io == "input" else envoy.output


def _set(envoy, site: Site, value, hidden) -> None:
    """Write `hidden` back where it was read: the first element of a tuple output (attention
    returns (hidden, weights); some blocks return tuples), the output itself, or the input."""
    if site.io == "input":
        envoy.input = hidden
    elif isinstance(value, tuple):
        envoy.output = (hidden,) + tuple(value[1:])
    else:
        envoy.output = hidden


def _apply_all(adapter: SpeechLM, batch: Batch, interventions: Sequence[Intervention], step: int):
    """One step of the trace body: visit the sites the interventions acting now name, in the
    order the model computes them (nnsight interleaves this code with the forward pass)."""
    by_site: dict[str, tuple[Site, list[Intervention]]] = {}
    for iv in interventions:
        if not iv.acts_at(step):
            continue
        for site in iv.bound:
            if step > 0 and site.prompt_only:
                continue  # the audio encoder and projector do not run on generated tokens
            by_site.setdefault(site.name, (site, []))[1].append(iv)
    masks = None
    for site, group in sorted(by_site.values(), key=lambda sg: sg[0].order):
        envoy = adapter.envoy(site.module)
        value = _get(envoy, site)
        hidden = value[0] if isinstance(value, tuple) else value
        if site.prompt_only:
            ctx = StepContext(step, None)
        else:
            masks = masks if masks is not None else position_masks(batch, step, hidden.shape[1])
            ctx = StepContext(step, masks)
        new = hidden
        for iv in group:
            new = iv.apply(new, site, ctx)
        if new is not hidden:
            _set(envoy, site, value, new)


def run(adapter: SpeechLM, batch: Batch, interventions: Sequence[Intervention] = (), generate: bool = False,
        max_new_tokens: int = 32, **generate_kwargs) -> RunResult:
    """Forward pass (logits) or greedy generation (ids) with the interventions applied.

    Generation is greedy (`interp.decoding.GREEDY` over the checkpoint's generation_config);
    `generate_kwargs` override it, and `RunResult.decoding` records what ran."""
    interventions = [iv.bind(adapter) for iv in interventions]  # resolved copies; the caller's stay as given
    prompt_length = int(batch.token_ids.shape[1])
    # Greedy whatever the checkpoint's generation_config ships (interp.decoding).
    gen_kwargs = greedy_kwargs(**{**adapter.generate_kwargs(), **generate_kwargs}, max_new_tokens=max_new_tokens)
    decoding = None
    if generate:
        tok = adapter.tokenizer
        gen_kwargs.setdefault("pad_token_id", tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        decoding = decoding_settings(adapter.model, gen_kwargs)
    with torch.no_grad():
        if not interventions:
            if generate:
                out = adapter.model.generate(**batch.inputs, **gen_kwargs)
                seq, new = adapter.generated(getattr(out, "sequences", out).cpu(), batch, streamed=False)
                return RunResult(None, seq, new, prompt_length, decoding)
            return RunResult(adapter.model(**batch.inputs).logits, None, None, prompt_length)
        root = adapter.nnsight
        if not generate:
            with root.trace(**batch.inputs):
                _apply_all(adapter, batch, interventions, 0)
                logits = root.output.logits.save()
            return RunResult(logits, None, None, prompt_length)
        collect = _Collect()
        with warnings.catch_warnings():
            # the open step loop ends when generation stops, which nnsight reports as a warning
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with root.trace(**batch.inputs, fn=adapter.model.generate, streamer=collect, **gen_kwargs) as tracer:
                step = 0
                for _ in tracer.all():
                    _apply_all(adapter, batch, interventions, step)
                    step += 1
        seq, new = adapter.generated(torch.cat(collect.chunks, dim=1), batch, streamed=True)
        return RunResult(None, seq, new, prompt_length, decoding)

