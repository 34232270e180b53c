"""`--device-map` and `--max-memory`: loading through Accelerate's device map gives the same
residuals, lens and answers as loading onto one device (on CPU, the map places everything on
the CPU: the loading path is exercised, cross-GPU placement needs GPUs)."""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from interp.errors import InterpError
from interp.models.base import parse_max_memory
from tests.helpers import one_line_error


def test_parse_max_memory():
    assert parse_max_memory(None) is None
    assert parse_max_memory("0=70GiB, 1=60GiB,cpu=200GiB") == {0: "70GiB", 1: "60GiB", "cpu": "200GiB"}
    for bad, needle in (("0=lots", "not a size"), ("gpu0=1GiB", "unknown device")):
        with pytest.raises(InterpError, match=needle):
            parse_max_memory(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InterpError, match="none is visible"):
            parse_max_memory("70GiB")


def test_device_map_trace_and_lens_equal_plain_loading(run_cli, tiny_model_dir, tones, tmp_path):
    model, manifest = tiny_model_dir("qwen2-audio"), tones(3)
    plain, mapped = tmp_path / "plain.h5", tmp_path / "mapped.h5"
    args = ("--data", manifest, "--layers", "embed,0,1", "--batch-size", "2")
    assert run_cli("trace", model, *args, "--out", plain)[0] == 0
    code, _, err = run_cli("trace", model, *args, "--out", mapped, "--device-map", "auto", "--max-memory", "cpu=4GiB")
    assert code == 0, err
    with h5py.File(plain, "r") as a, h5py.File(mapped, "r") as b:
        for k in ("embed", "0", "1"):
            assert a[f"resid/{k}"][()].tobytes() == b[f"resid/{k}"][()].tobytes()
    lens = {}
    for name, extra in (("plain", ()), ("mapped", ("--device-map", "auto"))):
        out = tmp_path / f"lens-{name}.jsonl"
        code, _, err = run_cli("lens", model, "--data", manifest, "--layers", "0,1", "--out", out, *extra)
        assert code == 0, err
        lens[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert lens["plain"] and lens["plain"] == lens["mapped"]


def test_device_map_bad_input_is_one_line(run_cli, tiny_model_dir, tones, tmp_path):
    model, manifest = tiny_model_dir("qwen2-audio"), tones(1)
    base = ("trace", model, "--data", manifest, "--out", tmp_path / "a.h5")
    one_line_error(*run_cli(*base, "--max-memory", "cpu=2GiB")[::2], "--device-map auto")
    one_line_error(*run_cli(*base, "--device-map", "everywhere")[::2], "--device-map 'everywhere'")
    one_line_error(*run_cli(*base, "--device-map", "auto", "--max-memory", "0=big")[::2], "not a size")
    assert not (tmp_path / "a.h5").exists()
