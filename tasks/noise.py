"""Additive noise at an exact signal-to-noise ratio.

SNR is defined on power over the whole utterance: 10 log10(mean(clean^2) / mean(noise^2)),
with the noise cut (or looped) to the utterance's length. `mix_at_snr` scales the noise to
hit the request exactly, so the achieved SNR equals the requested one up to float error.
If the mix would clip, clean and noise are scaled down together (the SNR is unchanged) and
the gain is recorded, so the clean signal stays recoverable: mix - noise_gain * noise ==
clean_gain * clean.

Noise sources:
- "white": Gaussian white noise;
- "babble": several other utterances of the same manifest, each at equal power, overlapped
  (on a one-item manifest, a few built-in sentences synthesised by espeak-ng instead), so a
  noisy condition exists on a fresh machine without MUSAN;
- a folder of noise files (e.g. MUSAN's noise/ or speech/ folders): one file per item,
  drawn at random and looped as needed.
An item's noise is drawn from a generator seeded by (seed, item id): the same noise at every
SNR, whatever the order or the number of items.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from interp.errors import InterpError
from interp.progress import Progress
from interp.progress import stage as start_stage

SAMPLE_RATE = 16000
NOISE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
CLIP_LEVEL = 0.999  # 16-bit WAV saturates at full scale
BABBLE_TALKERS = 6
BABBLE_POOL = 48  # utterances held in memory to draw babble from
_BUILTIN_BABBLE = (
    "The meeting has been moved to the small room on the second floor.",
    "I think we should leave before the traffic gets any worse.",
    "She said the package would arrive sometime after lunch.",
    "Could you pass me the list of names from the front desk?",
    "They have been painting the fence all morning and are nearly done.",
    "The train was late again, so we walked the last part of the way.",
    "He keeps his keys in the blue bowl next to the door.",
    "We ordered soup and bread and waited by the window.",
)


def fit_noise(noise: np.ndarray, length: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """`length` samples of `noise` from a random offset, looping if it is too short; (segment, offset)."""
    noise = np.asarray(noise, dtype=np.float64)
    if noise.ndim != 1 or noise.size == 0:
        raise InterpError("noise must be a non-empty mono waveform")
    offset = int(rng.integers(0, noise.size)) if rng is not None else 0
    if noise.size >= length:
        offset = offset % (noise.size - length + 1)
        return noise[offset: offset + length], offset
    return np.resize(np.roll(noise, -offset), length), offset


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict]:
    """Add `noise` to `clean` at `snr_db`; returns (mix float32, info).

    `info`: snr_db (requested), achieved_snr_db, noise_gain and clean_gain (mix ==
    clean_gain * clean + noise_gain * noise segment), noise_offset, rescaled (True if both
    were scaled down to avoid clipping).
    """
    if not math.isfinite(float(snr_db)):
        raise InterpError(f"SNR must be a finite number of dB, got {snr_db}")
    clean64 = np.asarray(clean, dtype=np.float64)
    if clean64.ndim != 1 or clean64.size == 0:
        raise InterpError("clean audio must be a non-empty mono waveform")
    segment, offset = fit_noise(noise, clean64.size, rng)
    p_clean, p_noise = np.mean(clean64 ** 2), np.mean(segment ** 2)
    if p_clean <= 0:
        raise InterpError("clean audio is silent; an SNR is undefined for it")
    if p_noise <= 0:
        raise InterpError("the noise segment is silent; choose another noise source")
    noise_gain = math.sqrt(p_clean / (p_noise * 10 ** (float(snr_db) / 10)))
    mix = clean64 + noise_gain * segment
    peak = float(np.max(np.abs(mix)))
    clean_gain = 1.0
    if peak > CLIP_LEVEL:
        clean_gain = CLIP_LEVEL / peak
        mix *= clean_gain
        noise_gain *= clean_gain
    achieved = 10 * math.log10(np.mean((clean_gain * clean64) ** 2) / np.mean((noise_gain * segment) ** 2))
    return mix.astype(np.float32), {
        "snr_db": float(snr_db), "achieved_snr_db": achieved, "noise_gain": noise_gain,
        "clean_gain": clean_gain, "noise_offset": offset, "rescaled": clean_gain != 1.0,
    }


def parse_snrs(text: str | Sequence[float]) -> tuple[float, ...]:
    """SNRs in dB from "20,10,5,0" (or a sequence); InterpError on empty, non-numeric or repeated values."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if not parts or any(p == "" for p in parts):
        raise InterpError(f"--snr needs a comma-separated list of dB values, e.g. 20,10,5,0; got {text!r}")
    values = []
    for p in parts:
        try:
            value = float(p)
        except (TypeError, ValueError):
            raise InterpError(f"SNR {p!r} is not a number; pass dB values like 20,10,5,0") from None
        if not math.isfinite(value) or abs(value) > 100:
            raise InterpError(f"SNR {p!r} is out of range; use finite dB values between -100 and 100")
        values.append(value)
    if len(set(values)) != len(values):
        raise InterpError(f"--snr lists a value twice ({text}); give each SNR once")
    return tuple(values)


def snr_order(snr_db: float | None) -> tuple:
    """The one order of noise conditions in tables and figures: clean first, then from the
    mildest noise to the harshest (descending SNR)."""
    return (0, 0.0) if snr_db is None else (1, -float(snr_db))


def format_snr(snr_db: float | None) -> str:
    """A noise condition as tables name it: 'clean' or '10 dB'."""
    return "clean" if snr_db is None else f"{snr_db:g} dB"


def snr_tag(snr_db: float) -> str:
    """Folder-safe tag: 20 -> 'snr20', -5 -> 'snr-5', 2.5 -> 'snr2.5'."""
    return f"snr{int(snr_db) if float(snr_db).is_integer() else snr_db:g}"


def item_rng(seed: int, item_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(item_id).encode())])


# ---- noise sources ------------------------------------------------------------------------

class WhiteNoise:
    """Gaussian white noise."""

    name = "white"

    def draw(self, length: int, item_id: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        return rng.standard_normal(length), {}


class BabbleNoise:
    """Several other utterances overlapped, each at unit power and a random offset."""

    name = "babble"

    def __init__(self, pool: dict[str, np.ndarray], talkers: int = BABBLE_TALKERS):
        if talkers < 1:
            raise InterpError(f"babble needs at least one talker, got {talkers}")
        self.talkers = talkers
        self.pool = {k: v / np.sqrt(np.mean(v.astype(np.float64) ** 2)) for k, v in pool.items() if np.any(v)}
        if len(self.pool) < 2:
            # One item cannot make babble from "other" items: speak some built-in sentences.
            self.pool.update(builtin_babble())

    def draw(self, length: int, item_id: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        others = [k for k in sorted(self.pool) if k != item_id]
        picks = rng.choice(len(others), size=self.talkers, replace=self.talkers > len(others))
        babble = np.zeros(length)
        for i in picks:
            babble += fit_noise(self.pool[others[i]], length, rng)[0]
        return babble, {"babble_of": [others[i] for i in picks]}


class FolderNoise:
    """Noise files in a folder (searched recursively), one drawn per item and looped as needed."""

    name = "dir"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES and p.is_file())
        if not self.files:
            raise InterpError(f"no noise files ({', '.join(NOISE_SUFFIXES)}) in {self.folder}; point --noise at e.g. MUSAN's noise/ folder")

    def draw(self, length: int, item_id: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        path = self.files[int(rng.integers(len(self.files)))]
        return _load_noise(str(path)), {"noise_file": str(path.relative_to(self.folder))}


@lru_cache(maxsize=16)
def _load_noise(path: str) -> np.ndarray:
    from interp.audio import load_audio

    return load_audio(path, SAMPLE_RATE)


@lru_cache(maxsize=1)
def _builtin_babble_cached() -> tuple[tuple[str, np.ndarray], ...]:
    from tasks.tts import get_backend

    tts = get_backend("espeak")
    voices = ("en-us", "en-gb-x-rp", "en-us+f4", "en-us+m3", "en-gb-scotland", "en-us+linda", "en-029", "en-us+m7")
    out = []
    for i, (text, voice) in enumerate(zip(_BUILTIN_BABBLE, voices)):
        wav = tts.synthesize(text, voice, 150 + 10 * i)
        out.append((f"babble-builtin-{i}", wav / np.sqrt(np.mean(wav.astype(np.float64) ** 2))))
    return tuple(out)


def builtin_babble() -> dict[str, np.ndarray]:
    """Built-in babble talkers: eight everyday sentences in different espeak voices."""
    return dict(_builtin_babble_cached())


def noise_source(spec: str, rows: Sequence[dict] = (), seed: int = 0, talkers: int = BABBLE_TALKERS,
                 load: Callable[[dict], np.ndarray] | None = None):
    """The source named by `spec`: "white", "babble" (from `rows`' audio) or a folder of files."""
    spec = str(spec).strip()
    if spec == "white":
        return WhiteNoise()
    if spec == "babble":
        rng = np.random.default_rng([int(seed), 0xBABB1E])
        chosen = rng.choice(len(rows), size=min(BABBLE_POOL, len(rows)), replace=False) if rows else []
        if load is None:
            from interp.audio import load_audio

            load = lambda row: load_audio(row["audio"], SAMPLE_RATE)  # noqa: E731
        return BabbleNoise({rows[i]["id"]: load(rows[i]) for i in sorted(chosen)}, talkers)
    if Path(spec).is_dir():
        return FolderNoise(spec)
    raise InterpError(f"unknown noise {spec!r}; use babble, white or a folder of noise WAVs")


# ---- a manifest under noise ---------------------------------------------------------------

def add_noise(manifest: str | Path, snrs: Sequence[float] | str, noise: str, out_dir: str | Path, seed: int = 0,
              talkers: int = BABBLE_TALKERS, progress: Progress | None = None) -> dict[float, Path]:
    """Mix noise into every item of `manifest` at each SNR; one manifest per condition.

    Writes out_dir/snr{X}/audio/*.wav and out_dir/snr{X}/manifest.jsonl; each row keeps its
    id and fields and gains `snr_db`, `noise`, `clean_audio` and the mixing gains. Returns
    {snr_db: manifest path}.
    """
    from interp.audio import load_audio, write_wav
    from interp.manifest import read_manifest, write_manifest
    from tasks.outputs import audio_names, staged_output

    snrs = parse_snrs(snrs)
    rows = read_manifest(manifest)
    for row in rows:
        if not Path(row["audio"]).is_file():
            raise InterpError(f"{manifest}: audio for item {row['id']} not found: {row['audio']}; fix the manifest")
    source = noise_source(noise, rows, seed, talkers)
    label = source.name if source.name != "dir" else f"dir:{Path(noise).resolve()}"
    names = audio_names([r["id"] for r in rows])
    advance = start_stage(progress, "mixing noise", len(rows))
    with staged_output(out_dir) as stage:
        noisy: dict[float, list[dict]] = {snr: [] for snr in snrs}
        for row in rows:
            clean = load_audio(row["audio"], SAMPLE_RATE)
            rng = item_rng(seed, row["id"])
            drawn, where = source.draw(clean.size, row["id"], rng)
            segment, offset = fit_noise(drawn, clean.size, rng)
            if "noise_file" in where:
                where["noise_offset"] = offset
            for snr in snrs:
                # The same segment at every SNR: conditions differ only in level.
                mix, info = mix_at_snr(clean, segment, snr)
                path = stage / snr_tag(snr) / "audio" / names[row["id"]]
                write_wav(path, mix, SAMPLE_RATE)
                noisy[snr].append({**row, "audio": str(path), "snr_db": snr, "noise": label, **where,
                                   "clean_audio": row["audio"], "achieved_snr_db": round(info["achieved_snr_db"], 4),
                                   "noise_gain": info["noise_gain"], "clean_gain": info["clean_gain"],
                                   "rescaled": info["rescaled"]})
            advance(1)
        for snr, out_rows in noisy.items():
            write_manifest(stage / snr_tag(snr) / "manifest.jsonl", out_rows, staged=(stage, out_dir))
    return {snr: Path(out_dir) / snr_tag(snr) / "manifest.jsonl" for snr in snrs}
