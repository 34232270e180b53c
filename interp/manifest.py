"""The manifest: JSON Lines, one utterance per line, the one data format every command reads.

Required fields: `id` (unique string) and `audio` (a path, absolute or relative to the
manifest's folder). Optional: `transcript`, `task`, `label`, `choices`, `answers`,
`speaker`, `snr_db`; any other field is kept as it is.

`read_jsonl` / `parse_jsonl` are the one JSON Lines reader (manifests, predictions files, a
predictions file being resumed): one object per non-empty line, and one line naming
`file:line` for text that is not UTF-8, a line that is not JSON or not an object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from interp.atomic import write_jsonl
from interp.errors import InterpError

REQUIRED = ("id", "audio")
OPTIONAL = ("transcript", "task", "label", "choices", "answers", "speaker", "snr_db")


def parse_jsonl(text: str, where: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of `text`, read from `where`."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InterpError(f"{where}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise InterpError(f"{where}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        yield lineno, row


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of the JSON Lines file `path`."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark, as some editors write, is not part of the first line
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InterpError(f"{path} is not UTF-8 text; re-save it as UTF-8 JSON Lines") from None
    yield from parse_jsonl(text, path)


def read_manifest(path: str | os.PathLike, limit: int | None = None, require_audio: bool = True) -> list[dict]:
    """Read and validate a manifest; `audio` paths come back absolute."""
    from interp.errors import path_problem

    path = Path(path)
    if limit is not None and limit < 1:
        raise InterpError(f"--limit must be at least 1 (got {limit}); leave it out to use every item")
    problem = path_problem(path, "manifest")
    if problem:
        raise InterpError(f"{problem}; pass a JSON Lines file with one utterance per line")
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, row in read_jsonl(path):
        for key in REQUIRED if require_audio else ("id",):
            if key not in row or row[key] in (None, ""):
                raise InterpError(f"{path}:{lineno}: missing required field '{key}'; every line needs 'id' and 'audio'")
        row["id"] = str(row["id"])
        if row["id"] in seen:
            raise InterpError(f"{path}:{lineno}: duplicate id '{row['id']}' (first on line {seen[row['id']]}); ids must be unique")
        seen[row["id"]] = lineno
        if row.get("audio"):
            audio = Path(row["audio"])
            if not audio.is_absolute():
                try:
                    audio = (path.parent / audio).resolve()
                except (OSError, RuntimeError):  # a symlink loop: left for the audio check to name
                    audio = Path(os.path.abspath(path.parent / audio))
            row["audio"] = str(audio)
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise InterpError(f"manifest {path} has no items; add one JSON object per line")
    return rows


def write_manifest(path: str | os.PathLike, rows: list[dict], relative: bool = True,
                   staged: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> None:
    """Write rows atomically; audio paths are made relative to the manifest's folder when possible.

    `staged=(stage, final)`: the manifest is written inside a staging folder that will be
    moved to `final`, so relative paths are computed from where the manifest will end up
    (files inside the stage move with it; files outside it stay where they are).
    """
    path = Path(path)
    folder = path.parent.resolve()
    stage = None
    if staged is not None:
        stage, final = Path(staged[0]).resolve(), Path(staged[1]).resolve()
        folder = final / folder.relative_to(stage)
    out = []
    for row in rows:
        row = dict(row)
        if relative and row.get("audio"):
            audio = Path(row["audio"]).resolve()
            if stage is not None and audio.is_relative_to(stage):
                audio = final / audio.relative_to(stage)
            try:
                row["audio"] = os.path.relpath(audio, folder)
            except ValueError:
                pass
        out.append(row)
    write_jsonl(path, out)
