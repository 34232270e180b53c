"""Output folders that appear whole: files are written to a staging folder inside the
destination and moved into place only when every item has succeeded, manifests last, so a
failed run leaves no half-written manifest and no stray audio."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Iterator

from interp.errors import InterpError


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder that mirrors `out_dir`; on success its files move into `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InterpError(f"--out {out_dir} is a file; pass a folder")
    from interp.atomic import private_stage

    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    stage = private_stage(out_dir, ".staging-", out_dir, "choose a writable --out folder")
    ok = False
    try:
        yield stage
        files = sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: (p.suffix == ".jsonl", str(p)))
        for src in files:
            dst = out_dir / src.relative_to(stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        ok = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not ok:
            for folder in created:  # innermost first: only folders this run made, and only if empty
                with contextlib.suppress(OSError):
                    folder.rmdir()


def audio_names(ids: list[str], suffix: str = ".wav") -> dict[str, str]:
    """A file name per item id: the id made file-safe, with a checksum where two would collide."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for item_id in ids:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(item_id)).strip("._") or "item"
        name = base[:120] + suffix
        if name.lower() in taken:
            name = f"{base[:110]}-{zlib.crc32(str(item_id).encode()):08x}{suffix}"
        taken.add(name.lower())
        names[item_id] = name
    return names
