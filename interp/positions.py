"""The one vocabulary of positions: which positions of an item a tool reads or touches.

- `all`: every real (non-padding) position of the prompt; during generation, also each new token
- `audio`: the positions holding audio (the adapter's `AudioSpan`), never a window's padding
- `text`: real positions that are neither audio nor audio padding (the chat template, the instruction)
- `last`: the last real position of the prompt
- `audio-mean`: one vector per item, the mean over its audio positions (stores and probes)
- `generated`: the positions of generated tokens (interventions during generation)

Each tool accepts the subset that means something for it (`TRACE`, `PROBE`, `LENS`,
`INTERVENTION`, `FIT`) and checks a request with `check_positions`. `select_positions` picks
one item's positions of a prompt; stores select rows the same way (`ActivationStore.rows`);
`position_masks` gives an intervention the (batch, seq) masks of a padded batch at a
generation step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.errors import InterpError
from interp.models.base import AudioSpan

POSITIONS = ("all", "audio", "text", "last", "audio-mean", "generated")
TRACE = ("all", "audio", "text", "last", "audio-mean")  #: what a store can hold
PROBE = ("audio", "all", "last", "audio-mean")  #: what a probe can read from a store
LENS = ("audio", "all", "text", "last")  #: what the logit lens reads
INTERVENTION = ("audio", "text", "generated", "all")  #: what an intervention can touch (or explicit indices)
FIT = ("audio", "all")  #: store rows an eraser can be fitted on


def check_positions(positions: str, allowed: tuple[str, ...], what: str) -> str:
    """`positions` if `allowed` has it; else one line naming the choices."""
    if positions not in allowed:
        raise InterpError(f"unknown positions '{positions}' for {what}; use one of {', '.join(allowed)}")
    return positions


@dataclass
class ItemPositions:
    """Which sequence positions of one item are stored, and what they are."""

    positions: np.ndarray
    is_audio: np.ndarray
    time_start: np.ndarray
    time_end: np.ndarray
    pooled: bool = False


def select_positions(mode: str, span: AudioSpan, attention_mask: np.ndarray | None, n_positions: int) -> ItemPositions:
    """Positions of one item for a positions mode, given its audio span and padding mask."""
    real = np.flatnonzero(attention_mask) if attention_mask is not None else np.arange(n_positions)
    audio_time = {int(p): (s, e) for p, s, e in zip(span.positions, span.time_start, span.time_end)}

    def make(pos):
        pos = np.asarray(pos, dtype=np.int64)
        is_audio = np.array([int(p) in audio_time for p in pos], dtype=bool)
        ts = np.array([audio_time.get(int(p), (np.nan, np.nan))[0] for p in pos], dtype=np.float64)
        te = np.array([audio_time.get(int(p), (np.nan, np.nan))[1] for p in pos], dtype=np.float64)
        return ItemPositions(pos, is_audio, ts, te)

    if mode == "all":
        return make(real)
    if mode == "audio":
        return make(span.positions)
    if mode == "text":
        return make(np.setdiff1d(real, np.concatenate([span.positions, span.padding])))
    if mode == "last":
        return make(real[-1:])
    if mode == "audio-mean":
        if len(span.positions) == 0:
            raise InterpError("positions 'audio-mean' needs audio positions, and an item has none")
        return ItemPositions(span.positions, np.ones(1, bool), np.array([span.time_start.min()]),
                             np.array([span.time_end.max()]), pooled=True)
    raise InterpError(f"unknown positions mode '{mode}'; use one of {', '.join(TRACE)}")


@dataclass
class StepContext:
    """What an intervention needs to know about the current forward pass."""

    step: int  #: 0 for the prompt (or a plain forward), k for the k-th generated token
    masks: dict[str, torch.Tensor]  #: position kind -> (batch, seq) bool mask for this step


def position_masks(batch, step: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Boolean (batch, seq) masks of audio, text, generated and all (non-padding) positions."""
    n = len(batch)
    device = batch.attention_mask.device
    if step == 0:
        real = batch.attention_mask.bool()[:, :seq_len]
        audio = torch.zeros_like(real)
        padding = torch.zeros_like(real)  # placeholders past the audio's end: neither audio nor text
        for i, span in enumerate(batch.audio):
            audio[i, torch.as_tensor(span.positions, device=device)] = True
            padding[i, torch.as_tensor(span.padding, device=device, dtype=torch.long)] = True
        return {"audio": audio, "text": real & ~audio & ~padding, "generated": torch.zeros_like(real), "all": real}
    ones = torch.ones(n, seq_len, dtype=torch.bool, device=device)
    zeros = torch.zeros_like(ones)
    return {"audio": zeros, "text": zeros, "generated": ones, "all": ones}
