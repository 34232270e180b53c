"""Model and input fingerprints: what they tell apart, what they ignore, and what they cost."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf

from interp.fingerprint import input_fingerprint, model_fingerprint


def test_the_dtype_a_model_runs_in_is_not_part_of_its_fingerprint(tiny_model_dir):
    from interp.models import load_model

    path = tiny_model_dir("qwen2-audio")
    fp32 = load_model(path, dtype="float32", device="cpu")
    bf16 = load_model(path, dtype="bfloat16", device="cpu")
    assert fp32.fingerprint() == bf16.fingerprint() == model_fingerprint(path)
    assert (fp32.runtime_dtype, bf16.runtime_dtype) == ("float32", "bfloat16")


def test_another_checkpoint_of_the_same_architecture_differs(tiny_model_dir, tmp_path):
    from interp.testing import make_tiny

    other = make_tiny("qwen2-audio", tmp_path / "seed1", seed=1)
    a, b = json.loads((tiny_model_dir("qwen2-audio") / "config.json").read_text()), json.loads((other / "config.json").read_text())
    assert a == b  # the configs agree: only the weights tell them apart
    assert model_fingerprint(other) != model_fingerprint(tiny_model_dir("qwen2-audio"))


def test_runtime_config_keys_are_ignored_and_identifying_ones_are_not(tiny_model_dir, tmp_path):
    src = tiny_model_dir("qwen2-audio")
    base = model_fingerprint(src)
    copy = shutil.copytree(src, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    config.update(torch_dtype="bfloat16", dtype="bfloat16", _attn_implementation="sdpa", transformers_version="9.9")
    config["text_config"]["use_cache"] = False
    (copy / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(copy) == base
    config["text_config"]["rope_theta"] = 1234.0
    (copy / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(copy) != base


def _safetensors(path, tensors: dict[str, tuple[str, list[int], bytes | int]]) -> None:
    """A safetensors file; a tensor given a byte count instead of bytes is left as a hole (sparse)."""
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        n = data if isinstance(data, int) else len(data)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
        start = fh.tell()
        for name, (_, _, data) in tensors.items():
            if isinstance(data, int):
                fh.seek(data, 1)
            else:
                fh.write(data)
        fh.truncate(start + offset)


def test_identifying_weights_are_sampled_so_an_8b_checkpoint_costs_the_same(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    big = 4096 * 128256 * 2  # a bf16 unembedding of Llama-3.1-8B: 1 GB, as a sparse file
    tensors = {"lm_head.weight": ("BF16", [128256, 4096], big), "model.norm.weight": ("BF16", [4096], b"\1\0" * 4096)}
    for i in range(32):
        tensors[f"model.layers.{i}.mlp.down_proj.weight"] = ("BF16", [4096, 14336], 4096 * 14336 * 2)
    _safetensors(tmp_path / "model.safetensors", tensors)
    reads = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append(n) or real(fd, n, off))
    first = model_fingerprint(tmp_path)
    assert sum(reads) <= 3 * 16 * 64  # lm_head, the norm and the last block: 16 windows of 64 bytes each

    # another training changes these tensors everywhere, the sampled windows included
    for name, offset_in in (("lm_head.weight", 0), ("model.layers.31.mlp.down_proj.weight", 4096 * 14336 * 2 - 64)):
        with open(tmp_path / "model.safetensors", "r+b") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            fh.seek(8 + n + header[name]["data_offsets"][0] + offset_in)
            fh.write(b"\x7f\x7f")
        os.utime(tmp_path / "model.safetensors", ns=(1, os.stat(tmp_path / "model.safetensors").st_mtime_ns + 1))
        changed = model_fingerprint(tmp_path)
        assert changed != first
        first = changed


def test_input_fingerprints_follow_content_and_instruction(tmp_path):
    wav = (0.2 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wav, 16000)
    shutil.copy(tmp_path / "a.wav", tmp_path / "same.wav")
    sf.write(tmp_path / "b.wav", wav[::-1], 16000)
    a = input_fingerprint(tmp_path / "a.wav", "Is this positive?")
    assert a == input_fingerprint(tmp_path / "same.wav", "Is this positive?")  # content, not path
    assert a != input_fingerprint(tmp_path / "b.wav", "Is this positive?")
    assert a != input_fingerprint(tmp_path / "a.wav", "Is this negative?")
    assert input_fingerprint(None, "text only") != input_fingerprint(None, "other text")


@pytest.mark.parametrize("family", ["whisper", "ultravox"])
def test_every_family_has_a_stable_fingerprint(family, tiny_adapter):
    adapter = tiny_adapter(family)
    assert len(adapter.fingerprint()) == 16 and adapter.fingerprint() == model_fingerprint(adapter.path)
