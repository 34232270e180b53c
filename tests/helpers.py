"""Helpers several test modules share: one-line CLI errors, and module outputs captured by hooks."""

from __future__ import annotations

import contextlib

import torch


def one_line_error(code, err, *needles):
    """The command failed with exactly one line, `error: ...`, holding every needle, no traceback."""
    assert code != 0, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


@contextlib.contextmanager
def captured(outputs: dict[str, torch.nn.Module] = {}, inputs: dict[str, torch.nn.Module] = {}):
    """While the block runs, the first output of each module in `outputs` (and the first input,
    positional or keyword, of each in `inputs`) as the module gives it, by name, the first call only."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name, value):
        seen.setdefault(name, _first(value).detach().clone())

    handles = [m.register_forward_hook(lambda _m, _a, o, n=n: keep(n, o)) for n, m in outputs.items()]
    handles += [m.register_forward_pre_hook(lambda _m, a, kw, n=n: keep(n, a[0] if a else next(iter(kw.values()))),
                                            with_kwargs=True) for n, m in inputs.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()
