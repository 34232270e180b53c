"""Tiny random checkpoints of each family's real transformers class, loadable offline.

Tests, the demo and `interp models make-tiny` build them in a second or two: a few layers of
width 32-64, a trained byte-level BPE (`interp.testing.tokenizers`) with the family's special
tokens and chat format, and the family's own processor, saved as a released folder is laid
out. Their weights are random; they exist to exercise the real code paths, not to answer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp.errors import InterpError


def _decoder(model_type: str, tok, d_model: int, n_layers: int, **extra) -> dict:
    """A small text-decoder config (as a `text_config` dict) sized to the tokenizer."""
    heads = max(2, d_model // 32)
    return dict(model_type=model_type, vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=4096, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def _build(model_class, config, tok, processor, out, seed: int, chatml: bool = True) -> Path:
    """Seeded random weights of `model_class(config)`, greedy-ready generation config, saved with its processor."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if chatml:  # ChatML turns end with <|im_end|>
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    return _save(model, processor, out)


def _save(model, processor, out) -> Path:
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def qwen2_audio(out, seed: int = 0, d_model: int = 64, n_layers: int = 4, encoder_layers: int = 2,
                encoder_d_model: int = 64) -> Path:
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                              WhisperFeatureExtractor)

    from interp.testing.tokenizers import make_tokenizer

    tok = make_tokenizer(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"], pre_tokenizer="qwen2")
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok)
    config = Qwen2AudioConfig(
        audio_config=dict(d_model=encoder_d_model, encoder_layers=encoder_layers, encoder_attention_heads=4,
                          encoder_ffn_dim=2 * encoder_d_model, num_mel_bins=128),
        text_config=_decoder("qwen2", tok, d_model, n_layers), audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"))
    return _build(Qwen2AudioForConditionalGeneration, config, tok, processor, out, seed)


def audioflamingo3(out, seed: int = 0, d_model: int = 64, n_layers: int = 4, encoder_layers: int = 2,
                   encoder_d_model: int = 64) -> Path:
    from transformers import (AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor,
                              WhisperFeatureExtractor)

    from interp.testing.tokenizers import make_tokenizer

    tok = make_tokenizer(["<sound>"], audio_placeholder="<sound>")
    processor = AudioFlamingo3Processor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok,
                                        chat_template=tok.chat_template)
    config = AudioFlamingo3Config(
        audio_config=dict(hidden_size=encoder_d_model, intermediate_size=2 * encoder_d_model,
                          num_hidden_layers=encoder_layers, num_attention_heads=4, num_mel_bins=128),
        text_config=_decoder("qwen2", tok, d_model, n_layers), audio_token_id=tok.convert_tokens_to_ids("<sound>"))
    return _build(AudioFlamingo3ForConditionalGeneration, config, tok, processor, out, seed)


def voxtral(out, seed: int = 0, d_model: int = 64, n_layers: int = 4, encoder_layers: int = 2,
            encoder_d_model: int = 64) -> Path:
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration, VoxtralProcessor, WhisperFeatureExtractor

    from interp.testing.tokenizers import MISTRAL, make_tokenizer

    # VoxtralProcessor hard-codes the audio token as id 24, as in tekken: fill the ids before it.
    first = ["</s>", "<|im_start|>", "<|im_end|>", "<s>", "<unk>", "[INST]", "[/INST]"]
    filler = [f"<SPECIAL_{i}>" for i in range(len(first), 24)]
    tok = make_tokenizer(first[4:] + filler + ["[AUDIO]", "[BEGIN_AUDIO]", "[TRANSCRIBE]"], eos="</s>", bos="<s>",
                         template=MISTRAL, audio_placeholder="[BEGIN_AUDIO][AUDIO]")
    if tok.convert_tokens_to_ids("[AUDIO]") != 24:
        raise InterpError("the tiny Voxtral tokenizer must give [AUDIO] id 24, as VoxtralProcessor expects")
    processor = VoxtralProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok)
    heads = max(2, d_model // 32)
    config = VoxtralConfig(
        audio_config=dict(hidden_size=encoder_d_model, intermediate_size=4 * encoder_d_model,
                          num_hidden_layers=encoder_layers, num_attention_heads=4, num_mel_bins=128),
        text_config=_decoder("llama", tok, d_model, n_layers, head_dim=d_model // heads, bos_token_id=tok.bos_token_id),
        audio_token_id=24)
    return _build(VoxtralForConditionalGeneration, config, tok, processor, out, seed, chatml=False)


def phi4_multimodal(out, seed: int = 0, d_model: int = 64, n_layers: int = 4, encoder_layers: int = 2,
                    encoder_d_model: int = 64) -> Path:
    from transformers import Phi4MultimodalConfig, Phi4MultimodalFeatureExtractor, Phi4MultimodalForCausalLM

    from interp.models.phi4_multimodal import Phi4AudioProcessor
    from interp.testing.tokenizers import PHI, make_tokenizer

    tok = make_tokenizer(["<|image|>", "<|audio|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
                         template=PHI, named_tokens={"image_token": "<|image|>", "audio_token": "<|audio|>"})
    text = _decoder("phi3", tok, d_model, n_layers)
    del text["model_type"]
    text.update(original_max_position_embeddings=4096, bos_token_id=tok.eos_token_id,
                eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")])
    config = Phi4MultimodalConfig(
        **text,
        audio_config=dict(hidden_size=encoder_d_model, intermediate_size=2 * encoder_d_model,
                          num_blocks=encoder_layers, num_attention_heads=4, ext_pw_out_channel=encoder_d_model,
                          depthwise_separable_out_channel=encoder_d_model, nemo_conv_channels=32,
                          audio_token_id=tok.audio_token_id),
        # The vision tower is built whatever the input; keep it minimal.
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_token_id=tok.image_token_id),
    )
    extractor = Phi4MultimodalFeatureExtractor(audio_compression_rate=config.audio_config.time_reduction)
    return _build(Phi4MultimodalForCausalLM, config, tok, Phi4AudioProcessor(extractor, tok), out, seed, chatml=False)


def whisper(out, seed: int = 0, d_model: int = 32, encoder_layers: int = 2, decoder_layers: int = 2,
            num_mel_bins: int = 80, english_only: bool = False) -> Path:
    """A tiny `WhisperForConditionalGeneration` with a `WhisperProcessor` and a generation config
    that lets `generate(language=..., task=...)` run. `english_only` lays the generation config
    out as the `*.en` releases do: `is_multilingual` false and no language or task ids, so
    `generate` prompts with `<|startoftranscript|><|notimestamps|>` and refuses `language=`/`task=`."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor)

    from interp.testing.tokenizers import WHISPER_SPECIALS, make_whisper_tokenizer

    tok = make_whisper_tokenizer()
    ids = dict(zip(WHISPER_SPECIALS, tok.convert_tokens_to_ids(WHISPER_SPECIALS)))
    eos = ids["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=num_mel_bins, d_model=d_model, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, max_source_positions=1500,
        max_target_positions=64, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
        decoder_start_token_id=ids["<|startoftranscript|>"], suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    langs = [t for t in WHISPER_SPECIALS if len(t) == 6]  # <|en|>, <|de|>, ...
    # A generation config of its own (not derived from the model config, which would drop
    # the Whisper-specific fields on reload), laid out like the released ones.
    languages = {} if english_only else dict(
        lang_to_id={t: ids[t] for t in langs},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]})
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        max_length=24, is_multilingual=not english_only, **languages,
        no_timestamps_token_id=ids["<|notimestamps|>"], forced_decoder_ids=None, suppress_tokens=[],
        begin_suppress_tokens=[eos], prev_sot_token_id=ids["<|startofprev|>"],
    )
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=num_mel_bins), tokenizer=tok)
    return _save(model, processor, out)


def ultravox(out, seed: int = 0, d_model: int = 64, n_layers: int = 4, encoder_layers: int = 2,
             encoder_d_model: int = 32, version: str = "v0.6") -> Path:
    """A tiny random Ultravox in the released layout (every weight in the folder, no hub ids),
    built with this package's implementation. `version` "v0.6" also gives the tokenizer an
    `<|audio|>` special token and the config its `audio_token_index`."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from interp.models.ultravox_checkpoint import build_ultravox, save_ultravox
    from interp.models.ultravox_modeling import AUDIO_PLACEHOLDER, UltravoxProcessor
    from interp.testing.tokenizers import LLAMA3, LLAMA3_SPECIALS, make_tokenizer

    if version not in ("v0.5", "v0.6"):
        raise InterpError(f"unknown Ultravox version '{version}'; use v0.5 or v0.6")
    tok = make_tokenizer(LLAMA3_SPECIALS, eos="<|eot_id|>", bos="<|begin_of_text|>", template=LLAMA3)
    vocab = len(tok)
    audio_token_index = None
    if version == "v0.6":  # as v0.6's tokenizer: <|audio|> a special token past the model's vocabulary
        tok.add_tokens([AUDIO_PLACEHOLDER], special_tokens=True)
        audio_token_index = tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
    torch.manual_seed(seed)
    encoder = WhisperEncoder(WhisperConfig(
        d_model=encoder_d_model, encoder_layers=encoder_layers, encoder_attention_heads=2,
        encoder_ffn_dim=2 * encoder_d_model, decoder_layers=1, decoder_attention_heads=2,
        decoder_ffn_dim=2 * encoder_d_model, num_mel_bins=128, max_source_positions=1500))
    text = _decoder("llama", tok, d_model, n_layers, bos_token_id=tok.bos_token_id)
    del text["model_type"]
    text["vocab_size"] = vocab
    llama = LlamaForCausalLM(LlamaConfig(**text))
    model = build_ultravox(encoder, llama, hidden_size=2 * d_model, audio_token_index=audio_token_index, seed=seed)
    processor = UltravoxProcessor(WhisperFeatureExtractor(feature_size=128), tok)
    return save_ultravox(model, processor, out)


#: family name -> its tiny-checkpoint factory
FACTORIES = {"qwen2-audio": qwen2_audio, "audioflamingo3": audioflamingo3, "voxtral": voxtral,
             "phi4-mm": phi4_multimodal, "whisper": whisper, "ultravox": ultravox}


def make_tiny(family: str, out, seed: int = 0, **sizes) -> Path:
    """Write a tiny random checkpoint of FAMILY's real class into `out`; returns `out`.

    >>> make_tiny("qwen2-audio", "tiny-qwen2-audio")  # doctest: +SKIP
    """
    if family not in FACTORIES:
        from interp.models import family_names

        raise InterpError(f"no tiny checkpoint for family '{family}'; families: {', '.join(family_names())}")
    return FACTORIES[family](out, seed=seed, **sizes)
