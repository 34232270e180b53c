"""Reading predictions files for comparison: any JSON Lines with `id` and `prediction` per line.

Answers of systems this toolkit cannot run (an API model) take part the same way as those
written by `interp run` and `interp cascade`. Optional fields: `system` (default: the file's
stem), `task`, `snr_db` (null or missing = clean), `label`, `correct`, `decoding`,
`model_fingerprint`. Answers are normalised (stripped, case-folded; empty = "unparsed") so that
"World" and "world" are one answer; correctness is the file's `correct` when given, otherwise
answer == label, and "unparsed" is always wrong. Rows of one `system` from several files are
merged; a (system, id, snr_db) seen twice is an error, and so is a system name whose rows
record two different model fingerprints.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from cascades.agreement import UNPARSED
from interp.errors import InterpError
from interp.manifest import read_jsonl
from tasks.noise import format_snr

ItemKey = tuple  # (id: str, snr_db: float | None)


@dataclass(frozen=True)
class Prediction:
    """One system's answer to one item, normalised."""

    system: str
    """System name: the line's `system`, else the file's stem."""
    id: str
    """Item id, as a string."""
    snr_db: float | None
    """Noise condition in dB; None for clean audio."""
    task: str | None
    """Task name, if the file gives one."""
    prediction: str
    """Answer, stripped and case-folded; "unparsed" when the system gave no usable answer."""
    label: str | None
    """Gold answer, normalised like `prediction`, if given."""
    correct: bool | None
    """The file's `correct`, else prediction == label; None when neither is known."""
    source: str
    """Where it was read, as "file:line", for error messages."""
    decoding: str | None = None
    """The row's `decoding` settings as canonical JSON, if it records them."""
    model_fingerprint: str | None = None
    """The answering system's fingerprint, where the file records one (`interp run`, `interp cascade`)."""

    @property
    def key(self) -> ItemKey:
        return (self.id, self.snr_db)


@dataclass
class SystemPredictions:
    """All answers of one system, merged over the files that name it."""

    name: str
    files: list[str]
    items: dict[ItemKey, Prediction]


def read_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Read and validate one predictions file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"predictions file not found: {path}; pass JSON Lines with 'id' and 'prediction' per line")
    rows: list[Prediction] = []
    first_named: bool | None = None  # whether the file's first row names its system
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        named = row.get("system") not in (None, "")
        if first_named is not None and named != first_named:
            # A line without `system` in a file that names systems would silently become a
            # system called after the file; make the author say which it is.
            with_, without = (rows[0].source, where) if not named else (where, rows[0].source)
            raise InterpError(
                f"{without}: no 'system' field, but {with_} has one; give every line of a file a 'system' or none"
            )
        first_named = named if first_named is None else first_named
        rows.append(_parse_row(row, where, default_system=path.stem))
    if not rows:
        raise InterpError(f"{path} has no predictions; each line needs 'id' and 'prediction'")
    return rows


def _parse_row(row: dict, where: str, default_system: str) -> Prediction:
    for key in ("id", "prediction"):
        # An empty prediction is an answer (unparsed); an empty id names no item.
        if row.get(key) is None or (key == "id" and row[key] == ""):
            raise InterpError(f"{where}: missing required field '{key}'; every line needs 'id' and 'prediction'")
    item_id = row["id"]
    if isinstance(item_id, (dict, list, bool)):
        raise InterpError(f"{where}: 'id' must be a string or number, got {type(item_id).__name__}")
    prediction = _normalise_answer(row["prediction"], "prediction", where)
    label = None if row.get("label") is None else _normalise_answer(row["label"], "label", where)
    correct = row.get("correct")
    if correct is not None:
        if isinstance(correct, bool) or correct in (0, 1):
            correct = bool(correct)
        else:
            raise InterpError(f"{where}: 'correct' must be true or false, got {correct!r}")
    elif label is not None:
        correct = prediction == label
    if prediction == UNPARSED and correct is not None:
        correct = False  # an answer that could not be parsed is never right
    task = row.get("task")
    if task is not None and not isinstance(task, str):
        raise InterpError(f"{where}: 'task' must be a string, got {task!r}")
    system = row.get("system")
    if system is None or system == "":
        system = default_system
    decoding = row.get("decoding")
    if decoding is not None and not isinstance(decoding, dict):
        raise InterpError(f"{where}: 'decoding' must be a JSON object of decoding settings, got {decoding!r}")
    return Prediction(
        system=str(system),
        id=str(item_id),
        snr_db=_parse_snr(row.get("snr_db"), where),
        task=task or None,
        prediction=prediction,
        label=label,
        correct=correct,
        source=where,
        decoding=None if decoding is None else json.dumps(decoding, sort_keys=True),
        model_fingerprint=str(row["model_fingerprint"]) if row.get("model_fingerprint") else None,
    )


def _normalise_answer(value, name: str, where: str) -> str:
    if isinstance(value, (dict, list)):
        raise InterpError(f"{where}: '{name}' must be a string or number, got a JSON {type(value).__name__}")
    text = str(value).strip().casefold()
    return text or UNPARSED


def _parse_snr(value, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().casefold() in ("", "clean")):
        return None
    if isinstance(value, bool):
        raise InterpError(f"{where}: 'snr_db' must be a number in dB or null for clean, got {value!r}")
    try:
        snr = float(value)
    except (TypeError, ValueError):
        raise InterpError(f"{where}: 'snr_db' must be a number in dB or null for clean, got {value!r}") from None
    if not math.isfinite(snr):
        raise InterpError(f"{where}: 'snr_db' must be finite (use null for clean audio), got {value!r}")
    return snr + 0.0  # -0.0 and 0.0 are one condition


def group_systems(files: Sequence[tuple[str, list[Prediction]]]) -> list[SystemPredictions]:
    """Merge rows by system across files; reject duplicates and task conflicts.

    `files` is [(path, rows)] in the order given by the user; systems keep that order.
    """
    systems: dict[str, SystemPredictions] = {}
    task_of: dict[str, Prediction] = {}
    model_of: dict[str, Prediction] = {}
    for path, rows in files:
        for p in rows:
            if p.model_fingerprint:
                seen_model = model_of.setdefault(p.system, p)
                if seen_model.model_fingerprint != p.model_fingerprint:
                    # e.g. two checkpoint folders both named `model`: one name, two models
                    raise InterpError(
                        f"system '{p.system}' answered with two different models ({seen_model.source}: fingerprint "
                        f"{seen_model.model_fingerprint}; {p.source}: {p.model_fingerprint}); give each run its own "
                        "name (interp run --system NAME)"
                    )
            sys_ = systems.setdefault(p.system, SystemPredictions(p.system, [], {}))
            if str(path) not in sys_.files:
                sys_.files.append(str(path))
            first = sys_.items.get(p.key)
            if first is not None:
                raise InterpError(
                    f"{p.source}: duplicate id '{p.id}' at {format_snr(p.snr_db)} for system '{p.system}' "
                    f"(first at {first.source}); each (id, snr_db) may appear once per system"
                )
            sys_.items[p.key] = p
            if p.task is not None:
                seen = task_of.setdefault(p.id, p)
                if seen.task != p.task:
                    raise InterpError(
                        f"{p.source}: id '{p.id}' has task '{p.task}' but task '{seen.task}' at {seen.source}; "
                        "the same id must be the same item in every file"
                    )
    # Rows that leave `task` out take the task another file gives for the same id.
    for sys_ in systems.values():
        for key, p in sys_.items.items():
            if p.task is None and p.id in task_of:
                sys_.items[key] = _replace_task(p, task_of[p.id].task)
    return list(systems.values())


def _replace_task(p: Prediction, task: str) -> Prediction:
    d = asdict(p)
    d["task"] = task
    return Prediction(**d)
