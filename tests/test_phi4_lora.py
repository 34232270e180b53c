"""Phi-4-multimodal's speech LoRA, applied without peft, against peft's own LoRA on a tiny
checkpoint of the real class: the adapter is written by peft's `save_pretrained` (and in the
layout of transformers' conversion of the released checkpoint, `refs/pr/70`), the reference
forward is peft's `LoraModel`. Also: the LoRA is off for the text backbone, missing/unexpected
tensors and an all-zero adapter are refused, and the remote-code layout is named with its fix."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.models import detect_family
from interp.models.phi4_multimodal import Phi4Multimodal

peft = pytest.importorskip("peft")

# The target modules of the released speech LoRA (transformers' conversion script).
TARGETS = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"


def _waves():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(20000)).astype(np.float32)]


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_model_dir, tmp_path_factory):
    """A tiny Phi-4-MM folder with a speech-lora/ written by peft, and the PeftModel that wrote it."""
    from transformers import Phi4MultimodalForCausalLM

    base = tiny_model_dir("phi4-mm")
    out = Path(shutil.copytree(base, tmp_path_factory.mktemp("phi4-lora") / "ckpt"))
    torch.manual_seed(1)
    model = Phi4MultimodalForCausalLM.from_pretrained(str(base)).eval()
    # init_lora_weights=False: B is random too, so the adapter changes the model.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.01, task_type="CAUSAL_LM",
                             init_lora_weights=False)
    reference = peft.get_peft_model(model, config, adapter_name="speech").eval()
    staging = out.parent / "staging"
    reference.save_pretrained(str(staging))
    shutil.move(str(staging / "speech"), str(out / "speech-lora"))
    return out, reference


def _hidden_states(model, batch):
    with torch.no_grad():
        return model(**batch.inputs, output_hidden_states=True).hidden_states


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Phi4Multimodal.load(path)


@pytest.mark.parametrize("layout", ["peft", "converted"])
def test_speech_lora_equals_peft(lora_checkpoint, tmp_path, layout):
    path, reference = lora_checkpoint
    if layout == "converted":
        # transformers' conversion of the released checkpoint saves `<module>.lora_A.weight`.
        from safetensors.torch import load_file, save_file

        path = Path(shutil.copytree(path, tmp_path / "converted"))
        f = path / "speech-lora" / "adapter_model.safetensors"
        tensors = load_file(str(f))
        save_file({k.removeprefix("base_model.model."): v for k, v in tensors.items()}, str(f))
    adapter = _load(path)
    assert adapter.speech_lora is not None and len(adapter.speech_lora.modules) == 4 * adapter.n_layers
    batch = adapter.prepare(_waves(), ["what is said?"])
    ours = _hidden_states(adapter.model, batch)
    theirs = _hidden_states(reference, batch)
    assert len(ours) == len(theirs) == adapter.n_layers + 1
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # The merge view of the same math: scale * B @ A equals peft's delta weight.
    name = "model.layers.2.mlp.gate_up_proj"
    peft_layer = reference.get_submodule(f"base_model.model.{name}")
    torch.testing.assert_close(adapter.speech_lora.modules[name].delta_weight(), peft_layer.get_delta_weight("speech"))
    with reference.disable_adapter():
        base = _hidden_states(reference, batch)
    assert (ours[-1] - base[-1]).abs().max() > 1e-2  # the adapter does change the model


def test_text_only_runs_the_base_decoder(lora_checkpoint, tiny_model_dir):
    path, _ = lora_checkpoint
    adapter = _load(path)
    plain = _load(tiny_model_dir("phi4-mm"))  # the same weights, no speech-lora/ folder
    ids = adapter.tokenizer(["<|user|>hello there<|end|><|assistant|>"], return_tensors="pt")
    with torch.no_grad():
        with adapter.text_only():
            off = adapter.model(**ids).logits
        on = adapter.model(**ids).logits
        base = plain.model(**ids).logits
    assert torch.equal(off, base)
    assert not torch.allclose(on, base, atol=1e-3)
    assert adapter.speech_lora.enabled


def _edit_adapter(path: Path, tmp_path: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    new = Path(shutil.copytree(path, tmp_path / "edited"))
    f = new / "speech-lora" / "adapter_model.safetensors"
    tensors = load_file(str(f))
    save_file(edit(tensors), str(f))
    return new


def test_missing_lora_weights_are_reported(lora_checkpoint, tmp_path):
    path, _ = lora_checkpoint
    drop = "base_model.model.model.layers.1.self_attn.o_proj"
    new = _edit_adapter(path, tmp_path, lambda t: {k: v for k, v in t.items() if not k.startswith(drop)})
    with pytest.raises(InterpError, match=r"1 targeted layer\(s\) have no LoRA weights, e.g. model.layers.1.self_attn.o_proj"):
        _load(new)


def test_unexpected_lora_weights_are_reported(lora_checkpoint, tmp_path):
    path, _ = lora_checkpoint
    extra = {"base_model.model.model.embed_tokens_extend.audio_embed.up_proj_for_speech.lora_A.weight": torch.ones(4, 4)}
    new = _edit_adapter(path, tmp_path, lambda t: t | extra)
    with pytest.raises(InterpError, match="1 unexpected tensor.*up_proj_for_speech"):
        _load(new)


def test_zero_lora_is_refused(lora_checkpoint, tmp_path):
    path, _ = lora_checkpoint
    new = _edit_adapter(path, tmp_path, lambda t: {k: (torch.zeros_like(v) if ".lora_B." in k else v)
                                                   for k, v in t.items()})
    with pytest.raises(InterpError, match="all zeros"):
        _load(new)


def test_unsupported_adapter_features_are_refused(lora_checkpoint, tmp_path):
    path, _ = lora_checkpoint
    new = Path(shutil.copytree(path, tmp_path / "dora"))
    cfg_file = new / "speech-lora" / "adapter_config.json"
    cfg_file.write_text(json.dumps(json.loads(cfg_file.read_text()) | {"use_dora": True}))
    with pytest.raises(InterpError, match="use_dora"):
        _load(new)


def test_remote_code_layout_is_named_with_its_fix(tmp_path, run_cli, tones):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi4mm", "architectures": ["Phi4MMForCausalLM"]}))
    with pytest.raises(InterpError, match=r"remote-code .*phi4mm.*--revision refs/pr/70") as err:
        detect_family(tmp_path)
    assert "\n" not in str(err.value)
    code, out, errtext = run_cli("trace", str(tmp_path), "--data", str(tones(1)), "--out", str(tmp_path / "a.h5"))
    assert code != 0 and "refs/pr/70" in (out + errtext) and "Traceback" not in (out + errtext)
