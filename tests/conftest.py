"""Shared fixtures: tiny checkpoints (built once per session) and small audio manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: family name -> folder of a tiny checkpoint of that family (built once)."""
    cache: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in cache:
            from interp.testing import make_tiny

            out = tmp_path_factory.mktemp(f"tiny-{family}")
            cache[family] = make_tiny(family, out, seed=0)
        return cache[family]

    return build


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir):
    cache = {}

    def load(family: str):
        if family not in cache:
            from interp.models import load_model

            cache[family] = load_model(tiny_model_dir(family), device="cpu")
        return cache[family]

    return load


def write_tones(folder: Path, n: int, seed: int = 0, min_s: float = 0.6, max_s: float = 2.2,
                sample_rate: int = 16000) -> Path:
    """Write n WAVs of different lengths (tones plus noise) and a manifest; return the manifest path."""
    from interp.audio import write_wav

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        seconds = float(rng.uniform(min_s, max_s))
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        f0 = rng.uniform(120, 300)
        wav = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))
        write_wav(folder / f"u{i}.wav", wav.astype(np.float32), sample_rate)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "transcript": "the team won the match",
                     "task": "sst2", "label": ["negative", "positive"][i % 2], "speaker": f"s{i % 3}"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture
def tones(tmp_path):
    return lambda n, **kw: write_tones(tmp_path / "audio", n, **kw)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `interp ARGS...` in-process as a user would; return (exit code, stdout, stderr)."""
    import sys

    def run(*args):
        import cli

        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["interp", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "300")
        code = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def demo_manifests(tmp_path_factory):
    """Synthesised speech for two text-sufficient tasks, clean and at 0 dB babble."""
    from tasks import demo_data

    return demo_data(tmp_path_factory.mktemp("demo-data"), tasks=("agnews", "sst2"), n_per_task=3, snrs=(0.0,))
