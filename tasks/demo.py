"""A small speech dataset built from the shipped samples in a few seconds on a CPU: the
text-sufficient sample items spoken by espeak-ng (one clean manifest, tasks mixed), and the
same items under built-in babble at each requested SNR. The quickstart notebook and the tests run on it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from interp.errors import InterpError
from tasks.datasets import load_dataset, sample_audio_dir, sample_path
from tasks.noise import add_noise
from tasks.synth import synthesize
from tasks.task import get_task

DEMO_VOICES = ("en-us", "en-us+f4", "en-gb-x-rp")  # no breath-noise variants: reproducible
DEMO_RATES = (150, 175)


def demo_data(out_dir: str | Path, tasks: Sequence[str] = ("agnews", "sst2"), n_per_task: int = 6,
              snrs: Sequence[float] = (0.0,), seed: int = 0) -> dict:
    """Build out_dir/clean/manifest.jsonl and out_dir/noisy/snr{X}/manifest.jsonl.

    Returns {"clean": Path, "noisy": {snr_db: Path}}. MELD and MUStARD may be listed too:
    their sample clips are used as they are rather than synthesised.
    """
    if n_per_task < 1:
        raise InterpError(f"n_per_task must be at least 1, got {n_per_task}")
    if not tasks:
        raise InterpError("demo_data needs at least one task")
    out_dir = Path(out_dir)
    spoken, recorded = [], []
    for name in tasks:
        task = get_task(name)
        if task.text_sufficient:
            spoken += load_dataset(task.name, sample_path(task.name), limit=n_per_task)
        else:
            recorded += load_dataset(task.name, sample_path(task.name), sample_audio_dir(task.name), limit=n_per_task)
    clean = out_dir / "clean" / "manifest.jsonl"
    if spoken:
        synthesize(spoken, out_dir / "clean", voices=DEMO_VOICES, rates=DEMO_RATES, seed=seed)
    if recorded:
        from interp.manifest import read_manifest, write_manifest

        rows = read_manifest(clean) if spoken else []
        write_manifest(clean, rows + recorded)
    noisy = add_noise(clean, list(snrs), "babble", out_dir / "noisy", seed=seed) if snrs else {}
    return {"clean": clean, "noisy": noisy}
