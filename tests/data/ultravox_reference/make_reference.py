"""Make the Ultravox reference fixtures by running fixie-ai's own Ultravox code.

Run it in a separate environment with the transformers version the code was written for,
against your own checkout of fixie-ai/ultravox (no part of that code is kept here):

    git -C ultravox archive f4f643b ultravox | tar -x -C /tmp/uv-v0.5
    python make_reference.py --ultravox-src /tmp/uv-v0.5 --version v0.5 --out .   # transformers 4.48.3
    git -C ultravox archive 4ab3823 ultravox | tar -x -C /tmp/uv-v0.6
    python make_reference.py --ultravox-src /tmp/uv-v0.6 --version v0.6 --out .   # transformers 4.51.3

It writes, under --out:

- base/tiny-whisper, base/tiny-llama-3: the tiny base models the Ultravox configs name by hub
  id ("interp-tests/tiny-whisper", "interp-tests/tiny-llama-3"); made once (both versions
  share them) and served to the real code from a temporary Hugging Face cache.
- VERSION/checkpoint-*: checkpoint folders as the real code saves them (`save_pretrained`),
  then reloaded with the real code (`from_pretrained`) and checked to give the same hidden
  states. The `.py` files that `save_pretrained` copies into each folder are deleted.
- VERSION/reference.safetensors and VERSION/reference.json: the real processor's outputs and
  the real model's hidden states for the waveforms in waves.npz, one by one and as a padded
  batch made by the real collator; see README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

WHISPER_ID = "interp-tests/tiny-whisper"
LLAMA_ID = "interp-tests/tiny-llama-3"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
SR = 16000
EXPECTED_TRANSFORMERS = {"v0.5": "4.48.3", "v0.6": "4.51.3"}

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CORPUS = (
    "the team won the match in the final minute . stocks fell after the bank raised rates . "
    "a new phone chip doubles battery life . the president met leaders to discuss peace . "
    "this film is a delight from start to finish . the plot is dull and the acting is worse . "
    "what is said ? transcribe the audio . answer with one word . listen to the speaker . "
)
#: (instruction, which waveform) per reference item; the prompt is the adapter's: a user turn
#: holding the instruction, a blank line and the audio placeholder.
ITEMS = [("What is said?", "odd"), ("Transcribe", "whole"), ("Hi", "tiny"), ("Summarise the talk.", "long")]
BATCH = [0, 1]


def waveforms(folder: Path) -> dict[str, np.ndarray]:
    """The reference waveforms, float32, from the int16 base signal in waves.npz."""
    base = np.load(folder / "waves.npz")["base"].astype(np.float32) / np.float32(32768.0)
    long = np.tile(base, 1 + 565_000 // len(base))
    return {
        "odd": base[:21_937],  # 1.371 s: not a whole number of 160-sample hops
        "whole": base[:32_000],  # 2 s: 200 hops, 100 encoder frames, a last audio position of 4 frames
        "tiny": base[:80],  # under two hops: the processor pads it
        "long": long[:564_813],  # 35.3 s: two 30 s encoder windows
    }


def make_waves(folder: Path) -> None:
    rng = np.random.default_rng(20250213)
    t = np.arange(int(2.5 * SR)) / SR
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    signal = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) + 0.1 * np.sin(2 * np.pi * 1200 * t)
    signal = signal * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.03 * rng.standard_normal(len(t))
    np.savez_compressed(folder / "waves.npz", base=np.round(signal * 32767).astype(np.int16))


def write_cache(base: Path, cache: Path) -> None:
    """Lay out base/tiny-* as a Hugging Face hub cache, as if downloaded."""
    for repo, name in ((WHISPER_ID, "tiny-whisper"), (LLAMA_ID, "tiny-llama-3")):
        root = cache / ("models--" + repo.replace("/", "--"))
        shutil.copytree(base / name, root / "snapshots" / SNAPSHOT)
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(SNAPSHOT)


def make_bases(base: Path) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.whisper.tokenization_whisper import bytes_to_unicode

    torch.manual_seed(0)
    # Whisper: the encoder is what Ultravox uses; a one-layer decoder makes it a complete
    # WhisperForConditionalGeneration checkpoint, laid out as openai/whisper-* are.
    wcfg = transformers.WhisperConfig(
        vocab_size=300, num_mel_bins=80, d_model=8, encoder_layers=2, encoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16,
        max_source_positions=1500, max_target_positions=32, decoder_start_token_id=258, pad_token_id=256,
        bos_token_id=256, eos_token_id=256)
    whisper = transformers.WhisperForConditionalGeneration(wcfg).eval()
    whisper_dir = base / "tiny-whisper"
    whisper.save_pretrained(whisper_dir, safe_serialization=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        wtok = transformers.WhisperTokenizer(
            Path(tmp) / "vocab.json", Path(tmp) / "merges.txt", unk_token="<|endoftext|>",
            bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        wtok.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|notimestamps|>"]})
        fe = transformers.WhisperFeatureExtractor(feature_size=80)
        transformers.WhisperProcessor(feature_extractor=fe, tokenizer=wtok).save_pretrained(whisper_dir)

    # Llama-3 style: byte-level BPE, Llama 3's special tokens, <|eot_id|> as EOS (Instruct),
    # rope_theta and llama3 rope scaling as in Llama-3.x, tied embeddings as in Llama-3.2-1B.
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([CORPUS] * 4, trainers.BpeTrainer(
        vocab_size=380, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE)
    lcfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    llama = transformers.LlamaForCausalLM(lcfg).eval()
    with torch.no_grad():  # larger than the default init, so that layers change the residual visibly
        for p in llama.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    llama.save_pretrained(base / "tiny-llama-3", safe_serialization=True)
    tok.save_pretrained(base / "tiny-llama-3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ultravox-src", required=True, type=Path, help="a checkout of fixie-ai/ultravox (its ultravox/ folder)")
    ap.add_argument("--version", required=True, choices=sorted(EXPECTED_TRANSFORMERS))
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    out = args.out.resolve()
    base = out / "base"
    if not (out / "waves.npz").exists():
        make_waves(out)

    cache = Path(tempfile.mkdtemp(prefix="uv-hf-cache-"))
    os.environ["HF_HUB_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers

    if transformers.__version__ != EXPECTED_TRANSFORMERS[args.version]:
        print(f"warning: {args.version} code was written for transformers {EXPECTED_TRANSFORMERS[args.version]}, "
              f"this is {transformers.__version__}", file=sys.stderr)
    if not base.exists():
        make_bases(base)
    write_cache(base, cache)

    sys.path.insert(0, str(args.ultravox_src.resolve()))
    from ultravox.model import ultravox_config, ultravox_model, ultravox_processing

    torch.manual_seed(1 if args.version == "v0.5" else 2)
    vdir = out / args.version
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)

    tokenizer = transformers.AutoTokenizer.from_pretrained(LLAMA_ID)
    extra = {}
    if args.version == "v0.6":
        # As v0.6 training and `update_hf_models` do (ultravox_tokenizer.from_pretrained_text_tokenizer):
        # <|audio|> becomes a special token and its id is written to the config.
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|audio|>"]})
        ids = tokenizer.encode("<|audio|>", add_special_tokens=False)
        assert len(ids) == 1
        extra["audio_token_index"] = ids[0]
    config = ultravox_config.UltravoxConfig(
        audio_model_id=WHISPER_ID, text_model_id=LLAMA_ID, hidden_size=48, stack_factor=8, norm_init=0.4,
        projector_act="swiglu", projector_ln_mid=True, torch_dtype=torch.float32,
        pad_token_id=tokenizer.eos_token_id, **extra)
    model = ultravox_model.UltravoxModel(config).eval()
    # The base weights came from the ids; what training changes is made non-trivial here.
    with torch.no_grad():
        for name, p in model.multi_modal_projector.named_parameters():
            p.copy_(torch.empty_like(p).uniform_(0.3, 1.5) if "ln_" in name else torch.randn_like(p) * 0.2)
    variants = {}
    if args.version == "v0.5":
        # v0.5 releases: projector and fine-tuned encoder in the folder (the encoder's LoRA was
        # merged, so its id was dropped); the Llama by id.
        with torch.no_grad():
            for p in model.audio_tower.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("multi_modal_projector.", "audio_tower.")))
        model.config.audio_model_id = None
        variants["checkpoint-projector-encoder"] = model
    else:
        # projector only, both bases by id; and every weight in the folder, no ids.
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("multi_modal_projector."))
        variants["checkpoint-projector"] = model

    saved = {}
    for name, m in variants.items():
        folder = vdir / name
        m.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        saved[name] = folder
    if args.version == "v0.6":
        for name, p in model.named_parameters():
            p.requires_grad_(True)
        model.config.audio_model_id = None
        model.config.text_model_id = None
        folder = vdir / "checkpoint-full"
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        saved["checkpoint-full"] = folder
    for folder in saved.values():
        for code in folder.glob("*.py"):
            code.unlink()  # fixie's code, copied in by save_pretrained: not ours to keep

    # Everything below runs on what a user gets: the saved folder, loaded by the real code.
    reference_name = next(iter(saved))
    loaded = {name: ultravox_model.UltravoxModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
              for name, folder in saved.items()}
    processor = ultravox_processing.UltravoxProcessor.from_pretrained(str(saved[reference_name]))
    waves = waveforms(out)

    def prompt(instruction: str) -> str:
        return processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{instruction}\n\n<|audio|>"}], add_generation_prompt=True, tokenize=False)

    def run(m, inputs):
        captured = {}
        hook = m.language_model.model.layers[-1].register_forward_hook(
            lambda mod, i, o: captured.__setitem__("last", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            o = m(**inputs, output_hidden_states=True)
        hook.remove()
        return o, captured["last"]

    tensors, meta = {}, {"version": args.version, "transformers": transformers.__version__,
                         "torch": torch.__version__, "reference_checkpoint": reference_name,
                         "checkpoints": sorted(saved), "items": [], "batch": {}}
    ref = loaded[reference_name]
    for k, (instruction, wave_name) in enumerate(ITEMS):
        text = prompt(instruction)
        inputs = processor(text=text, audio=waves[wave_name], sampling_rate=SR, return_tensors="pt")
        out_, last = run(ref, {k2: v.clone() for k2, v in inputs.items()})
        for name, m in loaded.items():  # every saved layout reproduces the same model
            other, _ = run(m, {k2: v.clone() for k2, v in inputs.items()})
            for a, b in zip(out_.hidden_states, other.hidden_states):
                assert torch.allclose(a, b, atol=1e-5), name
        gen_inputs = {k2: v.clone() for k2, v in inputs.items()}
        with torch.no_grad():
            seq = ref.generate(**gen_inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                               eos_token_id=tokenizer.eos_token_id)[0]
        n_prompt = inputs["input_ids"].shape[1]
        if len(seq) > n_prompt and torch.equal(seq[:n_prompt], inputs["input_ids"][0]):
            seq = seq[n_prompt:]  # v0.5's generate returns the prompt too; v0.6's does not
        item = {"instruction": instruction, "wave": wave_name, "n_samples": int(len(waves[wave_name])), "text": text,
                "generated": seq.tolist()}
        for key in ("input_ids", "attention_mask", "audio_token_start_idx", "audio_token_len", "audio_lens",
                    "audio_batch_size"):
            item[key] = inputs[key].tolist()
        item["audio_values_shape"] = list(inputs["audio_values"].shape)
        # Mel features in full for the shortest items, every 7th / 97th frame of the longer ones (size).
        numel = inputs["audio_values"].numel()
        stride = 1 if numel < 12_000 else 7 if numel < 100_000 else 97
        tensors[f"item{k}.audio_values"] = inputs["audio_values"][..., ::stride].contiguous()
        item["audio_values_stride"] = stride
        for i, h in enumerate(out_.hidden_states):
            tensors[f"item{k}.hidden.{i}"] = h[0].contiguous()
        tensors[f"item{k}.last_block"] = last[0].contiguous()
        tensors[f"item{k}.last_logits"] = out_.logits[0, -1].contiguous()
        meta["items"].append(item)

    # A padded batch made as fixie's batch inference does (infer_batch: per-item processor
    # output, non-audio keys squeezed, DataCollatorForSeq2SeqWithAudio; the tokenizer pads left).
    features = []
    for k in BATCH:
        instruction, wave_name = ITEMS[k]
        f = dict(processor(text=prompt(instruction), audio=waves[wave_name], sampling_rate=SR, return_tensors="pt"))
        features.append({key: (v if key.startswith("audio") else v.squeeze(0)) for key, v in f.items()})
    collator = ultravox_processing.DataCollatorForSeq2SeqWithAudio(tokenizer=processor.tokenizer)
    batch = {k: v for k, v in collator(features).items() if v is not None}
    out_, last = run(ref, {k2: v.clone() for k2, v in batch.items()})
    meta["batch"] = {"items": BATCH, "padding_side": processor.tokenizer.padding_side,
                     **{key: batch[key].tolist() for key in ("input_ids", "attention_mask", "audio_token_start_idx",
                                                             "audio_token_len", "audio_lens", "audio_batch_size")}}
    for i, h in enumerate(out_.hidden_states):
        tensors[f"batch.hidden.{i}"] = h.contiguous()
    tensors["batch.last_block"] = last.contiguous()

    from safetensors.torch import save_file

    save_file(tensors, vdir / "reference.safetensors")
    (vdir / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(cache)
    print(f"wrote {vdir}")


if __name__ == "__main__":
    main()
