"""Audio I/O: read any soundfile-readable file as mono float32 at a requested rate.

Reading goes through soundfile (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1); stereo is
downmixed by averaging channels; resampling uses soxr (high quality). Writing is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from interp.atomic import atomic_path
from interp.errors import InterpError


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, check: bool = True) -> np.ndarray:
    """Load `path` as a mono float32 waveform at `sample_rate`.

    With `check`, empty, silent-only and non-finite audio raise InterpError.
    """
    import soundfile as sf

    from interp.errors import path_problem

    path = Path(path)
    problem = path_problem(path, "audio file")
    if problem:
        raise InterpError(f"{problem}; fix the 'audio' path in the manifest")
    if path.suffix.lower() in (".mp4", ".mkv", ".avi", ".mov", ".webm"):
        raise InterpError(
            f"{path} is a video container; extract its audio first, e.g. "
            f"`ffmpeg -i {path.name} -ac 1 -ar 16000 {path.stem}.wav` (or use `interp data` loaders, which call ffmpeg when present)"
        )
    cut = wav_truncation(path)
    if cut is not None:
        raise InterpError(f"{path} is a truncated WAV: its header promises {cut[0]:.2f} s of audio but the file holds "
                          f"{cut[1]:.2f} s; re-export or re-download it")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise InterpError(f"cannot read audio {path}: {str(e).splitlines()[0]}; use WAV, FLAC, OGG or MP3") from None
    wav = wav.mean(axis=1)
    if sr != sample_rate and wav.size:
        wav = resample(wav, sr, sample_rate)
    if check:
        check_waveform(wav, path)
    return np.ascontiguousarray(wav, dtype=np.float32)


def wav_truncation(path: str | os.PathLike) -> tuple[float, float] | None:
    """(seconds the header promises, seconds present) for a WAV file cut short, else None.

    libsndfile reads what is there without a word, so a download or copy cut off mid-file
    would pass as a short clip. Streaming writers that leave the size at 0 or 0xFFFFFFFF
    (unknown) are not flagged.
    """
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = os.fstat(fh.fileno()).st_size
            byte_rate = 0
            while True:
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return None
                cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = fh.read(min(n, 16))
                    if len(fmt) >= 12:
                        byte_rate = struct.unpack("<I", fmt[8:12])[0]
                    fh.seek(n - len(fmt) + (n & 1), 1)
                elif cid == b"data":
                    have = size - fh.tell()
                    if n in (0, 0xFFFFFFFF) or n <= have or not byte_rate:
                        return None
                    return n / byte_rate, have / byte_rate
                else:
                    fh.seek(n + (n & 1), 1)
    except OSError:
        return None


def resample(wav: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(np.asarray(wav, dtype=np.float32), orig_rate, target_rate, quality="HQ").astype(np.float32)


def check_waveform(wav: np.ndarray, name: str | os.PathLike = "audio") -> None:
    if wav.size == 0:
        raise InterpError(f"audio {name} is empty; remove the item or fix the file")
    if not np.all(np.isfinite(wav)):
        raise InterpError(f"audio {name} contains NaN or infinite samples; fix or remove the file")
    if np.max(np.abs(wav)) < 1e-6:
        raise InterpError(f"audio {name} is silent; remove the item or fix the file")


def write_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int = 16000) -> None:
    """Write mono 16-bit PCM WAV atomically."""
    import soundfile as sf

    from interp.atomic import explain_write_failure

    with atomic_path(path, suffix=".wav") as tmp:
        try:
            sf.write(str(tmp), np.asarray(wav, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")
        except (RuntimeError, sf.SoundFileError) as e:  # libsndfile: "System error", no errno
            raise explain_write_failure(path, e) from None


VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def extract_audio(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int = 16000) -> None:
    """Extract a video container's audio track to a mono WAV at `sample_rate` with ffmpeg (atomic)."""
    import subprocess

    ffmpeg = require_ffmpeg(src, sample_rate)
    with atomic_path(dst, suffix=".wav") as tmp:
        proc = subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-vn", "-ac", "1",
                               "-ar", str(sample_rate), "-c:a", "pcm_s16le", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise InterpError(f"ffmpeg could not extract audio from {src}: {why}; check that the file has an audio track")


def require_ffmpeg(video: str | os.PathLike, sample_rate: int = 16000) -> str:
    """The ffmpeg executable, or InterpError saying how to convert `video`'s kind of clips by hand."""
    import shutil

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        suffix = Path(video).suffix or ".mp4"
        raise InterpError(
            f"{Path(video).name} is a video container and ffmpeg is not on PATH; install ffmpeg, or convert the clips first, "
            f"e.g. `for f in *{suffix}; do ffmpeg -i \"$f\" -ac 1 -ar {sample_rate} \"${{f%{suffix}}}.wav\"; done`, "
            f"and point --audio-dir at the WAVs"
        )
    return ffmpeg
