"""Offline speech synthesis behind a small backend interface.

A backend turns text into a 16 kHz mono float32 waveform for a voice and a speaking rate.
The default, `EspeakBackend`, drives espeak-ng through ctypes from the `espeakng-loader`
wheel (shared library and voice data inside the wheel, no system package). Other engines
plug in with `register_backend`; `PiperBackend` is one, used where `piper-tts` is installed.

Determinism: espeak-ng keeps synthesis state between utterances (the output for a text
depends on what was spoken before it), so each utterance runs in a freshly loaded copy of
the library. Voice variants with breath noise (`breath` in espeak-ng's variant files: f1, f2,
f3, f5, m1, ...) draw that noise from a source espeak-ng does not seed, so their samples vary
from run to run (seen here: 4 of 30 runs of one sentence with "+f3" differed); the voices this
package picks by default have no breath noise. Which voice and rate an item gets is drawn from
a generator seeded by (seed, item id, rendition), so it does not depend on item order or on
`--limit`.
"""

from __future__ import annotations

import atexit
import ctypes
import io
import shutil
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from interp.audio import resample
from interp.errors import InterpError

SAMPLE_RATE = 16000


class TTSBackend(Protocol):
    """What `interp data synth` needs from a speech synthesiser."""

    name: str
    default_voice: str
    default_rate: int

    def check_voice(self, voice: str) -> None:
        """Raise InterpError if `voice` cannot be used."""

    def check_rate(self, rate: int) -> None:
        """Raise InterpError if `rate` (words per minute) is out of range."""

    def voices(self) -> list[str]:
        """Voice names this backend accepts (may be partial where voices are files)."""

    def synthesize(self, text: str, voice: str | None = None, rate: int | None = None) -> np.ndarray:
        """`text` spoken as a 16 kHz mono float32 waveform."""


@dataclass(frozen=True)
class Voice:
    """One rendition's voice: a backend voice name and a speaking rate in words per minute."""

    name: str
    rate: int


def draw_voices(item_id: str, voices: Sequence[str], rates: Sequence[int], seed: int, n: int = 1) -> list[Voice]:
    """`n` (voice, rate) pairs for an item, drawn without replacement where the pool allows."""
    rng = np.random.default_rng([seed, zlib.crc32(str(item_id).encode())])
    pool = [Voice(v, int(r)) for v in voices for r in rates]
    picks = rng.choice(len(pool), size=n, replace=n > len(pool))
    return [pool[i] for i in picks]


# ---- espeak-ng ----------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3  # espeak_PARAMETER espeakPITCH: base pitch, 0-100 (50 is the voice's own)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


class EspeakBackend:
    """espeak-ng via ctypes. Voices are espeak names: a language ("en-us", "en-gb-x-rp")
    optionally with a variant ("en-us+f4", "en+m7"; variants with breath noise, such as f3, are
    not bit-reproducible); rates are words per minute (80-450)."""

    name = "espeak"
    default_voice = "en-us"
    default_rate = 165
    min_rate, max_rate = 80, 450
    _lock = threading.Lock()  # espeak-ng is one global engine per loaded library

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise InterpError("the espeak backend needs the espeakng-loader package (pip install espeakng-loader)") from None
        source = Path(espeakng_loader.get_library_path())
        self.data_path = Path(espeakng_loader.get_data_path())
        if not source.is_file():
            raise InterpError(f"espeak-ng library missing at {source}; reinstall espeakng-loader")
        self.library_path = _private_copy(source)
        self._checked: set[str] = set()

    def check_rate(self, rate: int) -> None:
        if not self.min_rate <= int(rate) <= self.max_rate:
            raise InterpError(f"speaking rate {rate} is out of range; espeak takes {self.min_rate}-{self.max_rate} words per minute")

    def check_voice(self, voice: str) -> None:
        if voice in self._checked:
            return
        with self._engine() as engine:
            status = engine.lib.espeak_SetVoiceByName(voice.encode())
        if status != 0:
            raise InterpError(f"unknown espeak voice {voice!r}; list voices with `interp data voices` (e.g. en-us, en-gb-x-rp, en-us+f4)")
        self._checked.add(voice)

    def voices(self) -> list[str]:
        """Voice names espeak-ng accepts (one per language or accent); add a variant from `variants()` with '+'."""
        with self._engine() as engine:
            lib = engine.lib
            lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
            lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
            listed = lib.espeak_ListVoices(None)
            names = []
            for i in range(10000):
                if not listed[i]:
                    break
                # SetVoiceByName accepts the voice file's name ("gmw/en-GB-x-rp" -> "en-gb-x-rp").
                identifier = listed[i].contents.identifier
                if identifier:
                    names.append(identifier.decode("utf-8", "replace").rsplit("/", 1)[-1].lower())
        return sorted(set(names))

    def variants(self) -> list[str]:
        """Voice variants (pitch, formants, breathiness), appended to a language as 'en-us+NAME'."""
        folder = self.data_path / "voices" / "!v"
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def synthesize(self, text: str, voice: str | None = None, rate: int | None = None,
                   pitch: int | None = None) -> np.ndarray:
        """`text` as a 16 kHz waveform; `pitch` (0-100) sets espeak-ng's base pitch, else the voice's own."""
        voice = voice or self.default_voice
        rate = int(rate or self.default_rate)
        if pitch is not None and not 0 <= int(pitch) <= 100:
            raise InterpError(f"pitch {pitch} is out of range; espeak takes 0-100 (50 is the voice's own)")
        if not str(text).strip():
            raise InterpError("cannot synthesise empty text; remove the item or give it text")
        self.check_rate(rate)
        chunks: list[np.ndarray] = []

        def collect(wav, n, events):
            if wav and n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        callback = _SYNTH_CALLBACK(collect)  # kept referenced until synthesis returns
        with self._engine() as engine:
            lib = engine.lib
            lib.espeak_SetSynthCallback(callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise InterpError(f"unknown espeak voice {voice!r}; list voices with `interp data voices`")
            lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            if pitch is not None:  # after the voice, which sets its own base pitch
                lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            data = str(text).encode("utf-8") + b"\0"
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise InterpError(f"espeak-ng failed to synthesise (status {status}); check the text: {str(text)[:60]!r}")
        wav = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
        return resample(wav, engine.sample_rate, SAMPLE_RATE) if wav.size else wav

    def _engine(self):
        return _LoadedEspeak(self.library_path, self.data_path, self._lock)


class _LoadedEspeak:
    """A freshly loaded, initialised espeak-ng for one utterance; unloaded on exit."""

    def __init__(self, library_path: Path, data_path: Path, lock: threading.Lock):
        self.library_path, self.data_path, self.lock = library_path, data_path, lock

    def __enter__(self):
        self.lock.acquire()
        try:
            lib = ctypes.CDLL(str(self.library_path))
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
            lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                         ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise InterpError(f"espeak-ng failed to initialise with data at {self.data_path}; reinstall espeakng-loader")
            self.lib, self.sample_rate = lib, rate
            return self
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, *exc):
        try:
            self.lib.espeak_Terminate()
            import _ctypes

            # Unloading resets espeak-ng's static state, so the next utterance starts afresh.
            unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")
            unload(self.lib._handle)
        finally:
            self.lock.release()


_COPIES: dict[Path, Path] = {}


def _private_copy(source: Path) -> Path:
    """A process-private copy of the library, so unloading it never touches another user's copy."""
    if source not in _COPIES:
        from interp.atomic import is_stale, owner_tag

        for old in Path(tempfile.gettempdir()).glob("interp-espeak-*"):  # copies of killed processes
            if is_stale(old.name[len("interp-espeak-"):].rsplit(".", 1)[0]):
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix=f"interp-espeak-{owner_tag()}."))
        atexit.register(shutil.rmtree, folder, True)
        target = folder / source.name
        shutil.copy2(source, target)
        _COPIES[source] = target
    return _COPIES[source]


# ---- Piper (optional) ---------------------------------------------------------------------

class PiperBackend:
    """Piper neural TTS (`pip install piper-tts`); voices are paths to `.onnx` voice models.
    Rate maps to Piper's length scale relative to 165 words per minute."""

    name = "piper"
    default_voice = ""
    default_rate = 165

    def __init__(self) -> None:
        try:
            from piper import PiperVoice  # noqa: F401
        except ImportError:
            raise InterpError("TTS backend 'piper' is not installed; `pip install piper-tts` and pass --voice MODEL.onnx, or use --backend espeak") from None
        self._models: dict[str, object] = {}

    def check_rate(self, rate: int) -> None:
        if not 40 <= int(rate) <= 600:
            raise InterpError(f"speaking rate {rate} is out of range; use 40-600 words per minute")

    def check_voice(self, voice: str) -> None:
        if not voice or not Path(voice).is_file() or Path(voice).suffix != ".onnx":
            raise InterpError(f"piper voice {voice!r} is not a .onnx model file; pass --voice /path/to/en_US-voice.onnx")

    def voices(self) -> list[str]:
        return []

    def synthesize(self, text: str, voice: str | None = None, rate: int | None = None) -> np.ndarray:
        import wave

        import soundfile as sf
        from piper import PiperVoice

        self.check_voice(voice)
        model = self._models.get(voice) or self._models.setdefault(voice, PiperVoice.load(voice))
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav_file:
            scale = self.default_rate / float(rate or self.default_rate)
            if hasattr(model, "synthesize_wav"):  # piper-tts >= 1.3
                from piper import SynthesisConfig

                model.synthesize_wav(text, wav_file, syn_config=SynthesisConfig(length_scale=scale))
            else:
                model.synthesize(text, wav_file, length_scale=scale)
        buffer.seek(0)
        wav, sr = sf.read(buffer, dtype="float32", always_2d=True)
        return resample(wav.mean(axis=1), sr, SAMPLE_RATE)


# ---- registry -----------------------------------------------------------------------------

_BACKENDS: dict[str, Callable[[], TTSBackend]] = {"espeak": EspeakBackend, "espeak-ng": EspeakBackend, "piper": PiperBackend}
_INSTANCES: dict[str, TTSBackend] = {}


def register_backend(name: str, factory: Callable[[], TTSBackend]) -> None:
    """Make `factory()` available as `--backend name`."""
    _BACKENDS[name] = factory
    _INSTANCES.pop(name, None)


def get_backend(name: str | TTSBackend = "espeak") -> TTSBackend:
    """The backend called `name` (instances pass through); InterpError if unknown or not installed."""
    if not isinstance(name, str):
        return name
    key = name.strip().lower()
    if key in ("edge-tts", "edge"):
        raise InterpError("TTS backend 'edge-tts' needs the network and has no adapter here; use --backend espeak or piper, or register one with tasks.tts.register_backend")
    if key not in _BACKENDS:
        raise InterpError(f"unknown TTS backend {name!r}; choose one of {', '.join(sorted(_BACKENDS))}")
    if key not in _INSTANCES:
        _INSTANCES[key] = _BACKENDS[key]()
    return _INSTANCES[key]

