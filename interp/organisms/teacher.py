"""Prompts and targets: what the organism sees, and what the frozen LLM answers from text.

The organism's prompt is the Ultravox adapter's: the LLM's chat template around
"{instruction}\\n\\n<|audio|>", split at the placeholder by the Ultravox processor. The
teacher's prompt is the same with the transcript in place of the audio, which is also the
prompt the matched cascade sends for the simple tasks (their text template is
"{instruction}\\n\\n{transcript}"). So distillation asks for exactly the cascade's behaviour.

Targets per (sentence, instruction):
- `repeat`: the response is the sentence itself; the teacher's next-token distributions along it
  (teacher-forced) are the target.
- `sentiment`, `pitch` (teacher): the response is the teacher's own greedy answer, and the
  target is its distributions along that answer.
- `pitch` (label): the response is the recipe's `label_response` ("low" or "high") and the
  target is that text (cross-entropy); the teacher plays no part.

Teacher distributions are stored as the top-k token ids and log-probabilities per response
position; the rest of the vocabulary is one bucket holding the remaining mass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from interp.models.ultravox_modeling import AUDIO_PLACEHOLDER



def chat(tokenizer, content: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


@dataclass(frozen=True)
class PromptParts:
    """Token ids around the audio in the organism's prompt for one instruction."""

    prefix: list[int]  #: before the audio (chat template, instruction, blank line)
    suffix: list[int]  #: after the audio (end of turn, assistant header)


def prompt_parts(tokenizer, instruction: str) -> PromptParts:
    """As `UltravoxProcessor` splits the Ultravox adapter's prompt at the audio placeholder."""
    text = chat(tokenizer, f"{instruction}\n\n{AUDIO_PLACEHOLDER}")
    before, after = text.split(AUDIO_PLACEHOLDER)
    ids = tokenizer([before, after], add_special_tokens=False)["input_ids"]
    return PromptParts(list(ids[0]), list(ids[1]))


def teacher_prompt(tokenizer, instruction: str, transcript: str) -> list[int]:
    """The matched cascade's prompt ids: the transcript where the organism hears the audio."""
    return list(tokenizer(chat(tokenizer, f"{instruction}\n\n{transcript}"), add_special_tokens=False)["input_ids"])


def response_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    """`text` as an assistant response ending its turn, cut to `max_tokens`."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return ids[:max_tokens]


def _left_padded(prompts: Sequence[list[int]], pad: int):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def greedy_answers(llm, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, top_k: int,
                   batch_size: int = 32, on_batch: Callable[[int], None] | None = None):
    """Per prompt, the LLM's greedy response ids (ending with EOS where it stopped) and, at each
    response position, its top-k next-token ids and log-probabilities (from the same steps)."""
    from interp.decoding import greedy_kwargs

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        ids, mask = _left_padded(chunk, pad)
        gen = llm.generate(input_ids=ids, attention_mask=mask, output_logits=True, return_dict_in_generate=True,
                           **greedy_kwargs(max_new_tokens=max_new_tokens, pad_token_id=pad))
        logp = torch.log_softmax(torch.stack(gen.logits, 1).float(), dim=-1)  # (batch, steps, vocab)
        top = logp.topk(top_k, dim=-1)
        for i, row in enumerate(gen.sequences[:, ids.shape[1]:].tolist()):
            n = row.index(eos) + 1 if eos in row else len(row)
            out.append((row[:n], top.indices[i, :n].to(torch.int32), top.values[i, :n].clone()))
        if on_batch:
            on_batch(len(chunk))
    return out


@torch.no_grad()
def teacher_topk(llm, prompts: Sequence[list[int]], responses: Sequence[list[int]], top_k: int, pad_id: int,
                 batch_size: int = 32, on_batch: Callable[[int], None] | None = None):
    """Per item, (ids, logp): the teacher's top-k next-token ids and log-probabilities at each
    response position (the position predicting response token j), teacher-forced."""
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[s:s + batch_size], responses[s:s + batch_size]))
        seqs = [p + r[:-1] for p, r in chunk]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, q in enumerate(seqs):  # right padding: positions stay 0..n-1
            ids[i, :len(q)] = torch.tensor(q)
            mask[i, :len(q)] = 1
        hidden = llm.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for i, (p, r) in enumerate(chunk):
            h = hidden[i, len(p) - 1:len(p) - 1 + len(r)]
            logp = torch.log_softmax(llm.lm_head(h).float(), dim=-1)
            top = logp.topk(top_k, dim=-1)
            out.append((top.indices.to(torch.int32), top.values.to(torch.float32)))
        if on_batch:
            on_batch(len(chunk))
    return out


def topk_kl(student_logits: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per position over the teacher's top-k tokens plus one bucket for
    the rest of the vocabulary. student_logits (n, vocab); ids, logp (n, k)."""
    s_all = torch.log_softmax(student_logits.float(), dim=-1)
    s_top = s_all.gather(-1, ids.long())
    t_rest = (-torch.logsumexp(logp, -1).exp()).log1p().clamp_min(-30)  # log(1 - sum p_top)
    kl_top = (logp.exp() * (logp - s_top)).sum(-1)
    if ids.shape[-1] >= student_logits.shape[-1]:  # the top k are the whole vocabulary: no rest
        return kl_top
    s_rest = s_all.scatter(-1, ids.long(), float("-inf")).logsumexp(-1)  # exact and stable, unlike 1 - sum
    return kl_top + t_rest.exp() * (t_rest - s_rest)
