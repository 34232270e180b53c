"""Rebuild the sample clips for meld.csv and sarcasm_data.json with espeak-ng.

They stand in for MELD's and MUStARD's natural-speech clips (same names, WAV instead of
MP4) so the loaders and the demo run without the real data. Run: python tasks/samples/make_clips.py
"""

from pathlib import Path

from interp.audio import write_wav
from tasks.datasets import load_dataset, sample_path
from tasks.tts import SAMPLE_RATE, draw_voices, get_backend

HERE = Path(__file__).parent
VOICES = ("en-us", "en-us+f3", "en-gb-x-rp", "en-us+m3")

if __name__ == "__main__":
    tts = get_backend("espeak")
    for task, folder in (("meld", "meld_audio"), ("mustard", "mustard_audio")):
        for row in load_dataset(task, sample_path(task)):
            voice = draw_voices(row["id"], VOICES, (200,), seed=0)[0]
            stem = row["id"].split("-", 1)[1]
            write_wav(HERE / folder / f"{stem}.wav", tts.synthesize(row["text"], voice.name, voice.rate), SAMPLE_RATE)
