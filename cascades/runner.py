"""Behavioural runs: answer items with a speech LLM (audio + instruction) or with a text LLM
(transcript + the same instruction), parse and score each answer, and keep predictions.

Both sides use the task's prompt templates, parser and scorer from `tasks`, the same greedy
decoding (`interp.decoding.GREEDY`, overriding whatever a checkpoint's generation_config ships),
and write one JSON line per item:
`id, task, system, snr_db, output, prediction, label, correct, n_generated_tokens, seconds,
decoding` (cascades add `transcript`), where `decoding` is the decoding that actually ran,
model dtype included. Speech runs go through `interp.run`, so interventions (erasure, ablation,
steering) apply to a behavioural run with no second code path. A text LLM is always prompted in
its own chat format (its tokenizer's chat template, or mistral-common's instruct format for a
tekken tokenizer); a tokenizer with neither is an error unless a raw prompt is asked for.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch

from interp.audio import load_audio
from interp.errors import InterpError
from interp.models.base import SpeechLM


def _task(row: dict):
    from tasks import get_task

    name = row.get("task")
    if not name:
        raise InterpError(f"item '{row['id']}' has no 'task'; behavioural runs need the task of every item")
    return get_task(name)


def _prediction(row: dict, system: str, output: str, n_tokens: int, seconds: float, **extra) -> dict:
    task = _task(row)
    pred = task.parse(output, row)
    label = row.get("label")
    if task.kind == "open":
        label = label if label is not None else (row.get("answers") or [None])[0]
    return {"id": str(row["id"]), "task": task.name, "system": system, "snr_db": row.get("snr_db"),
            "output": output, "prediction": pred, "label": label, "correct": bool(task.is_correct(pred, row)),
            "n_generated_tokens": int(n_tokens), "seconds": round(seconds, 4), **extra}


def _count_new(ids: torch.Tensor, stop_ids: set[int]) -> list[int]:
    counts = []
    for row in ids.tolist():
        n = 0
        for t in row:
            n += 1
            if t in stop_ids:
                break
        counts.append(n)
    return counts


def _stop_ids(tokenizer, model) -> set[int]:
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    for e in (eos if isinstance(eos, (list, tuple)) else [eos]):
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def answer_speech(adapter: SpeechLM, rows: Sequence[dict], *, system: str, interventions=(), batch_size: int = 8,
                  max_new_tokens: int = 32, on_items_done: Callable[[int], None] | None = None,
                  on_batch: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Greedy answers of a speech LLM to each item's speech prompt, parsed and scored."""
    from interp.forward import run

    tok = adapter.tokenizer
    stop = _stop_ids(tok, adapter.model)
    batch_size = adapter.batch_size(batch_size)
    preds = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        t0 = time.perf_counter()
        batch = adapter.prepare([load_audio(r["audio"], adapter.sampling_rate) for r in chunk],
                                [_task(r).speech_prompt(r) for r in chunk], padding_side="left")
        result = run(adapter, batch, interventions, generate=True, max_new_tokens=max_new_tokens)
        seconds = (time.perf_counter() - t0) / len(chunk)
        texts = tok.batch_decode(result.new_tokens, skip_special_tokens=True)
        out = [_prediction(r, system, t.strip(), n, seconds, decoding=result.decoding)
               for r, t, n in zip(chunk, texts, _count_new(result.new_tokens, stop))]
        preds.extend(out)
        if on_batch:
            on_batch(out)
        if on_items_done:
            on_items_done(len(chunk))
    return preds


def check_text_llm(path: str | Path) -> None:
    """Refuse an LLM path that is not a causal text LM checkpoint, before anything loads."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InterpError(f"LLM path {path} is not a checkpoint folder (no config.json); give a local causal-LM checkpoint or self:SPEECH_MODEL")
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8-sig")).get("model_type", "")
    except (ValueError, AttributeError):
        raise InterpError(f"{path / 'config.json'} is not valid JSON; the checkpoint is damaged") from None
    from interp.models import families

    for cls in families().values():
        if model_type in cls.model_types:
            if cls.family == "whisper":
                raise InterpError(f"--llm {path} is a Whisper (speech recognition) checkpoint, not a text LLM; give it "
                                  "as --asr, and a causal-LM checkpoint or self:SPEECH_MODEL as --llm")
            raise InterpError(f"--llm {path} is a {cls.family} speech LLM; to run its own language model on text, "
                              f"pass --llm self:{path}")


@dataclass
class TextLLM:
    """A text LLM answering prompts: a causal LM checkpoint, or a speech LLM's own backbone."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    raw_prompt: bool = False  #: send the bare text when the tokenizer has no chat format
    #: context the model runs in (a speech LLM's `text_only`: e.g. Phi-4-MM's speech LoRA off)
    context: Callable[[], ContextManager] = field(default=contextlib.nullcontext)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", dtype="auto", raw_prompt: bool = False) -> "TextLLM":
        """Load a causal-LM folder in `dtype` (`interp.models.base.resolve_dtype`'s rule for "auto")."""
        from interp.models.base import resolve_dtype

        path = Path(path)
        check_text_llm(path)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # transformers will build an empty tokenizer for a folder without tokenizer files
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                           "tekken.json")
        if not any((path / f).is_file() for f in tokenizer_files):
            raise InterpError(f"LLM checkpoint {path} has no tokenizer files; save its tokenizer into the folder")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, TypeError):
            raise InterpError(f"LLM checkpoint {path} has no tokenizer files; save its tokenizer into the folder") from None
        except ImportError as e:
            raise InterpError(f"LLM checkpoint {path} needs {str(e).splitlines()[0]}; "
                              "for a tekken.json tokenizer: pip install 'interp[voxtral]'") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype, device)).eval().to(device)
        except (OSError, ValueError) as e:
            raise InterpError(f"cannot load {path} as a causal LM: {str(e).splitlines()[0]}") from None
        return cls(model, tokenizer, path.name, raw_prompt=raw_prompt)

    @classmethod
    def from_speech_model(cls, adapter: SpeechLM, raw_prompt: bool = False) -> "TextLLM":
        """The speech LLM run on text only: its language model is the exactly matched backbone."""
        return cls(adapter.model, adapter.tokenizer, f"self:{Path(adapter.path).name}", raw_prompt=raw_prompt,
                   context=adapter.text_only)

    @property
    def chat_format(self) -> str | None:
        """"chat_template", "mistral-common", or None when the tokenizer knows no chat format."""
        if type(self.tokenizer).__name__ == "MistralCommonBackend":
            return "mistral-common"  # builds Mistral's instruct format itself, from tekken.json
        if getattr(self.tokenizer, "chat_template", None):
            return "chat_template"
        return None

    def prompt(self, text: str) -> str:
        """The prompt string sent for `text` (for display; `encode` builds the ids)."""
        if self.chat_format is None:
            self.check_chat_format()
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=False)

    def check_chat_format(self) -> None:
        """Stop unless the prompt will be in the model's chat format or a raw prompt was asked for."""
        if self.chat_format is None and not self.raw_prompt:
            raise InterpError(f"the tokenizer of {self.name} has no chat format (no chat_template, not mistral-common); "
                              "an instruct model prompted with a raw string answers differently. Add its chat template "
                              "to the checkpoint (or install mistral-common for tekken.json), or pass --raw-prompt "
                              "for a base model")

    def encode(self, texts: Sequence[str]) -> dict:
        """Left-padded input ids of the prompts, built in the model's own chat format."""
        tok = self.tokenizer
        tok.padding_side = "left"
        if self.chat_format is None:
            self.check_chat_format()
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            return dict(tok(list(texts), return_tensors="pt", padding=True))
        if self.chat_format == "chat_template" and tok.pad_token is None:
            tok.pad_token = tok.eos_token
        conversations = [[{"role": "user", "content": t}] for t in texts]
        return dict(tok.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            padding=True, return_tensors="pt"))

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> tuple[list[tuple[str, int]], dict]:
        """Greedy answers (text, generated token count) and the decoding settings that ran."""
        from interp.decoding import decoding_settings, greedy_kwargs

        tok = self.tokenizer
        enc = self.encode(prompts)
        enc = {k: v.to(next(self.model.parameters()).device) for k, v in enc.items()}
        kwargs = greedy_kwargs(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        with torch.no_grad(), self.context():
            seq = self.model.generate(**enc, **kwargs)
        new = seq[:, enc["input_ids"].shape[1]:].cpu()
        texts = tok.batch_decode(new, skip_special_tokens=True)
        answers = [(t.strip(), n) for t, n in zip(texts, _count_new(new, _stop_ids(tok, self.model)))]
        return answers, decoding_settings(self.model, kwargs)


def answer_text(llm: TextLLM, rows: Sequence[dict], transcripts: dict[str, str], *, system: str, batch_size: int = 8,
                max_new_tokens: int = 32, on_items_done: Callable[[int], None] | None = None,
                on_batch: Callable[[list[dict]], None] | None = None, extra: dict | None = None) -> list[dict]:
    """Greedy answers of a text LLM to each item's text prompt built on its transcript
    (`extra`: fields added to every prediction, e.g. what the cascade is matched to)."""
    preds = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        t0 = time.perf_counter()
        answers, decoding = llm.generate([_task(r).text_prompt(r, transcripts[str(r["id"])]) for r in chunk],
                                         max_new_tokens)
        seconds = (time.perf_counter() - t0) / len(chunk)
        out = [_prediction(r, system, text, n, seconds, transcript=transcripts[str(r["id"])], decoding=decoding,
                           **(extra or {}))
               for r, (text, n) in zip(chunk, answers)]
        preds.extend(out)
        if on_batch:
            on_batch(out)
        if on_items_done:
            on_items_done(len(chunk))
    return preds


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
                 command: str | None = None):
        import os

        from interp.errors import path_problem
        from interp.locks import OutputLock

        self.path = Path(path)
        self.rows: list[dict] = []
        self.fd: int | None = None
        self.open = False
        self.model_fingerprint = model_fingerprint
        self.input_fingerprints = input_fingerprints or {}
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

        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        try:
            text = data[:end].decode("utf-8")
        except UnicodeDecodeError:
            text = None
        rows = []
        for lineno, line in enumerate((text or "\0").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "id" not in row:
                what = "a JSON object with 'id'" if text is not None else "UTF-8 JSON Lines"
                raise InterpError(f"{self.path} is not a predictions file (line {lineno} is not {what}); choose "
                                  "another --out or pass --overwrite")
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


def accuracy_table(preds: Sequence[dict]) -> list[dict]:
    """Per system, task and SNR: n, accuracy with a Wilson 95% interval, unparsed count."""
    from cascades.agreement import wilson_interval

    groups: dict[tuple, list[dict]] = {}
    for p in preds:
        groups.setdefault((p["system"], p["task"], p.get("snr_db")), []).append(p)
    table = []
    for (system, task, snr), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] is not None, kv[0][2] or 0)):
        k = sum(bool(p["correct"]) for p in ps)
        lo, hi = wilson_interval(k, len(ps))
        table.append({"system": system, "task": task, "snr_db": snr, "n": len(ps), "correct": k,
                      "accuracy": k / len(ps), "ci_low": lo, "ci_high": hi,
                      "unparsed": sum(p["prediction"] == "unparsed" for p in ps)})
    return table


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (jiwer) after lower-casing and stripping punctuation on both sides."""
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])
    refs = [norm(r) or "<empty>" for r in references]
    hyps = [norm(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))
