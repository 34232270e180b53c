"""Predictions files: one JSON line per answered item, appended as each batch finishes.

A line holds `id, task, system, snr_db, output, prediction, label, correct,
n_generated_tokens, seconds, decoding` (cascades add `transcript`), stamped with the system's
`model_fingerprint` and the item's `input_fingerprint`; a shard's lines (`interp run --shard
K/N`) also carry `shard` (`interp.shard.ShardInfo`), which `cascades.merge` checks and drops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from interp.errors import InterpError
from interp.shard import ShardInfo

class PredictionsFile:
    """Predictions JSON Lines, one line appended per item as each batch finishes.

    Appending keeps the I/O linear in the number of items. A kill can cut only the line being
    written: a resume drops that cut-off last line and continues. Each line is stamped with
    the system's `model_fingerprint` and the item's `input_fingerprint` (when given), and a
    resume refuses a file written by another model or for other inputs, naming the first
    line that differs. With `overwrite`, an existing file stays as it was until `finish()`:
    the new lines go to a hidden file beside it that then replaces it. The file is locked
    while open. Use it as a context manager, or call `finish()` (success) or `close()`.
    """

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool | None = None,
                 model_fingerprint: str | None = None, input_fingerprints: dict | None = None,
                 command: str | None = None, shard: "ShardInfo | None" = None):
        import os

        from interp.errors import path_problem
        from interp.locks import OutputLock

        self.path = Path(path)
        self.rows: list[dict] = []
        self.fd: int | None = None
        self.open = False
        self.model_fingerprint = model_fingerprint
        self.input_fingerprints = input_fingerprints or {}
        self.shard = shard
        if resume and overwrite:
            raise InterpError("--resume and --overwrite exclude each other; pick one")
        overwrite = not resume if overwrite is None else overwrite
        if self.path.is_dir():
            raise InterpError(f"--out {self.path} is a folder; give the predictions file to write, e.g. "
                              f"{self.path / 'predictions.jsonl'}")
        self.lock = OutputLock(self.path, command).acquire()
        try:
            self.target = self.path
            if self.path.exists() or self.path.is_symlink():
                problem = path_problem(self.path, "predictions file")
                if problem:
                    raise InterpError(f"{problem}; choose another --out")
                if resume:
                    self.rows = self._read_existing()
                elif not overwrite:
                    raise InterpError(f"{self.path} exists; pass --resume to complete it or --overwrite to replace it")
                else:
                    self.target = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
            if self.path.parent.is_dir():
                for stale in self.path.parent.glob(f".{self.path.name}.new-*"):
                    if stale != self.target:
                        stale.unlink(missing_ok=True)  # an --overwrite run that never finished
        except BaseException:
            self.lock.release()
            raise
        self.open = True

    def _open(self) -> int:
        """The file, opened for appending on the first batch (so a run that fails early writes nothing)."""
        import os

        from interp.errors import io_error

        if self.fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if self.target != self.path else 0)
                self.fd = os.open(self.target, flags, 0o666)
            except OSError as e:
                err = io_error(e, self.path, resumable=True)
                raise (err if isinstance(err, InterpError) else InterpError(
                    f"cannot write {self.path}: {e.strerror}; choose another --out")) from None
        return self.fd

    def _read_existing(self) -> list[dict]:
        import os

        from interp.errors import warn
        from interp.manifest import parse_jsonl

        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        fix = "choose another --out or pass --overwrite"
        try:
            parsed = list(parse_jsonl(data[:end].decode("utf-8"), self.path))
        except UnicodeDecodeError:
            raise InterpError(f"{self.path} is not a predictions file (not UTF-8 JSON Lines); {fix}") from None
        except InterpError as e:
            raise InterpError(f"{self.path} is not a predictions file ({e}); {fix}") from None
        rows = []
        for lineno, row in parsed:
            if "id" not in row:
                raise InterpError(f"{self.path} is not a predictions file (line {lineno} has no 'id'); {fix}")
            self._check(row, f"{self.path}:{lineno}")
            rows.append(row)
        if end < len(data):
            # the line a killed run was writing: drop it, so its item is answered again
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
            warn(f"dropped a cut-off last line of {self.path} (an interrupted write); its item is answered again")
        return rows

    def _check(self, row: dict, where: str) -> None:
        have = row.get("model_fingerprint")
        if self.model_fingerprint and not have:
            raise InterpError(f"cannot resume {self.path}: {where} (item '{row['id']}') records no model fingerprint "
                              "(written by an older interp or another tool), so its model cannot be checked; choose "
                              "another --out or pass --overwrite")
        if self.model_fingerprint and have != self.model_fingerprint:
            raise InterpError(f"cannot resume {self.path}: {where} (item '{row['id']}') was answered by another model "
                              f"(fingerprint {have or 'missing'}, this one is {self.model_fingerprint}); choose another "
                              "--out or pass --overwrite")
        mine = self.shard
        theirs = ShardInfo.from_dict(row["shard"]) if isinstance(row.get("shard"), dict) else None
        if mine is not None or theirs is not None:
            why = mine.differs(theirs) if mine is not None else f"it is shard {theirs.label}, not the whole manifest"
            if why:
                raise InterpError(f"cannot resume {self.path}: {why} ({where}); give the same manifest, --shard and "
                                  "--batch-size, or --overwrite")
        want = self.input_fingerprints.get((str(row["id"]), row.get("snr_db")))
        if want is not None and row.get("input_fingerprint") != want:
            raise InterpError(f"cannot resume {self.path}: item '{row['id']}' ({where}) was answered for another input "
                              "(its audio or prompt differs from the manifest's); give the manifest it was run on, "
                              "or pass --overwrite")

    def done_keys(self) -> set[tuple[str, object]]:
        return {(r["id"], r.get("snr_db")) for r in self.rows}

    def add(self, rows: list[dict]) -> None:
        import os

        from interp.atomic import json_line, write_all
        from interp.errors import io_error

        stamped = []
        for r in rows:
            r = dict(r)
            if self.model_fingerprint:
                r["model_fingerprint"] = self.model_fingerprint
            fp = self.input_fingerprints.get((str(r["id"]), r.get("snr_db")))
            if fp:
                r["input_fingerprint"] = fp
            if self.shard is not None:
                r["shard"] = self.shard.to_dict()
            stamped.append(r)
        fd = self._open()
        try:
            write_all(fd, "".join(json_line(r) for r in stamped).encode("utf-8"))
            os.fsync(fd)
        except OSError as e:
            err = io_error(e, self.path, resumable=True)
            raise (err if isinstance(err, InterpError) else e) from None
        self.rows.extend(stamped)

    def finish(self) -> None:
        """The run completed: an --overwrite file now replaces the old one."""
        import os

        if not self.open:
            return
        self._open()  # a run with nothing to add still leaves its (empty) file
        os.close(self.fd)
        self.fd, self.open = None, False
        if self.target != self.path:
            os.replace(self.target, self.path)
        self.lock.release()

    def close(self) -> None:
        """Stop writing; an unfinished --overwrite file is dropped and the old one kept."""
        import os

        if not self.open:
            return
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.open = None, False
        if self.target != self.path:
            Path(self.target).unlink(missing_ok=True)
        self.lock.release()

    def __enter__(self) -> "PredictionsFile":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.finish() if exc_type is None else self.close()


def pending(rows: Sequence[dict], done: set) -> list[dict]:
    return [r for r in rows if (str(r["id"]), r.get("snr_db")) not in done]
