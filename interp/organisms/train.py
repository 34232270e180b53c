"""Training an organism's projector: a CTC warm start, then distillation through the frozen LLM.

Only `multi_modal_projector` is trained; the Whisper encoder and the LLM stay frozen (the
encoder's outputs are precomputed per clip). Two stages:

1. Warm start (`ctc_steps`): the projector's output at each audio position is scored against
   the LLM's own token embeddings (its tied unembedding) of the transcript's tokens, plus a
   blank, and trained with CTC. No LLM pass is needed, so thousands of clips cost minutes.
   It puts audio positions near the embeddings of the words spoken, a start from which the
   frozen LLM can read them; the blank vector and the vocabulary subset are thrown away.
2. Distillation (`kd_steps`): the organism's prompt (chat template, instruction, audio) runs
   through the frozen LLM and its next-token distributions along each response are pulled to
   the targets (`interp.organisms.teacher`): KL to the teacher's top-k distributions, or
   cross-entropy to a label response. The text before the audio is the same for every item of
   an instruction and does not depend on the projector, so its key/value cache is computed once
   and shared: each step only runs the audio, the end of the prompt and the response.

Steps draw an instruction by the recipe's weights and a batch of its examples from seeded
generators; with the same data, seed and thread count the weights are the same.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interp.organisms.teacher import PromptParts, topk_kl


@dataclass
class Example:
    """One training item of the distillation stage."""

    clip: int  #: index of the clip (its encoder frames)
    instruction: str
    response: list[int]  #: response token ids (the last is predicted, never fed)
    teacher_ids: torch.Tensor | None = None  #: (len(response), k) or None for a label target
    teacher_logp: torch.Tensor | None = None


@dataclass
class Curve:
    """The loss curve: one row per optimiser step."""

    rows: list[dict] = field(default_factory=list)

    def add(self, **row) -> None:
        self.rows.append(row)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def ctc_warm_start(projector, frames: Sequence[torch.Tensor], targets: Sequence[list[int]], embeddings: torch.Tensor,
                   *, steps: int, batch: int, lr: float, seed: int, curve: Curve, norm_penalty: float = 0.1,
                   on_step: Callable[[int], None] | None = None) -> None:
    """CTC of the projector's outputs, read through `embeddings` (vocab, d) restricted to the
    tokens of `targets`, against each clip's transcript tokens."""
    vocab = sorted({t for ts in targets for t in ts})
    index = {t: i + 1 for i, t in enumerate(vocab)}  # 0 is the blank
    table = embeddings[vocab].detach()
    d = table.shape[1]
    gen = torch.Generator().manual_seed(seed)
    norm = float(table.norm(dim=1).mean())
    blank = torch.nn.Parameter(torch.randn(d, generator=gen) * norm / math.sqrt(d))
    bias = torch.nn.Parameter(torch.zeros(1))
    # A free logit scale lets CTC grow confident without inflating the projector's outputs, and
    # a penalty keeps their norms at the token embeddings' (the scale the frozen LLM was trained on).
    log_scale = torch.nn.Parameter(torch.zeros(1))
    params = [p for p in projector.parameters() if p.requires_grad] + [blank, bias, log_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frames))
    cursor = 0
    for step in range(steps):
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(frames)), 0
        idx = order[cursor:cursor + batch]
        cursor += batch
        t0 = time.perf_counter()
        _set_lr(opt, lr_at(step, steps, lr, max(1, steps // 20)))
        outs = [projector(frames[i][None])[0] for i in idx]
        lengths = torch.tensor([len(o) for o in outs])
        h = torch.nn.utils.rnn.pad_sequence(outs, batch_first=True)  # (B, T, d)
        logits = torch.cat([h @ blank[:, None] + bias, h @ table.T], dim=-1) * log_scale.exp()
        logp = torch.log_softmax(logits, -1).transpose(0, 1)  # (T, B, V+1)
        tgt = [torch.tensor([index[t] for t in targets[i]]) for i in idx]
        ctc = F.ctc_loss(logp, torch.cat(tgt), lengths, torch.tensor([len(t) for t in tgt]), blank=0,
                         reduction="mean", zero_infinity=True)
        norms = torch.cat([o.norm(dim=-1) for o in outs])
        loss = ctc + norm_penalty * ((norms - norm) / norm).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.add(stage="ctc", step=step, loss=float(loss.detach()), ctc=float(ctc.detach()),
                  mean_norm=float(norms.detach().mean()), lr=opt.param_groups[0]["lr"],
                  seconds=round(time.perf_counter() - t0, 4))
        if on_step:
            on_step(1)


def _cache_kwarg(llm) -> str:
    """transformers renamed the decoder's `past_key_values` argument to `cache` (5.2x)."""
    import inspect

    return "cache" if "cache" in inspect.signature(llm.model.forward).parameters else "past_key_values"


@torch.no_grad()
def prefix_cache(llm, prefix: list[int]):
    """Keys and values of every layer for the prompt text before the audio."""
    out = llm.model(input_ids=torch.tensor([prefix]), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def _expanded_cache(kv, batch: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
    return cache


def distill_loss(llm, projector, frames: Sequence[torch.Tensor], examples: Sequence[Example], parts: PromptParts,
                 kv) -> torch.Tensor:
    """Mean loss of a batch of examples of one instruction (KL to the teacher, or cross-entropy)."""
    embed = llm.get_input_embeddings()
    suffix = embed(torch.tensor(parts.suffix))
    seqs, spans = [], []
    for ex in examples:
        audio = projector(frames[ex.clip][None])[0]
        fed = embed(torch.tensor(ex.response[:-1], dtype=torch.long)) if len(ex.response) > 1 else suffix[:0]
        seq = torch.cat([audio, suffix, fed])
        # logits at these positions predict the response tokens
        start = len(audio) + len(parts.suffix) - 1
        seqs.append(seq)
        spans.append((start, len(ex.response)))
    lengths = [len(s) for s in seqs]
    x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    n_prefix = kv[0][0].shape[2]
    mask = torch.zeros(len(seqs), n_prefix + x.shape[1], dtype=torch.long)
    mask[:, :n_prefix] = 1
    for i, n in enumerate(lengths):
        mask[i, n_prefix:n_prefix + n] = 1
    hidden = llm.model(inputs_embeds=x, attention_mask=mask, use_cache=True,
                       **{_cache_kwarg(llm): _expanded_cache(kv, len(seqs))}).last_hidden_state
    losses = []
    for i, (ex, (start, n)) in enumerate(zip(examples, spans)):
        logits = llm.lm_head(hidden[i, start:start + n])
        if ex.teacher_ids is None:
            losses.append(F.cross_entropy(logits.float(), torch.tensor(ex.response)))
        else:
            losses.append(topk_kl(logits, ex.teacher_ids, ex.teacher_logp).mean())
    return torch.stack(losses).mean()


def distill(llm, projector, frames: Sequence[torch.Tensor], examples: Sequence[Example],
            parts: dict[str, PromptParts], weights: Sequence[tuple[str, float]], *, steps: int, batch: int, lr: float,
            warmup: int, weight_decay: float, seed: int, curve: Curve,
            on_step: Callable[[int], None] | None = None) -> None:
    """The distillation stage: `steps` optimiser steps of `batch` examples of one instruction each."""
    by_instruction = {k: [e for e in examples if e.instruction == k] for k, _ in weights}
    names = [k for k, _ in weights if by_instruction[k]]
    probs = np.array([w for k, w in weights if by_instruction[k]], dtype=np.float64)
    probs /= probs.sum()
    caches = {k: prefix_cache(llm, parts[k].prefix) for k in names}
    rng = np.random.default_rng(seed + 1)
    orders = {k: list(rng.permutation(len(by_instruction[k]))) for k in names}
    params = [p for p in projector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for step in range(steps):
        k = names[int(rng.choice(len(names), p=probs))]
        if len(orders[k]) < batch:
            orders[k] = orders[k] + list(rng.permutation(len(by_instruction[k])))
        idx, orders[k] = orders[k][:batch], orders[k][batch:]
        t0 = time.perf_counter()
        _set_lr(opt, lr_at(step, steps, lr, warmup))
        loss = distill_loss(llm, projector, frames, [by_instruction[k][i] for i in idx], parts[k], caches[k])
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.add(stage="kd", step=step, instruction=k, loss=float(loss.detach()), grad_norm=float(norm),
                  lr=opt.param_groups[0]["lr"], seconds=round(time.perf_counter() - t0, 4))
        if on_step:
            on_step(1)
