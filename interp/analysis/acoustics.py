"""Acoustic quantities per audio position: energy and pitch over exactly the seconds a stored
position covers, computed from the item's waveform (targets and concepts `energy`, `pitch`)."""

from __future__ import annotations

import numpy as np

def position_energy_db(wav: np.ndarray, sr: int, starts: np.ndarray, ends: np.ndarray, floor_db: float = -100.0) -> np.ndarray:
    """Frame energy in dB re full scale, 10*log10(mean(x^2)), over samples [round(s*sr), round(e*sr)).

    A full-scale sine (amplitude 1) reads -3.01 dB. Windows past the end of the audio are NaN.
    """
    out = np.full(len(starts), np.nan)
    x2 = np.asarray(wav, dtype=np.float64) ** 2
    csum = np.concatenate([[0.0], np.cumsum(x2)])
    for k, (s, e) in enumerate(zip(starts, ends)):
        if not (np.isfinite(s) and np.isfinite(e)):
            continue
        a, b = int(round(s * sr)), min(int(round(e * sr)), len(wav))
        if b <= a:
            b = a + 1
        if a >= len(wav):
            continue
        power = (csum[b] - csum[a]) / (b - a)
        out[k] = max(10.0 * np.log10(power) if power > 0 else floor_db, floor_db)
    return out


PITCH_FRAME = 1024  #: pYIN analysis window at 16 kHz (64 ms: two periods of a 31 Hz voice)
PITCH_HOP = 160  #: 10 ms between F0 frames


def position_pitch(wav: np.ndarray, sr: int, starts: np.ndarray, ends: np.ndarray, fmin: float = 65.0,
                   fmax: float = 500.0) -> np.ndarray:
    """F0 (Hz) per window: the median pYIN F0 of the voiced frames whose centres fall in
    [start, end); NaN (unvoiced, left out of the target) unless at least half of those frames are voiced.

    F0 needs a longer analysis window (64 ms) than an audio position (20-80 ms), so frames are
    assigned to positions by their centre; a window holding no frame centre takes the nearest frame.
    """
    import librosa

    wav = np.asarray(wav, dtype=np.float32)
    if len(wav) < PITCH_FRAME:
        wav = np.pad(wav, (0, PITCH_FRAME - len(wav)))
    f0, voiced, _ = librosa.pyin(wav, fmin=fmin, fmax=fmax, sr=sr, frame_length=PITCH_FRAME, hop_length=PITCH_HOP,
                                 center=True)
    times = librosa.times_like(f0, sr=sr, hop_length=PITCH_HOP)
    out = np.full(len(starts), np.nan)
    for k, (s, e) in enumerate(zip(starts, ends)):
        if not (np.isfinite(s) and np.isfinite(e)):
            continue
        idx = np.flatnonzero((times >= s) & (times < e))
        if len(idx) == 0:
            idx = np.array([int(np.argmin(np.abs(times - (s + e) / 2)))])
        v = voiced[idx] & np.isfinite(f0[idx])
        if v.sum() * 2 >= len(idx) and v.any():
            out[k] = float(np.median(f0[idx][v]))
    return out
