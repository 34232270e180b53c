"""Reading released dataset files: text, JSON, CSV/TSV and parquet, with errors that name the
file and the line (the line of the offending entry, for JSON, where it can be found)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from interp.errors import InterpError


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InterpError(f"{path}:{line}: not UTF-8 text; re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def parse_json(text: str, path: Path, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InterpError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected the {what} release format") from None


def line_of(text: str, needle: object) -> int | None:
    if needle is None:
        return None
    i = text.find(str(needle))
    return text.count("\n", 0, i) + 1 if i >= 0 else None


def csv_rows(path: Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL):
    """(line, fields) per record; the line is where the record ends, as csv counts it."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                yield reader.line_num, fields
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            limit = csv.field_size_limit()
            fix = ("shorten or remove that item" if quoting == csv.QUOTE_NONE else
                   "an unclosed quote may run on into later lines: check the quoting, or shorten that item")
            raise InterpError(f"{path}:{reader.line_num}: a field is longer than {limit:,} characters, the limit of "
                              f"Python's csv reader (no task item is that long); {fix}") from None
        raise InterpError(f"{path}:{reader.line_num}: malformed CSV ({e}); check the quoting on that line") from None


def csv_records(path: Path, required: tuple[str, ...], delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL):
    rows = csv_rows(path, delimiter, quoting)
    header = next(rows, None)
    if header is None:
        raise InterpError(f"{path} is empty; expected a header with {', '.join(required)}")
    names = [h.strip() for h in header[1]]
    missing = [c for c in required if c not in names]
    if missing:
        raise InterpError(f"{path}:1: header lacks {', '.join(missing)}; expected columns {', '.join(required)}")
    for line, fields in rows:
        if len(fields) != len(names):
            raise InterpError(f"{path}:{line}: {len(fields)} columns where the header has {len(names)}")
        yield line, dict(zip(names, fields))


def tsv_records(path: Path, required: tuple[str, ...]):
    # GLUE TSVs are unquoted: a sentence may contain '"' characters.
    return csv_records(path, required, delimiter="\t", quoting=csv.QUOTE_NONE)


def read_parquet(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InterpError(f"reading {path} needs pyarrow (pip install pyarrow); or convert it to the GLUE TSV format") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise InterpError(f"cannot read parquet {path}: {str(e).splitlines()[0]}") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InterpError(f"{path}: parquet lacks columns {', '.join(missing)}; expected {', '.join(required)}")
    return table.select(list(required)).to_pylist()
