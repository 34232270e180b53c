"""One protocol for long work to report how far it has got, and for what it wants said.

Progress: a library function that takes a while accepts `progress`, a callable
`progress(stage, total, unit) -> advance`: it is called once when a stage starts (its name,
how many units it has, or None when that is not known, and what a unit is: "items",
"layers", "steps") and returns `advance(n)`, called as units finish. Stages follow one
another; a new stage ends the previous one. `None` (the default everywhere) reports nothing.
The command line passes rich progress bars (`interp.cli.display`); a notebook can pass any
callable of that shape, e.g. one that wraps tqdm.

Warnings: things the user should know that do not stop the work go through Python's
`warnings` as `InterpWarning` (`warn`), which the command line prints as one line each and a
notebook shows as usual. Notes about a result (what was left out and why) are part of the
result (`notes` fields), not printed. The library never prints.
"""

from __future__ import annotations

from typing import Callable, Optional

from interp.errors import InterpWarning, warn

Advance = Callable[[int], None]
#: progress(stage, total, unit) -> advance(n)
Progress = Callable[[str, Optional[int], str], Advance]

__all__ = ["Advance", "InterpWarning", "Progress", "silent", "stage", "warn"]


def _nothing(n: int = 1) -> None:
    return None


def silent(stage: str, total: int | None = None, unit: str = "items") -> Advance:
    """The progress that reports nothing."""
    return _nothing


def stage(progress: Progress | None, name: str, total: int | None, unit: str = "items") -> Advance:
    """Start stage `name` of `progress` (nothing when None) and return its `advance`."""
    return (progress or silent)(name, total, unit)
