"""Fingerprints: which model made a result, and from which input, so nothing is silently mixed.

A model fingerprint identifies a checkpoint, not how it was run. It hashes
(1) the checkpoint's `config.json` without runtime keys (dtype, attention implementation,
    transformers version, ...), so the same folder run in bfloat16 on a GPU and in float32 on
    a CPU has one fingerprint; and
(2) the weights as stored on disk: every tensor's name, dtype and shape, plus a strided
    sample of the bytes of the tensors that identify a model: all tensors outside the
    repeated blocks (embeddings, unembedding, final norms, the audio projector) and every
    tensor of the last block of each stack of blocks (the last decoder and encoder block).
Hashing a fixed sample instead of whole tensors keeps it fast for 8B checkpoints: 16
windows of 64 bytes per sampled tensor, read with `pread`, a few hundred reads in all, so
the cost does not grow with the model's size. Another checkpoint of the same architecture
(other training, another seed, a fine-tune) differs in those bytes. The dtype a model runs
in is recorded beside the fingerprint and only warned about when it differs.

An input fingerprint identifies what one item fed the model: a hash of its audio file's
content and of the instruction (or text prompt) sent with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from functools import lru_cache
from pathlib import Path

from interp.errors import InterpError, warn

RUNTIME_KEYS = frozenset({
    "torch_dtype", "dtype", "_attn_implementation", "attn_implementation", "_attn_implementation_autoset",
    "_attn_implementation_internal", "_experts_implementation", "_name_or_path", "name_or_path", "transformers_version",
    "_commit_hash", "use_cache", "output_hidden_states", "output_attentions", "return_dict", "torchscript",
    "use_return_dict", "device_map", "quantization_config_runtime",
})
WINDOWS, WINDOW_BYTES = 16, 64
_BLOCK = re.compile(r"^(.*?\b(?:layers|layer|blocks|h))\.(\d+)\.")


def canonical_config(config: dict) -> dict:
    """The config without keys that describe how a model is run rather than which model it is."""
    if isinstance(config, dict):
        return {k: canonical_config(v) for k, v in sorted(config.items()) if k not in RUNTIME_KEYS}
    if isinstance(config, list):
        return [canonical_config(v) for v in config]
    return config


def model_fingerprint(path: str | os.PathLike, model=None) -> str:
    """16 hex digits identifying the checkpoint in folder `path` (see the module docstring).

    Without a config.json or weight files in `path`, the loaded `model`'s config and
    parameters stand in (then the runtime dtype does enter the weights' hash).
    """
    path = Path(path)
    config_file = path / "config.json"
    h = hashlib.sha256(b"interp-model-fingerprint-1\0")
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            raise InterpError(f"{config_file} is not valid JSON; the checkpoint is damaged") from None
    elif model is not None:
        config = model.config.to_dict()
    else:
        raise InterpError(f"{path} is not a checkpoint folder (no config.json)")
    h.update(json.dumps(canonical_config(config), sort_keys=True, default=str).encode())
    h.update(_weights_digest(str(path.resolve()), _weights_stamp(path)) if _weight_files(path) else
             _loaded_weights_digest(model))
    return h.hexdigest()[:16]


def input_fingerprint(audio: str | os.PathLike | None, text: str) -> str:
    """16 hex digits identifying one item's input: its audio file's content and its text."""
    h = hashlib.sha256(b"interp-input-1\0")
    if audio:
        h.update(b"audio\0" + _file_digest(*_stamp(audio)).encode())
    h.update(b"\0text\0" + text.encode("utf-8"))
    return h.hexdigest()[:16]


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_model(attrs: dict, fingerprint: str, dtype: str, what: str, model_desc: str, fix: str) -> None:
    """Refuse `what` (a store, an eraser, ...) made by another model; warn when only the dtype differs.

    `attrs` holds `model_fingerprint` and `model_dtype` as recorded when `what` was made.
    """
    have = str(attrs.get("model_fingerprint") or "")
    if not have:
        raise InterpError(f"{what} has no model fingerprint (made by an older interp), so its model cannot be "
                          f"checked; {fix}")
    if have != fingerprint:
        source = attrs.get("model_path") or "unknown"
        raise InterpError(f"{what} was made by another model (fingerprint {have}, from {source}) than {model_desc} "
                          f"(fingerprint {fingerprint}); {fix}")
    made_in = str(attrs.get("model_dtype") or "")
    if made_in and dtype and made_in != dtype:
        warn(f"{what} was made with the model in {made_in}; it now runs in {dtype}, so values may differ slightly")


# ---- weights ----------------------------------------------------------------------------------


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.rglob("*.safetensors"))
    if not files:
        files = sorted(p for p in path.rglob("*.bin") if p.is_file()) + sorted(path.rglob("*.pt"))
    return [f for f in files if f.is_file()]


def _weights_stamp(path: Path) -> tuple:
    return tuple((str(f.relative_to(path)), *_stat(f)) for f in _weight_files(path))


def _stat(f: Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=32)
def _weights_digest(path: str, stamp: tuple) -> bytes:
    root = Path(path)
    tensors = []  # (name, dtype, shape, file, start, end)
    for rel, *_ in stamp:
        f = root / rel
        if f.suffix == ".safetensors":
            tensors += [(name, *info, f) for name, info in _safetensors_index(f).items()]
        else:
            tensors += _torch_index(f)
    tensors.sort(key=lambda t: t[0])
    sampled = _identifying([t[0] for t in tensors])
    h = hashlib.sha256()
    for name, dtype, shape, start, end, f in tensors:
        h.update(json.dumps([name, dtype, list(shape)]).encode())
        if name in sampled:
            h.update(_sample(f, start, end))
    return h.digest()


def _identifying(names: list[str]) -> set[str]:
    """Tensors outside repeated blocks, plus all of the last block of each stack of blocks."""
    last: dict[str, int] = {}
    for name in names:
        m = _BLOCK.match(name)
        if m:
            last[m.group(1)] = max(last.get(m.group(1), -1), int(m.group(2)))
    keep = set()
    for name in names:
        m = _BLOCK.match(name)
        if m is None or int(m.group(2)) == last[m.group(1)]:
            keep.add(name)
    return keep


def _safetensors_index(f: Path) -> dict[str, tuple]:
    """name -> (dtype, shape, start byte, end byte) from a safetensors header, without loading."""
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        raise InterpError(f"{f} is not a readable safetensors file; the checkpoint is damaged") from None
    base = 8 + n
    return {name: (info["dtype"], tuple(info["shape"]), base + info["data_offsets"][0], base + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


def _torch_index(f: Path) -> list[tuple]:
    import torch

    try:
        state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # torch raises several types for files that are not state dicts
        return [(f.name, "file", (f.stat().st_size,), 0, f.stat().st_size, f)]
    out = []
    for name, t in state.items() if isinstance(state, dict) else []:
        if hasattr(t, "untyped_storage"):
            out.append((name, str(t.dtype), tuple(t.shape), 0, 0, (f, name)))
    return out


def _sample(f, start: int, end: int) -> bytes:
    if isinstance(f, tuple):  # a tensor of a torch pickle: sample its bytes through the mmap
        import torch

        t = torch.load(f[0], map_location="cpu", mmap=True, weights_only=True)[f[1]]
        raw = t.contiguous().view(-1).view(torch.uint8) if t.numel() else torch.zeros(0, dtype=torch.uint8)
        start, end, read = 0, raw.numel(), lambda s, n: raw[s:s + n].numpy().tobytes()
    else:
        fd = os.open(f, os.O_RDONLY)
        read = lambda s, n: os.pread(fd, n, s)  # noqa: E731
    try:
        size = end - start
        if size <= WINDOWS * WINDOW_BYTES:
            return read(start, size)
        step = (size - WINDOW_BYTES) // (WINDOWS - 1)
        return b"".join(read(start + i * step, WINDOW_BYTES) for i in range(WINDOWS))
    finally:
        if not isinstance(f, tuple):
            os.close(fd)


def _loaded_weights_digest(model) -> bytes:
    h = hashlib.sha256(b"loaded\0")
    if model is None:
        return h.digest()
    state = model.state_dict()
    names = sorted(state)
    sampled = _identifying(names)
    for name in names:
        t = state[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if name in sampled and t.numel():
            flat = t.detach().reshape(-1)
            idx = [int(i * (flat.numel() - 1) / max(WINDOWS - 1, 1)) for i in range(min(WINDOWS, flat.numel()))]
            h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.digest()


# ---- inputs -----------------------------------------------------------------------------------


def _stamp(audio) -> tuple:
    p = Path(audio)
    try:
        return (str(p.resolve()), *_stat(p))
    except OSError:
        return (str(p), -1, -1)


@lru_cache(maxsize=65536)
def _file_digest(path: str, size: int, mtime: int) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return "unreadable"
    return h.hexdigest()
