"""Adapters for Phi-4-multimodal, Voxtral and Audio Flamingo 3, on tiny random checkpoints of the
real transformers classes: module paths, audio positions and their times, the logit lens at the
last block, and the encoder run alone."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.models import detect_family, family_names, get_family
from interp.models.audioflamingo3 import AudioFlamingo3
from interp.models.phi4_multimodal import Phi4Multimodal
from interp.models.voxtral import Voxtral

SR = 16000
N_LAYERS, ENCODER_LAYERS = 4, 2
LENGTHS = (16000, 27680)  # 1.0 s and 1.73 s
INSTRUCTIONS = ("what is said?", "name the topic of this clip")


def expected_placeholders(family: str, n_samples: int) -> int:
    """Audio placeholder tokens per item: Voxtral writes 375 per started 30 s window."""
    return 375 * math.ceil(n_samples / 480000) if family == "voxtral" else expected_positions(family, n_samples)


def expected_positions(family: str, n_samples: int) -> int:
    """Audio positions per item, written out from each family's processor source."""
    if family == "phi4-mm":  # Phi4MultimodalFeatureExtractor: frames, then ceil(frames / 8)
        return math.ceil(((n_samples - 400) // 160 + 1) / 8)
    if family == "voxtral":  # 80 ms positions that start before the audio's end (the window's rest is padding)
        return math.ceil(n_samples / 1280)
    if family == "audioflamingo3":  # Whisper frames -> conv stride 2 -> avg pool 2
        frames = math.ceil(n_samples / 160)
        return (((frames - 1) // 2 + 1) - 2) // 2 + 1
    raise KeyError(family)


ENCODER_PARENT = {"phi4-mm": "model.embed_tokens_extend.audio_embed.encoder", "voxtral": "model.audio_tower",
                  "audioflamingo3": "model.audio_tower"}
CLASSES = [Phi4Multimodal, Voxtral, AudioFlamingo3]


def load(cls, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Phi-4's "no speech-lora/" warning
        return cls.load(path)


@pytest.fixture(scope="module", params=CLASSES, ids=lambda c: c.family)
def tiny(request, tiny_model_dir):  # tiny_model_dir (conftest): family -> make_tiny folder, built once
    return load(request.param, tiny_model_dir(request.param.family))


def waves(seed: int = 0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def forward(adapter, batch, hook_paths=()):
    """Model outputs plus the raw outputs of the modules at `hook_paths`."""
    captured, handles = {}, []
    for p in hook_paths:
        def hook(_m, _i, out, p=p):
            captured[p] = out[0] if isinstance(out, (tuple, list)) else out
        handles.append(adapter.module(p).register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = adapter.model(**batch.inputs, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def test_registry_and_files(tiny):
    cls = type(tiny)
    assert cls.family in family_names() and get_family(cls.family) is cls
    assert detect_family(tiny.path) is cls
    assert tiny.model.config.model_type in cls.model_types
    files = set(os.listdir(tiny.path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert files & {"preprocessor_config.json", "processor_config.json"}
    assert tiny.describe()["n_layers"] == N_LAYERS


def test_module_paths(tiny):
    layers = tiny.layers
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == N_LAYERS == tiny.n_layers
    assert type(tiny.final_norm).__name__.endswith("RMSNorm")
    assert isinstance(tiny.unembed, torch.nn.Linear)
    assert tiny.unembed.out_features == tiny.model.config.get_text_config().vocab_size
    assert isinstance(tiny.module(tiny.embed_path), torch.nn.Embedding)
    assert tiny.module(tiny.embed_path) is tiny.model.get_input_embeddings()
    assert isinstance(tiny.encoder_layers, torch.nn.ModuleList) and len(tiny.encoder_layers) == ENCODER_LAYERS
    assert tiny.d_model == 64
    # the same dotted paths resolve on the nnsight wrapper
    assert tiny.envoy(tiny.layers_path + ".0") is not None and tiny.envoy(tiny.norm_path) is not None


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_forward_and_audio_times(tiny, side):
    batch = tiny.prepare(waves(), INSTRUCTIONS, padding_side=side)
    out, _ = forward(tiny, batch)
    assert len(out.hidden_states) == N_LAYERS + 1
    assert out.logits.shape[:2] == batch.token_ids.shape
    mask = batch.attention_mask.cpu()
    assert (mask.sum(-1) < mask.shape[1]).any()  # the batch really is padded
    pad_col = 0 if side == "left" else -1
    assert mask[:, pad_col].min() == 0
    audio_id = tiny.model.config.audio_config.audio_token_id if tiny.family == "phi4-mm" else tiny.model.config.audio_token_id
    for i, (span, n_samples) in enumerate(zip(batch.audio, LENGTHS)):
        d = n_samples / SR
        assert batch.durations[i] == pytest.approx(d)
        n = expected_positions(tiny.family, n_samples)
        assert len(span.positions) == n
        assert np.all(np.diff(span.positions) == 1)  # one contiguous run
        assert (batch.token_ids[i, span.positions] == audio_id).all()
        assert mask[i, span.positions].all()
        assert int((batch.token_ids[i] == audio_id).sum()) == expected_placeholders(tiny.family, n_samples)
        np.testing.assert_array_equal(np.sort(np.concatenate([span.positions, span.padding])),
                                      torch.nonzero(batch.token_ids[i] == audio_id).flatten().cpu().numpy())
        # times: consecutive windows of the family's length from 0 s, clipped to the audio
        spp = tiny.seconds_per_audio_position
        covering = span.time_end > span.time_start
        assert abs(covering.sum() - d / spp) <= 1
        assert span.time_start[0] == 0.0
        assert np.allclose(span.time_start[covering], np.arange(covering.sum()) * spp)
        assert np.all(span.time_end <= d + 1e-12) and span.time_end.max() >= d - spp
        assert np.all(span.time_start <= span.time_end)


@pytest.mark.parametrize("side", ["right", "left"])
def test_audio_positions_are_where_the_model_merges_audio(tiny, side):
    """Changing item 0's waveform changes the merged embeddings exactly at its audio positions."""
    a = tiny.prepare(waves(0), INSTRUCTIONS, padding_side=side)
    other = waves(1)
    b = tiny.prepare([other[0], waves(0)[1]], INSTRUCTIONS, padding_side=side)
    assert torch.equal(a.token_ids, b.token_ids)
    ea = forward(tiny, a)[0].hidden_states[0]
    eb = forward(tiny, b)[0].hidden_states[0]
    changed = (ea[0] != eb[0]).any(-1).nonzero().flatten().cpu().numpy()
    # Voxtral's encoder has no padding mask, so the padding positions of the window change too.
    np.testing.assert_array_equal(changed, np.sort(np.concatenate([a.audio[0].positions, a.audio[0].padding])))
    assert torch.equal(ea[1], eb[1])


def test_last_block_through_norm_and_unembed_gives_logits(tiny):
    batch = tiny.prepare(waves(), INSTRUCTIONS)
    paths = [f"{tiny.layers_path}.{i}" for i in range(N_LAYERS)]
    out, raw = forward(tiny, batch, paths)
    with torch.no_grad():
        logits = tiny.unembed(tiny.final_norm(raw[paths[-1]]))
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
    # HF's hidden_states[i + 1] is block i's raw output for all but the last block
    for i in range(N_LAYERS - 1):
        torch.testing.assert_close(out.hidden_states[i + 1], raw[paths[i]], atol=0, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1], tiny.final_norm(raw[paths[-1]]), atol=1e-6, rtol=0)


def test_encoder_alone_matches_encoder_inside_model(tiny):
    batch = tiny.prepare(waves(), INSTRUCTIONS)
    paths = [f"{tiny.encoder_layers_path}.{i}" for i in range(ENCODER_LAYERS)]
    _, inside = forward(tiny, batch, paths)
    kwargs, spans = tiny.encoder_inputs(batch)
    alone = {}
    handles = [tiny.module(p).register_forward_hook(
        lambda _m, _i, o, p=p: alone.__setitem__(p, o[0] if isinstance(o, (tuple, list)) else o)) for p in paths]
    try:
        with torch.no_grad():
            tiny.module(ENCODER_PARENT[tiny.family])(**kwargs)
    finally:
        for h in handles:
            h.remove()
    for p in paths:
        torch.testing.assert_close(alone[p], inside[p], atol=1e-6, rtol=0)
    frames = inside[paths[-1]].shape[1]
    spf = tiny.encoder_seconds_per_frame
    for span, n_samples in zip(spans, LENGTHS):
        d = n_samples / SR
        assert len(span.positions) <= frames
        assert abs(len(span.positions) - d / spf) <= 1
        np.testing.assert_array_equal(span.positions, np.arange(len(span.positions)))
        assert span.time_start[0] == 0.0 and np.all(span.time_end <= d + 1e-12)


def test_phi4_without_speech_lora_warns(tmp_path, tiny_model_dir):
    path = Path(shutil.copytree(tiny_model_dir("phi4-mm"), tmp_path / "phi4"))
    with pytest.warns(UserWarning, match="speech-lora"):
        adapter = Phi4Multimodal.load(path)
    assert adapter.speech_lora is None


def test_voxtral_prompt_layout(tiny_model_dir):
    """The tiny checkpoint's prompt follows mistral-common's: <s>[INST][BEGIN_AUDIO][AUDIO]x375 text [/INST]."""
    adapter = Voxtral.load(tiny_model_dir("voxtral"))
    assert type(adapter.processor).__name__ == "VoxtralProcessor"
    assert adapter.processor.audio_token_id == adapter.model.config.audio_token_id == 24
    batch = adapter.prepare(waves(lengths=(16000,)), ["hello"])
    ids = batch.token_ids[0].tolist()
    tok = adapter.tokenizer
    assert ids[:3] == tok.convert_tokens_to_ids(["<s>", "[INST]", "[BEGIN_AUDIO]"])
    assert ids[3:378] == [24] * 375 and ids[378] != 24
    assert ids[-1] == tok.convert_tokens_to_ids("[/INST]")
    assert batch.inputs["input_features"].shape == (1, 128, 3000)


def test_offline_load_in_fresh_process(tmp_path, tiny_model_dir):
    """make_tiny -> load_model with the hub switched off, in a process that has never seen the classes."""
    dirs = {cls.family: str(tiny_model_dir(cls.family)) for cls in CLASSES}
    script = (
        "import json, sys, warnings, numpy as np, torch\n"
        "warnings.simplefilter('ignore')\n"
        "from interp.models import load_model\n"
        "out = {}\n"
        "for fam, path in json.loads(sys.argv[1]).items():\n"
        "    m = load_model(path, device='cpu')\n"
        "    b = m.prepare([np.zeros(8000, np.float32) + 0.01], ['hi'])\n"
        "    with torch.no_grad():\n"
        "        o = m.model(**b.inputs)\n"
        "    out[fam] = [m.family, len(b.audio[0].positions), bool(torch.isfinite(o.logits).all())]\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    res = subprocess.run([sys.executable, "-c", script, json.dumps(dirs)], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for cls in CLASSES:
        assert got[cls.family] == [cls.family, expected_positions(cls.family, 8000), True]


class MistralCommonBackend:
    """Test stand-in for mistral-common's tokenizer (not installed here): it decodes the base64
    audio the adapter sends and expands it as mistral-common does, [BEGIN_AUDIO] + 375 [AUDIO]
    per started 30 s window, so the real-checkpoint path through VoxtralProcessor runs."""

    padding_side = "left"
    received: list[np.ndarray] = []

    def apply_chat_template(self, conversations, padding=True, return_dict=True, return_tensors=None, **kwargs):
        import base64
        import io

        import soundfile as sf

        seqs, audio = [], []
        for conversation in conversations:
            ids = [1, 3]  # <s> [INST]
            for part in conversation[0]["content"]:
                if part["type"] == "audio":
                    wav, sr = sf.read(io.BytesIO(base64.b64decode(part["base64"])), dtype="float32")
                    assert sr == SR
                    audio.append(wav)
                    ids += [25] + [24] * (375 * math.ceil(len(wav) / 480000))
                else:
                    ids += [30] * len(part["text"].split())
            seqs.append(ids + [4])  # [/INST]
        width = max(map(len, seqs))
        pad = [[11] * (width - len(s)) for s in seqs]
        left = self.padding_side == "left"
        input_ids = [p + s if left else s + p for s, p in zip(seqs, pad)]
        mask = [[0] * len(p) + [1] * len(s) if left else [1] * len(s) + [0] * len(p) for s, p in zip(seqs, pad)]
        MistralCommonBackend.received = audio
        return {"input_ids": input_ids, "attention_mask": mask, "audio": audio}


@pytest.mark.parametrize("side", ["right", "left"])
def test_voxtral_mistral_common_path(tiny_model_dir, side):
    adapter = Voxtral.load(tiny_model_dir("voxtral"))  # a fresh copy: its tokenizer is swapped below
    adapter.processor.tokenizer = MistralCommonBackend()
    assert adapter._mistral_common
    w = waves()
    batch = adapter.prepare(w, INSTRUCTIONS, padding_side=side)
    for sent, got in zip(w, MistralCommonBackend.received):
        np.testing.assert_array_equal(sent, got)  # float WAV carries the samples exactly
    assert batch.inputs["input_features"].shape == (2, 128, 3000)
    for i, (span, wav) in enumerate(zip(batch.audio, w)):
        assert len(span.positions) == math.ceil(len(wav) / 1280) and len(span.positions) + len(span.padding) == 375
        assert (batch.token_ids[i, np.concatenate([span.positions, span.padding])] == 24).all()
        assert batch.token_ids[i, span.positions[0] - 1] == 25
    assert batch.attention_mask[:, 0 if side == "left" else -1].min() == 0
    with torch.no_grad():
        assert torch.isfinite(adapter.model(**batch.inputs).logits).all()
    with pytest.raises(InterpError, match="mistral-common"):
        adapter.prompt_text("hi")
