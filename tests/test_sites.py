"""Interventions at named sites (interp.sites), on explicit generation steps, bound without
changing what the caller gave."""

from __future__ import annotations

import pytest
import torch

from interp.audio import load_audio
from interp.errors import InterpError
from interp.forward import run
from interp.interventions import Patch, Record, Steer, Zero
from interp.manifest import read_manifest
from interp.sites import resolve_site
from tests.helpers import captured

GEN = dict(max_new_tokens=3, min_new_tokens=3)


@pytest.fixture(scope="module")
def padded(tiny_adapter, tmp_path_factory):
    from tests.conftest import write_tones

    adapter = tiny_adapter("qwen2-audio")
    rows = read_manifest(write_tones(tmp_path_factory.mktemp("sites"), 2, min_s=0.5, max_s=1.5))
    batch = adapter.prepare([load_audio(r["audio"]) for r in rows], ["Hi", "What is said?"], padding_side="left")
    return adapter, batch


def _recorded(adapter, batch, sites, interventions=()):
    rec = Record(sites=sites, positions="all")
    run(adapter, batch, [*interventions, rec])
    return {key: entries[0][2] for key, entries in rec.saved.items()}


def test_block_sites_are_the_modules_inputs_and_outputs(padded):
    """Each decoder site equals what plain torch hooks see on the module it names, and a block's
    output is its input plus what its attention and MLP add."""
    adapter, batch = padded
    names = [f"blocks.1.{p}" for p in ("hook_resid_pre", "attn.hook_out", "mlp.hook_out", "hook_resid_post")]
    seen = _recorded(adapter, batch, names)
    block = adapter.layers[1]
    with captured({"attn": block.self_attn, "mlp": block.mlp, "post": block}, {"pre": block}) as hooked, torch.no_grad():
        adapter.model(**batch.inputs)
    real = batch.attention_mask.bool()
    for name, key in zip(names, ("pre", "attn", "mlp", "post")):
        key_of = 1 if name.endswith("hook_resid_post") else name
        torch.testing.assert_close(seen[key_of], hooked[key][real], rtol=1e-5, atol=1e-5)
    pre, attn, mlp, post = (seen[n if not n.endswith("post") else 1] for n in names)
    torch.testing.assert_close(post, pre + attn + mlp, rtol=1e-4, atol=1e-4)
    # block 1's input is block 0's output
    torch.testing.assert_close(_recorded(adapter, batch, ["blocks.0.hook_resid_post"])[0], pre, rtol=0, atol=0)


def test_zeroing_the_mlp_output_removes_its_contribution(padded):
    adapter, batch = padded
    names = ["blocks.2.hook_resid_pre", "blocks.2.attn.hook_out", "blocks.2.hook_resid_post"]
    seen = _recorded(adapter, batch, names, [Zero(sites=["blocks.2.mlp.hook_out"], positions="all")])
    torch.testing.assert_close(seen[2], seen[names[0]] + seen[names[1]], rtol=1e-5, atol=1e-5)


def test_audio_encoder_and_projector_sites(padded):
    adapter, batch = padded
    tower = adapter.module("model.audio_tower")
    seen = _recorded(adapter, batch, ["audio_encoder.blocks.-1", "projector.hook_out"])
    with captured({"enc": tower.layers[-1], "proj": adapter.module(adapter.projector_path)}) as hooked, torch.no_grad():
        adapter.model(**batch.inputs)
    last = f"audio_encoder.blocks.{len(tower.layers) - 1}"
    torch.testing.assert_close(seen[last], hooked["enc"].reshape(-1, hooked["enc"].shape[-1]), rtol=0, atol=0)
    torch.testing.assert_close(seen["projector.hook_out"], hooked["proj"].reshape(-1, hooked["proj"].shape[-1]),
                               rtol=0, atol=0)
    # steering the projector's output moves the audio positions of the decoder's input, and only them
    shift = torch.ones(adapter.d_model)
    plain = _recorded(adapter, batch, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"]
    moved = _recorded(adapter, batch, ["blocks.0.hook_resid_pre"],
                      [Steer(sites=["projector.hook_out"], positions="all", vector=shift)])["blocks.0.hook_resid_pre"]
    from interp.interventions import position_masks

    audio = position_masks(batch, 0, batch.token_ids.shape[1])["audio"][batch.attention_mask.bool()]
    torch.testing.assert_close(moved[audio] - plain[audio], shift.expand(int(audio.sum()), -1), rtol=1e-4, atol=1e-4)
    assert torch.equal(moved[~audio], plain[~audio])


def test_steps_are_explicit(padded):
    adapter, batch = padded
    per_step = {}
    for steps in ("prompt", "generated", [0, 2]):
        rec = Record(layers=[1], positions="all")
        run(adapter, batch, [Zero(layers=[1], positions="all", steps=steps), rec], generate=True, **GEN)
        per_step[str(steps)] = {step: bool((rows == 0).all()) for step, _, rows in rec.saved[1]}
    assert per_step["prompt"] == {0: True, 1: False, 2: False}
    assert per_step["generated"] == {0: False, 1: True, 2: True}
    assert per_step["[0, 2]"] == {0: True, 1: False, 2: True}


def test_patch_with_a_tensor_acts_on_the_prompt_and_says_so(padded):
    adapter, batch = padded
    source = {1: torch.zeros(*batch.token_ids.shape, adapter.d_model)}
    assert Patch(layers=[1], positions="all", source=source).steps == "prompt"
    rec = Record(layers=[1], positions="all")
    run(adapter, batch, [Patch(layers=[1], positions="all", source=source), rec], generate=True, **GEN)
    assert [bool((rows == 0).all()) for _, _, rows in rec.saved[1]] == [True, False, False]
    with pytest.raises(InterpError, match="cannot apply to generated steps"):
        run(adapter, batch, [Patch(layers=[1], source=source, steps="all")], generate=True, **GEN)


def test_binding_resolves_a_copy_and_bad_sites_are_one_line(padded, tiny_adapter):
    adapter, batch = padded
    given = Zero(layers=[-1], sites=["blocks.-2.mlp.hook_out"], positions="all")
    run(adapter, batch, [given])
    assert given.layers == (-1,) and given.bound == ()  # the caller's intervention is as it was
    bound = given.bind(adapter)
    n = adapter.n_layers
    assert bound.layers == (n - 1,) and [s.name for s in bound.bound] == [f"blocks.{n - 2}.mlp.hook_out",
                                                                          f"blocks.{n - 1}.hook_resid_post"]
    with pytest.raises(InterpError, match="unknown site 'blocks.1.ffn'"):
        run(adapter, batch, [Zero(sites=["blocks.1.ffn"])])
    with pytest.raises(InterpError, match="out of range"):
        run(adapter, batch, [Zero(sites=[f"blocks.{n}.attn.hook_out"])])
    with pytest.raises(InterpError, match="frames"):
        run(adapter, batch, [Zero(sites=["audio_encoder.blocks.0"], positions="audio")])
    whisper = tiny_adapter("whisper")
    assert resolve_site(whisper, "blocks.0.mlp.hook_out").module == "model.decoder.layers.0.fc2"
    with pytest.raises(InterpError, match="no audio projector"):
        resolve_site(whisper, "projector.hook_out")
