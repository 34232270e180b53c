"""Interventions through `interp.run`: no-ops are exact, edits land where and when they say."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from interp.audio import load_audio
from interp.errors import InterpError
from interp.analysis.leace import Eraser, LayerEraser
from interp.interventions import (Ablate, Edit, Erase, MeanAblate, Record, Steer, StepContext, Zero,
                                  position_masks)
from interp.manifest import read_manifest
from interp.forward import run

GEN = dict(max_new_tokens=5, min_new_tokens=5)  # min: no early stop, so every item takes every step


@pytest.fixture(scope="module")
def padded(tiny_adapter, tmp_path_factory):
    """The tiny Qwen2-Audio and a left-padded batch of three items of different lengths."""
    from tests.conftest import write_tones

    adapter = tiny_adapter("qwen2-audio")
    rows = read_manifest(write_tones(tmp_path_factory.mktemp("iv"), 3, min_s=0.4, max_s=2.0))
    batch = adapter.prepare([load_audio(r["audio"]) for r in rows], ["Hi", "What is said here?", "Topic?"],
                            padding_side="left")
    assert len({len(s.positions) for s in batch.audio}) == 3 and not batch.attention_mask.all()
    return adapter, batch


def _subspace_eraser(adapter, layers, rank=3, seed=0) -> Eraser:
    """An orthogonal eraser (no bias) of a random rank-`rank` subspace: erased rows have Q^T x = 0."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(adapter.d_model, rank, generator=g, dtype=torch.float64)).Q
    return Eraser({l: LayerEraser(q, q.T.clone()) for l in layers}, "planted", adapter.fingerprint(), adapter.family,
                  adapter.d_model)


def _plain_generate(adapter, batch, **kw):
    tok = adapter.tokenizer
    with torch.no_grad():
        return adapter.model.generate(**batch.inputs, do_sample=False, pad_token_id=tok.pad_token_id, **kw)


def test_empty_list_and_noop_interventions_are_bit_identical(padded):
    adapter, batch = padded
    with torch.no_grad():
        plain_logits = adapter.model(**batch.inputs).logits
    plain_seq = _plain_generate(adapter, batch, **GEN)
    assert torch.equal(run(adapter, batch).logits, plain_logits)
    assert torch.equal(run(adapter, batch, []).logits, plain_logits)
    assert torch.equal(run(adapter, batch, [], generate=True, **GEN).sequences, plain_seq)
    # the traced path (nnsight, every step) with interventions that change nothing
    noop = [Record(layers=[0, 2], positions="all"), Edit(layers=[1], positions="audio", fn=lambda rows, layer: rows)]
    assert torch.equal(run(adapter, batch, noop).logits, plain_logits)
    assert torch.equal(run(adapter, batch, noop, generate=True, **GEN).sequences, plain_seq)


def test_identity_eraser_is_bit_identical(padded):
    adapter, batch = padded
    identity = Eraser.identity(adapter, range(adapter.n_layers))
    with torch.no_grad():
        plain_logits = adapter.model(**batch.inputs).logits
    plain_seq = _plain_generate(adapter, batch, **GEN)
    result = run(adapter, batch, [Erase(identity)])
    assert torch.equal(result.logits, plain_logits)
    gen = run(adapter, batch, [Erase(identity)], generate=True, **GEN)
    assert torch.equal(gen.sequences, plain_seq)
    assert torch.equal(gen.new_tokens, plain_seq[:, batch.token_ids.shape[1]:])
    # and a real eraser does change the answer's logits (the comparison can fail)
    assert not torch.equal(run(adapter, batch, [Erase(_subspace_eraser(adapter, [1]))]).logits, plain_logits)


def test_interp_run_is_the_package_entry_point(padded):
    import interp

    adapter, batch = padded
    eraser = _subspace_eraser(adapter, [1, 2])
    rec = Record(layers=[2], positions="audio")
    result = interp.run(adapter, batch, interventions=[Erase(eraser, layers=[1, 2]), rec])
    assert result.logits.shape[:2] == batch.token_ids.shape
    assert rec.saved[2][0][2].shape == (sum(len(s.positions) for s in batch.audio), adapter.d_model)


CALLS: dict[tuple[int, int], int] = {}  #: (step, layer) -> rows CountingErase edited


class CountingErase(Erase):
    """Erase that counts its edits per (step, layer) and rows edited, in CALLS (the run applies
    a bound copy of an intervention, never the object given)."""

    def edit(self, rows, layer, ctx):
        CALLS[(ctx.step, layer)] = CALLS.get((ctx.step, layer), 0) + len(rows)
        return super().edit(rows, layer, ctx)


def _projections(rec: Record, q: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    """(layer, step) -> |Q^T x| of each recorded row."""
    return {(layer, step): (rows.double() @ q).abs() for layer, entries in rec.saved.items() for step, _, rows in entries}


def test_erasure_acts_on_every_generation_step_at_several_layers(padded):
    adapter, batch = padded
    layers = [1, 3]
    eraser = _subspace_eraser(adapter, layers)
    q = eraser.layer_erasers[1].proj_left
    n_real = int(batch.attention_mask.sum())
    steps = GEN["max_new_tokens"]  # one forward per new token: the prompt, then steps - 1 more

    erase = CountingErase(eraser, layers=layers)
    after = Record(layers=[1, 2, 3], positions="all")  # listed after Erase: sees the erased residual
    CALLS.clear()
    result = run(adapter, batch, [erase, after], generate=True, **GEN)
    assert result.new_tokens.shape == (len(batch), steps)
    assert CALLS == {(s, l): (n_real if s == 0 else len(batch)) for s in range(steps) for l in layers}
    proj = _projections(after, q)
    assert sorted({s for _, s in proj}) == list(range(steps))
    for (layer, step), p in proj.items():
        scale = after.saved[layer][0][2].abs().max()
        if layer in layers:
            assert p.max() < 1e-5 * scale, (layer, step)  # gone at every step, prompt and generated tokens
        else:
            assert p.max() > 1e-2 * scale, (layer, step)  # an un-erased layer between re-writes it

    # control: without the eraser the subspace is occupied at every step
    plain = Record(layers=layers, positions="all")
    run(adapter, batch, [plain], generate=True, **GEN)
    for (layer, step), p in _projections(plain, q).items():
        assert p.max() > 1e-2 * plain.saved[layer][0][2].abs().max(), (layer, step)


def test_audio_positions_only_in_left_padded_batch(padded):
    adapter, batch = padded
    eraser = _subspace_eraser(adapter, [2])
    q = eraser.layer_erasers[2].proj_left
    plain, erased = Record(layers=[2], positions="all"), Record(layers=[2], positions="all")
    plain_logits = run(adapter, batch, [plain]).logits
    logits = run(adapter, batch, [Erase(eraser, layers=[2], positions="audio"), erased]).logits
    (_, mask, before), (_, _, after) = plain.saved[2][0], erased.saved[2][0]
    audio = position_masks(batch, 0, mask.shape[1])["audio"][mask]
    assert audio.sum() == sum(len(s.positions) for s in batch.audio)
    assert torch.equal(after[~audio], before[~audio])  # text rows untouched, bit for bit
    assert not torch.allclose(after[audio], before[audio])
    assert (after[audio].double() @ q).abs().max() < 1e-5 * after.abs().max()
    # causal attention: every position before an item's first audio position is unchanged downstream too
    for i, span in enumerate(batch.audio):
        first = int(span.positions.min())
        assert torch.equal(logits[i, :first], plain_logits[i, :first])
        assert not torch.equal(logits[i, first:], plain_logits[i, first:])


def test_masks_and_apply_touch_exactly_the_selected_positions(padded):
    adapter, batch = padded
    seq = batch.token_ids.shape[1]
    ctx = StepContext(0, position_masks(batch, 0, seq))
    real = batch.attention_mask.bool()
    hidden = torch.randn(len(batch), seq, adapter.d_model)
    out = Zero(layers=[0], positions="audio").apply(hidden, 0, ctx)
    changed = (out != hidden).any(-1)
    for i, span in enumerate(batch.audio):
        expect = torch.zeros(seq, dtype=torch.bool)
        expect[torch.as_tensor(span.positions)] = True
        assert torch.equal(changed[i], expect)
        assert not changed[i][~real[i]].any()  # padding never touched
    # explicit indices count within each item's unpadded prompt
    m = Zero(layers=[0], positions=[0, -1]).mask(ctx, (len(batch), seq))
    for i in range(len(batch)):
        cols = torch.nonzero(real[i]).flatten()
        assert torch.nonzero(m[i]).flatten().tolist() == [int(cols[0]), int(cols[-1])]
    # during generation, steps after the prompt select the one new position per item
    gen = StepContext(3, position_masks(batch, 3, 1))
    assert gen.masks["generated"].all() and not gen.masks["audio"].any()


def test_checks_refuse_bad_layers_widths_and_models(padded):
    adapter, batch = padded
    with pytest.raises(InterpError, match="out of range"):
        run(adapter, batch, [Zero(layers=[adapter.n_layers])])
    with pytest.raises(InterpError, match="width"):
        run(adapter, batch, [Steer(layers=[0], vector=torch.ones(adapter.d_model + 1))])
    with pytest.raises(InterpError, match="nothing for layer"):
        run(adapter, batch, [MeanAblate(layers=[0, 1], means={0: torch.zeros(adapter.d_model)})])
    # negative layers resolve, in the intervention and in its per-layer table
    given = MeanAblate(layers=[-1], means={-1: torch.zeros(adapter.d_model)})
    bound = given.check(adapter)
    last = adapter.n_layers - 1
    assert bound.layers == (last,) and set(bound.means) == {last} and given.layers == (-1,)
    eraser = _subspace_eraser(adapter, [1])
    with pytest.raises(InterpError, match="has no layer 2"):
        run(adapter, batch, [Erase(eraser, layers=[2])])
    with pytest.raises(InterpError, match="another model"):
        run(adapter, batch, [Erase(replace(eraser, model_fingerprint="0123456789abcdef"))])
    narrow = Eraser({1: LayerEraser(torch.zeros(8, 1, dtype=torch.float64), torch.zeros(1, 8, dtype=torch.float64))},
                    "planted", adapter.fingerprint(), adapter.family, 8)
    with pytest.raises(InterpError, match="width 8"):
        run(adapter, batch, [Erase(narrow)])


def test_random_ablation_is_the_random_control_of_the_same_seed(padded):
    """One random-subspace control: `Ablate(rank=k, seed=s)` removes exactly the subspace that
    `random_control(eraser, seed=s)` erases at a layer where the eraser has rank k, and a run
    with either leaves the same residual; another seed is another subspace."""
    from interp.analysis.leace import random_control

    adapter, batch = padded
    eraser = random_control(_subspace_eraser(adapter, [1, 2], rank=4), seed=3)
    ablate = Ablate(layers=[1, 2], rank=4, seed=3, positions="all")
    other = Ablate(layers=[1, 2], rank=4, seed=4, positions="all").bind(adapter)
    bound = ablate.bind(adapter)
    assert ablate.bases == {} and bound.bases  # binding resolves a copy; the intervention given is unchanged
    ablate = bound
    for layer in (1, 2):
        q = eraser.layer_erasers[layer].proj_left
        torch.testing.assert_close(ablate.basis(layer), q, rtol=0, atol=0)
        assert (ablate.basis(layer).T @ other.basis(layer)).abs().max() < 0.9  # not the same subspace
    assert not torch.allclose(ablate.basis(1), ablate.basis(2))  # a subspace of its own per layer
    by_ablate, by_erase = Record(layers=[3], positions="all"), Record(layers=[3], positions="all")
    run(adapter, batch, [ablate, by_ablate])
    run(adapter, batch, [Erase(eraser), by_erase])
    torch.testing.assert_close(by_ablate.saved[3][0][2], by_erase.saved[3][0][2], rtol=1e-4, atol=1e-5)
    # the residual after the ablation has nothing left in the subspace
    rec = Record(layers=[1], positions="all")
    run(adapter, batch, [ablate, rec])
    assert (rec.saved[1][0][2].double() @ ablate.basis(1)).abs().max() < 1e-4


def test_patch_from_store_restores_the_recorded_run(tiny_adapter, tmp_path):
    """Patching block 1 of a run on other audio with a stored run's block 1 makes every later
    block equal the stored run's; positions keep their place under left padding."""
    import numpy as np

    from interp.audio import write_wav
    from interp.interventions import Patch
    from interp.store import ActivationStore
    from interp.trace import trace

    adapter = tiny_adapter("qwen2-audio")
    rng = np.random.default_rng(3)
    rows, other = [], []
    for i, seconds in enumerate((0.8, 1.6)):
        for name, group in (("a", rows), ("b", other)):
            path = tmp_path / f"{name}{i}.wav"
            write_wav(path, (0.2 * rng.standard_normal(int(16000 * seconds))).astype(np.float32))
            group.append({"id": f"{name}{i}", "audio": str(path)})
    trace(adapter, rows, tmp_path / "a.h5", layers="all", positions="all", dtype="float32", batch_size=2, prompt="Hi")
    batch = adapter.prepare([load_audio(r["audio"]) for r in other], ["Hi", "Hi"], padding_side="left")
    with ActivationStore(tmp_path / "a.h5") as store:
        patch = Patch.from_store(store, batch, ["a0", "a1"], layers=[1], positions="all")
        rec = Record(layers=[3], positions="all")
        run(adapter, batch, [patch, rec])
        _, _, patched = rec.saved[3][0]
        torch.testing.assert_close(patched, store.read(3, rows=store.rows([0, 1]), torch=True), rtol=1e-4, atol=1e-4)
        with pytest.raises(InterpError, match="not in the store"):
            Patch.from_store(store, batch, ["a0", "zz"], layers=[1])
