"""What a store hands other tools: the batch that produced it, TransformerLens-shaped caches
(checked against TransformerLens' own bridge) and SAELens' cached-activation datasets (checked
by training a SAELens SAE on one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.manifest import read_manifest
from interp.store import ActivationStore
from interp.trace import record, trace


@pytest.fixture(scope="module")
def traced(tiny_adapter, tmp_path_factory):
    """The tiny Qwen2-Audio traced over three items (every position, float32), with task prompts."""
    from tasks import speech_prompt
    from tests.conftest import write_tones

    adapter = tiny_adapter("qwen2-audio")
    folder = tmp_path_factory.mktemp("exports")
    rows = read_manifest(write_tones(folder / "audio", 3, min_s=0.5, max_s=1.4))
    trace(adapter, rows, folder / "acts.h5", layers="all", positions="all", dtype="float32", batch_size=2,
          prompt=speech_prompt)
    return adapter, rows, folder / "acts.h5"


def test_the_store_rebuilds_the_batch_that_produced_it(traced):
    from tasks import speech_prompt

    adapter, rows, path = traced
    with ActivationStore(path) as store:
        assert list(store.items["instruction"]) == [speech_prompt(r) for r in rows]
        batch = store.batch(adapter, [2, 0])
        acts = record(adapter, batch, ["embed", "1", "3"])
        for b, item in enumerate((2, 0)):
            real = batch.attention_mask[b].bool()
            for layer in ("embed", "1", "3"):
                torch.testing.assert_close(acts[layer][b][real], store.read(layer, items=[item], torch=True),
                                           rtol=1e-5, atol=1e-5)


def test_the_transformer_lens_cache_is_the_bridges(traced):
    """Values, not only names: the bridge's run_with_cache on each item's rebuilt inputs gives the
    cache's tensors at its masked positions, for the embeddings and every block."""
    from transformer_lens.model_bridge import TransformerBridge

    adapter, rows, path = traced
    bridge = TransformerBridge.boot_transformers(adapter.path, device="cpu", tokenizer=adapter.tokenizer)
    with ActivationStore(path) as store:
        cache = store.to_transformer_lens(layers="all")
        assert cache["blocks.3.hook_resid_post"].shape[:2] == cache.mask.shape == (3, int(store.items["n_positions"].max()))
        for item in range(3):
            inputs = dict(store.batch(adapter, [item]).inputs)
            _, theirs = bridge.run_with_cache(inputs.pop("input_ids"), **inputs)
            n = int(cache.mask[item].sum())
            assert n == theirs["blocks.0.hook_resid_pre"].shape[1]
            for name in ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(adapter.n_layers)]:
                # the bridge runs eager attention, ours SDPA: equal up to kernel reordering
                torch.testing.assert_close(cache[name][item, :n], theirs[name][0], rtol=1e-4, atol=1e-4)
            assert not cache["blocks.1.hook_resid_post"][item, n:].any()


def test_a_saelens_sae_trains_on_the_exported_dataset(traced, tmp_path):
    from sae_lens import ActivationsStore, LanguageModelSAERunnerConfig, LoggingConfig, SAETrainer
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    adapter, _, path = traced
    out, ctx = tmp_path / "blocks2", 16
    with ActivationStore(path) as store:
        summary = store.to_hf_dataset(2, out, context_size=ctx)
        rows = store.rows()
        x = store.read(2, rows=rows[: summary.n_positions])
        assert summary.hook_name == "blocks.2.hook_resid_post" and summary.n_positions + summary.n_left_out == len(rows)
        with pytest.raises(InterpError, match="not empty"):
            store.to_hf_dataset(2, out, context_size=ctx)
        with pytest.raises(InterpError, match="fewer than one context"):
            store.to_hf_dataset(2, tmp_path / "x", context_size=10_000)
    d, n = adapter.d_model, summary.n_contexts
    # SAELens' own reader: what it loads is the store's rows, in order
    acts = ActivationsStore(model=None, dataset=None, streaming=False, hook_name=summary.hook_name, hook_head_index=None,
                            context_size=ctx, d_in=d, n_batches_in_buffer=8, total_training_tokens=n * ctx,
                            store_batch_size_prompts=2, train_batch_size_tokens=16, prepend_bos=False,
                            normalize_activations="none", device=torch.device("cpu"), dtype="float32",
                            cached_activations_path=str(out), model_kwargs=None, autocast_lm=False,
                            dataset_trust_remote_code=None, seqpos_slice=(None,), exclude_special_tokens=None)
    loaded = acts.cached_activation_dataset[:][summary.hook_name].reshape(-1, d)
    np.testing.assert_array_equal(loaded.numpy(), x)
    # and a SAELens SAE trains on it: the reconstruction of the store's rows improves
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=d, d_sae=2 * d, l1_coefficient=1e-3), hook_name=summary.hook_name,
        dataset_path=str(out), use_cached_activations=True, cached_activations_path=str(out), context_size=ctx,
        training_tokens=20 * 16, train_batch_size_tokens=16, store_batch_size_prompts=2, n_batches_in_buffer=8,
        device="cpu", lr=1e-2, logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0)
    torch.manual_seed(0)
    sae = StandardTrainingSAE(cfg.sae)
    rows_t = torch.from_numpy(x)
    before = float(((sae.decode(sae.encode(rows_t)) - rows_t) ** 2).mean())
    trainer = SAETrainer(cfg=cfg.to_sae_trainer_config(), sae=sae, data_provider=acts)
    trainer.fit()
    after = float(((sae.decode(sae.encode(rows_t)) - rows_t) ** 2).mean())
    assert trainer.n_training_steps == 20 and after < 0.8 * before
