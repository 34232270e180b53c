"""The logit lens against each family's own logits and norms, live and from a store, and `interp lens`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp.audio import write_wav
from interp.errors import InterpError
from interp.analysis.lens import TokenForms, bag_of_tokens, lens_live, lens_logits, lens_store
from interp.analysis.lens_outputs import emit_manifest
from interp.models import family_names, load_model
from interp.testing import make_tiny
from interp.trace import record, trace
from tests.test_probes import make_store

SR = 16000
SPEECH_FAMILIES = [f for f in family_names() if f != "whisper"]


def _waves():
    t = np.arange(int(0.9 * SR)) / SR
    return [(0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32),
            (0.1 * np.sin(2 * np.pi * 330 * t[: int(0.5 * SR)])).astype(np.float32)]


def _tiny(family: str, tmp_path_factory):
    path = make_tiny(family, tmp_path_factory.mktemp(family.replace("-", "_")) / "ckpt")
    return load_model(path, dtype="float32", device="cpu")


@pytest.fixture(scope="module", params=SPEECH_FAMILIES)
def tiny(request, tmp_path_factory):
    return _tiny(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def recorded(tiny):
    batch, acts = _record_all(tiny)
    return tiny, batch, acts


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return _tiny("qwen2-audio", tmp_path_factory)


def _record_all(adapter, waves=None, positions_of=None):
    waves = waves or _waves()
    batch = adapter.prepare(waves, ["Listen to the audio and answer."] * len(waves))
    names = ["embed"] + [str(i) for i in range(adapter.n_layers)]
    acts = record(adapter, batch, names, return_logits=True)
    return batch, acts


def _manual_norm(norm, h, stats_from):
    """The final norm computed by hand, with statistics taken from `stats_from`."""
    name = type(norm).__name__
    h, src = h.double(), stats_from.double()
    if "RMSNorm" in name:
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        return h * torch.rsqrt(src.pow(2).mean(-1, keepdim=True) + eps) * norm.weight.double()
    if isinstance(norm, torch.nn.LayerNorm):
        mu, var = src.mean(-1, keepdim=True), src.var(-1, unbiased=False, keepdim=True)
        return (h - mu) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()
    pytest.skip(f"no hand-written reference for norm class {name}")


# ---- the lens is the model's own head -------------------------------------------------------


def test_last_layer_lens_equals_model_logits(recorded):
    tiny, batch, acts = recorded
    last = str(tiny.n_layers - 1)
    lens = lens_logits(tiny, acts[last]).float()
    logits = acts["logits"].float()
    assert lens.shape == logits.shape
    real = batch.attention_mask.bool()
    assert torch.equal(lens.argmax(-1)[real], logits.argmax(-1)[real])
    torch.testing.assert_close(lens[real], logits[real], atol=1e-4, rtol=1e-4)
    assert any(len(span.positions) for span in batch.audio)  # audio sits in the decoder residual


def test_layer_lens_uses_that_layers_norm_statistics(recorded):
    tiny, batch, acts = recorded
    mid, last = acts[str(tiny.n_layers // 2)].float(), acts[str(tiny.n_layers - 1)].float()
    norm, unembed = tiny.final_norm, tiny.unembed
    own = lens_logits(tiny, mid).double()
    with torch.no_grad():
        manual = _manual_norm(norm, mid, mid) @ unembed.weight.double().T
        stale = _manual_norm(norm, mid, last) @ unembed.weight.double().T  # TransformerLens #1076
        if unembed.bias is not None:
            manual, stale = manual + unembed.bias.double(), stale + unembed.bias.double()
    real = batch.attention_mask.bool()
    torch.testing.assert_close(own[real], manual[real], atol=1e-4, rtol=1e-4)
    assert (own[real] - stale[real]).abs().max() > 1e-2


def test_whisper_decoder_side_lens(tmp_path_factory):
    if "whisper" not in family_names():
        pytest.skip("whisper adapter not available")
    whisper = _tiny("whisper", tmp_path_factory)
    batch, acts = _record_all(whisper)
    assert all(len(span.positions) == 0 for span in batch.audio)  # no audio in the decoder stream
    lens = lens_logits(whisper, acts[str(whisper.n_layers - 1)]).float()
    torch.testing.assert_close(lens, acts["logits"].float(), atol=1e-4, rtol=1e-4)
    with pytest.raises(InterpError, match="use --positions all"):
        lens_live(whisper, _rows(tmp_path_factory.mktemp("wav")), positions="audio")


# ---- live and stored ------------------------------------------------------------------------


def _rows(folder, n: int = 3):
    rows = []
    for i in range(n):
        t = np.arange(int((0.5 + 0.2 * i) * SR)) / SR
        path = folder / f"a{i}.wav"
        write_wav(path, 0.2 * np.sin(2 * np.pi * (150 + 50 * i) * t), SR)
        rows.append({"id": f"u{i}", "audio": str(path), "transcript": "the team won the match", "label": "sports"})
    return rows


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return _rows(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def live(qwen, rows):
    return lens_live(qwen, rows, layers="all", top_k=3, batch_size=2)


def test_live_lens_top1_is_the_models_argmax_at_audio_positions(qwen, rows, live):
    from interp.audio import load_audio

    result = live
    last = str(qwen.n_layers - 1)
    assert result.layers == ["embed"] + [str(i) for i in range(qwen.n_layers)] and len(result.items) == 3
    batch, acts = _record_all(qwen, [load_audio(r["audio"]) for r in rows])
    for i, item in enumerate(result.items):
        span = batch.audio[i].positions
        assert item.is_audio.all() and len(item.index) == len(span)
        np.testing.assert_array_equal(item.top_ids[last][:, 0], acts["logits"][i, span].argmax(-1).numpy())
        assert item.top_ids[last].shape == (len(span), 3)
        assert np.all(np.diff(item.top_probs[last], axis=1) <= 0) and np.all(item.top_probs[last] <= 1)
        assert item.precision[last] is not None


def test_store_lens_matches_live_lens(qwen, rows, live, tmp_path):
    store_path = tmp_path / "acts.h5"
    trace(qwen, rows, store_path, layers="all", positions="audio", dtype="float32", batch_size=2)
    stored = lens_store(qwen, store_path, layers="all", top_k=3)
    assert stored.layers == live.layers and stored.source == str(store_path) and live.source == "live"
    for a, b in zip(live.items, stored.items):
        assert a.id == b.id
        np.testing.assert_array_equal(a.index, b.index)
        for layer in live.layers:
            np.testing.assert_array_equal(a.top_ids[layer], b.top_ids[layer])
            np.testing.assert_allclose(a.top_probs[layer], b.top_probs[layer], atol=1e-5)
            assert a.text[layer] == b.text[layer]
    assert stored.precision == live.precision


def test_store_from_another_model_is_refused(qwen, tmp_path):
    items = [{"id": "x", "row": {"id": "x"}, "resid": {"0": np.zeros((3, qwen.d_model))}}]
    path = make_store(tmp_path / "other.h5", items, ["0"], qwen.d_model, {"model_fingerprint": "0123456789abcdef"})
    with pytest.raises(InterpError, match="made by another model"):
        lens_store(qwen, path)
    pooled = make_store(tmp_path / "pooled.h5", items, ["0"], qwen.d_model,
                        {"model_fingerprint": qwen.fingerprint(), "positions": "audio-mean"})
    with pytest.raises(InterpError, match="pooled states"):
        lens_store(qwen, pooled)


# ---- bag of tokens and lens text --------------------------------------------------------------


def test_bag_of_tokens_precision_and_recall(qwen):
    tok = qwen.tokenizer
    forms = TokenForms(tok)
    ids = {w: tok(" " + w, add_special_tokens=False)["input_ids"] for w in ("match", "won", "bank")}
    assert all(len(v) == 1 for v in ids.values()), ids  # whole words in the tiny BPE
    match, won, bank = ids["match"][0], ids["won"][0], ids["bank"][0]
    special = tok.convert_tokens_to_ids("<|AUDIO|>")
    transcript = "The team won the match"
    t_forms = forms.transcript_forms(transcript)
    assert {"the", "won", "match"} <= t_forms
    precision, recall = bag_of_tokens([match, match, won, bank, special, bank], transcript, forms)
    assert precision == pytest.approx(2 / 3)  # distinct {match, won, bank}; the special token is not counted
    assert recall == pytest.approx(2 / len(t_forms))
    assert bag_of_tokens([special], transcript, forms)[0] is None
    assert forms.lens_text([match, match, won, won, match, special]) == "match won match"


def test_emit_manifest_keeps_fields(qwen, rows, live, tmp_path):
    from interp.manifest import read_manifest

    result = live
    layer = result.layers[-1]
    path = emit_manifest(result, layer, tmp_path / "out" / "implicit.jsonl")
    emitted = read_manifest(path)
    for row, item, src in zip(emitted, result.items, rows):
        assert row["transcript"] == item.text[layer]
        assert row["transcript_reference"] == src["transcript"] and row["label"] == src["label"]
        assert row["audio"] == src["audio"] and row["lens_layer"] == layer
    with pytest.raises(InterpError, match="not among the lens layers"):
        emit_manifest(result, "99", tmp_path / "x.jsonl")


# ---- CLI --------------------------------------------------------------------------------------


def test_cli_lens_live_writes_lens_plots_and_manifest(qwen, rows, tmp_path, run_cli):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, plot, emitted = tmp_path / "lens.jsonl", tmp_path / "lens.png", tmp_path / "implicit.jsonl"
    code, stdout, err = run_cli("lens", qwen.path, "--data", manifest, "--layers", "0", "--top-k", "2",
                             "--device", "cpu", "--out", out, "--plot", plot, "--emit-text", "-1",
                             "--emit-manifest", emitted)
    assert code == 0, err
    last = str(qwen.n_layers - 1)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {(r["id"], r["layer"]) for r in lines} == {(r["id"], layer) for r in rows for layer in ("0", last)}
    assert all(len(r["top_tokens"][0]) == 2 for r in lines)
    for p in (plot, tmp_path / "lens_precision.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = {r["id"]: r["text"] for r in lines if r["layer"] == last}
    assert {r["id"]: r["transcript"] for r in map(json.loads, emitted.read_text().splitlines())} == texts
    assert "precision" in stdout


@pytest.mark.parametrize("case", ["other_model", "missing_layer"])
def test_cli_lens_bad_input_one_line(qwen, tmp_path, run_cli, case):
    d = qwen.d_model
    items = [{"id": "x", "row": {"id": "x", "transcript": "a"}, "resid": {"0": np.zeros((3, d)), "1": np.zeros((3, d))}}]
    if case == "other_model":
        store = make_store(tmp_path / "s.h5", items, ["0", "1"], d, {"model_fingerprint": "feedfacefeedface"})
        args, expected = [], "was made by another model"
    else:
        store = make_store(tmp_path / "s.h5", items, ["0", "1"], d,
                           {"model_fingerprint": qwen.fingerprint(), "n_model_layers": qwen.n_layers})
        args, expected = ["--layers", "0,3"], "layer(s) 3 not in the store"
    code, out, err = run_cli("lens", qwen.path, "--store", store, "--device", "cpu",
                          "--out", tmp_path / "l.jsonl", *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code != 0 and "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
    assert not (tmp_path / "l.jsonl").exists()
