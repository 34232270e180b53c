"""CTranslate2 Whisper (`model.bin`, spec `WhisperSpec`) -> `WhisperForConditionalGeneration`.

A CTranslate2 `model.bin` is a flat list of named tensors: a uint32 binary version, the spec
name and revision, then per variable its name, rank, dims, a dtype id and raw little-endian
bytes, and finally aliases (names that share another variable's data, e.g. the output
projection tied to the token embedding). `read_ct2_model` parses it and checks that it
consumed the file exactly, which is what guards against a layout it does not know.

The Whisper layout differs from transformers' in three ways the converter undoes:
self-attention `linear_0` is the fused Q, K, V projection and cross-attention `linear_1` the
fused K, V (transformers keeps them apart); key projections have no bias (CTranslate2 stores
zeros in the fused bias, which are checked, not dropped blindly); and the output projection
is an alias of the token embedding (transformers ties `proj_out` to `embed_tokens`). Names
map as `self_attention` -> `self_attn`, `attention` -> `encoder_attn`, `ffn.linear_0/1` ->
`fc1/fc2`, `layer_norm` gamma/beta -> weight/bias.

The folder is completed as the original release is laid out: a `WhisperProcessor` (the
feature extractor for the model's mel bins and a `WhisperTokenizer` built from the carrier's
`tokenizer.json`, with the timestamp tokens added after the special tokens) and a generation
config. English-only checkpoints (vocabulary 51864, as openai-whisper decides) get
`is_multilingual=False` and no language or task tokens, so `generate` prompts with
`<|startoftranscript|><|notimestamps|>`; multilingual ones get `lang_to_id` and `task_to_id`.
Suppressed tokens, begin-suppressed tokens and alignment heads come from the carrier's
`config.json`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interp.errors import InterpError

#: CTranslate2's DataType enum order (include/ctranslate2/types.h); bfloat16 has no numpy dtype.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_SUPPORTED_VERSIONS = (4, 5, 6)  # type ids and aliases in the layout read below


@dataclass
class CT2Model:
    """The variables of a CTranslate2 `model.bin`, aliases resolved."""

    binary_version: int
    spec: str  #: e.g. "WhisperSpec"
    revision: int  #: the spec's revision
    variables: dict[str, np.ndarray] = field(default_factory=dict)  #: name -> array (aliases included)
    aliases: dict[str, str] = field(default_factory=dict)  #: alias -> the variable it shares


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 `model.bin`."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    offset = 0

    def take(fmt: str):
        nonlocal offset
        try:
            value = struct.unpack_from("<" + fmt, data, offset)[0]
        except struct.error:
            raise InterpError(f"{path} ends early; the CTranslate2 model file is truncated") from None
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        n = take("H")  # length including the trailing NUL
        text = bytes(data[offset:offset + n - 1]).decode("utf-8")
        offset += n
        return text

    version = take("I")
    if version not in _SUPPORTED_VERSIONS:
        raise InterpError(f"{path} is CTranslate2 binary version {version}; this reader knows versions "
                          f"{', '.join(map(str, _SUPPORTED_VERSIONS))}")
    model = CT2Model(version, string(), take("I"))
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype_id, n_bytes = take("B"), take("I")
        dtype = _CT2_DTYPES.get(dtype_id)
        raw = data[offset:offset + n_bytes]
        offset += n_bytes
        if dtype is None:
            raise InterpError(f"{path}: variable {name} has unknown CTranslate2 dtype id {dtype_id}")
        if dtype == "bfloat16":  # widen by hand: the top 16 bits of a float32
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype)
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise InterpError(f"{path}: variable {name} holds {array.size} values for shape {shape}; the file is damaged")
        model.variables[name] = array.reshape(shape)
    for _ in range(take("I")):
        alias, target = string(), string()
        model.aliases[alias] = target
        model.variables[alias] = model.variables[target]
    if offset != len(data):
        raise InterpError(f"{path}: {len(data) - offset} bytes left after the last alias; not a CTranslate2 model "
                          f"this reader understands")
    return model


# ---- Whisper -------------------------------------------------------------------------------

#: openai-whisper calls a model multilingual when its vocabulary has at least this many tokens.
_MULTILINGUAL_VOCAB = 51865
_NON_LANGUAGE = {"<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                 "<|startofprev|>", "<|nocaptions|>", "<|nospeech|>", "<|notimestamps|>"}


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of a Whisper model, read off its tensors."""

    n_mels: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= _MULTILINGUAL_VOCAB


def _count_layers(names, prefix: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(rf"{prefix}/layer_(\d+)/", n))}
    return max(found) + 1 if found else 0


def whisper_dims(ct2: CT2Model) -> WhisperDims:
    v = ct2.variables
    names = list(v)
    return WhisperDims(
        n_mels=int(v["encoder/conv1/weight"].shape[1]), d_model=int(v["encoder/conv1/weight"].shape[0]),
        encoder_layers=_count_layers(names, "encoder"), decoder_layers=_count_layers(names, "decoder"),
        encoder_heads=int(v["encoder/num_heads"]), decoder_heads=int(v["decoder/num_heads"]),
        encoder_ffn=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        vocab_size=int(v["decoder/embeddings/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
    )


def _check_whisper(ct2: CT2Model, source: str) -> None:
    if ct2.spec != "WhisperSpec":
        raise InterpError(f"{source} holds a CTranslate2 {ct2.spec}, not a WhisperSpec")
    v = ct2.variables
    scaled = [n for n in v if n.endswith("_scale")]
    if scaled:
        raise InterpError(f"{source} is quantised to integers ({scaled[0]}); convert a float32, float16 or "
                          f"bfloat16 CTranslate2 model")
    # The math these flags select must be Whisper's, which transformers implements.
    for flag, want in (("decoder/scale_embeddings", 0), ("decoder/pre_norm", 1), ("decoder/alibi", 0)):
        if flag in v and int(v[flag]) != want:
            raise InterpError(f"{source}: {flag} is {int(v[flag])}, which WhisperForConditionalGeneration does not implement")
    projection = "decoder/projection/weight"
    if projection in v and not np.array_equal(v[projection], v["decoder/embeddings/weight"]):
        raise InterpError(f"{source}: the output projection is not tied to the token embedding, as Whisper's is")
    if "decoder/projection/bias" in v:
        raise InterpError(f"{source}: the output projection has a bias, which Whisper's has not")


def _split(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(array, parts, axis=0)


def whisper_state_dict(ct2: CT2Model, source: str = "model.bin") -> dict[str, np.ndarray]:
    """transformers' `WhisperForConditionalGeneration` state dict (float32) from CTranslate2 variables."""
    _check_whisper(ct2, source)
    v = {k: np.array(a, dtype=np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating) else a
         for k, a in ct2.variables.items()}
    dims = whisper_dims(ct2)
    out: dict[str, np.ndarray] = {}

    def norm(dst: str, src: str):
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def linear(dst: str, src: str, bias: bool = True):
        out[f"{dst}.weight"] = v[f"{src}/weight"]
        if bias:
            out[f"{dst}.bias"] = v[f"{src}/bias"]

    def fused(dsts: list[str], src: str, where: str):
        weights, biases = _split(v[f"{src}/weight"], len(dsts)), _split(v[f"{src}/bias"], len(dsts))
        for dst, w, b in zip(dsts, weights, biases):
            out[f"{dst}.weight"] = w
            if dst.endswith("k_proj"):
                if np.any(b != 0):
                    raise InterpError(f"{source}: {where} has a non-zero key bias, which Whisper's key projection lacks")
            else:
                out[f"{dst}.bias"] = b

    for side, n_layers in (("encoder", dims.encoder_layers), ("decoder", dims.decoder_layers)):
        hf = f"model.{side}"
        out[f"{hf}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        norm(f"{hf}.layer_norm", f"{side}/layer_norm")
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            fused([f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")],
                  f"{src}/self_attention/linear_0", f"{src} self-attention")
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused([f"{dst}.encoder_attn.{p}" for p in ("k_proj", "v_proj")],
                      f"{src}/attention/linear_1", f"{src} cross-attention")
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    return out


def whisper_tokenizer(tokenizer_json: dict, vocab_size: int):
    """A `WhisperTokenizer` from a `tokenizer.json` (byte-level BPE + Whisper's special tokens),
    with timestamp tokens `<|0.00|>` ... filling the vocabulary up to `vocab_size`, as in the
    released checkpoints. Ids are checked against the file's."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    model = tokenizer_json["model"]
    if model.get("type") != "BPE":
        raise InterpError(f"the carrier's tokenizer.json holds a {model.get('type')} model, not Whisper's byte-level BPE")
    added = sorted(tokenizer_json.get("added_tokens", []), key=lambda t: t["id"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = WhisperTokenizer(vocab=dict(model["vocab"]), merges=merges)
    specials = [t["content"] for t in added if t["content"] not in model["vocab"]]
    tok.add_special_tokens({"additional_special_tokens": specials})
    n_timestamps = vocab_size - len(tok)
    if n_timestamps > 0:
        tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False, special=False)
                        for i in range(n_timestamps)])
    wrong = [t["content"] for t in added if tok.convert_tokens_to_ids(t["content"]) != t["id"]]
    if wrong or len(tok) != vocab_size:
        raise InterpError(f"the tokenizer built from tokenizer.json does not match the model (ids of {wrong[:3]} differ, "
                          f"or {len(tok)} tokens for a vocabulary of {vocab_size})")
    return tok


def whisper_generation_config(tok, dims: WhisperDims, ct2_config: dict):
    """The generation config of a released Whisper checkpoint: English-only or multilingual."""
    from transformers import GenerationConfig

    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    fields = dict(
        decoder_start_token_id=sot, bos_token_id=sot, eos_token_id=eot, pad_token_id=eot,
        max_length=dims.max_target_positions, is_multilingual=dims.is_multilingual,
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        return_timestamps=False, max_initial_timestamp_index=50,
    )
    if ct2_config.get("alignment_heads"):
        fields["alignment_heads"] = [list(h) for h in ct2_config["alignment_heads"]]
    if dims.is_multilingual:
        specials = tok.all_special_tokens
        fields["lang_to_id"] = {t: ids(t) for t in specials if t not in _NON_LANGUAGE and not re.match(r"<\|\d", t)}
        fields["task_to_id"] = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return GenerationConfig(**fields)


def convert_whisper(source: str | Path, out: str | Path) -> Path:
    """Write a transformers Whisper checkpoint folder from a CTranslate2 Whisper folder
    (`model.bin`, `config.json`, `tokenizer.json`)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    source, out = Path(source), Path(out)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (source / name).is_file():
            raise InterpError(f"{source} has no {name}; give a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)")
    ct2 = read_ct2_model(source / "model.bin")
    ct2_config = json.loads((source / "config.json").read_text())
    weights = whisper_state_dict(ct2, str(source / "model.bin"))
    dims = whisper_dims(ct2)
    tok = whisper_tokenizer(json.loads((source / "tokenizer.json").read_text(encoding="utf-8")), dims.vocab_size)
    generation = whisper_generation_config(tok, dims, ct2_config)
    config = WhisperConfig(
        vocab_size=dims.vocab_size, num_mel_bins=dims.n_mels, d_model=dims.d_model,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads, decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn, decoder_ffn_dim=dims.decoder_ffn,
        max_source_positions=dims.max_source_positions, max_target_positions=dims.max_target_positions,
        pad_token_id=generation.pad_token_id, bos_token_id=generation.bos_token_id,
        eos_token_id=generation.eos_token_id, decoder_start_token_id=generation.decoder_start_token_id,
        # suppression lives in the generation config alone: copies in the model config make
        # `generate` warn that generation arguments were passed twice
        suppress_tokens=None, begin_suppress_tokens=None, activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
    )
    model = WhisperForConditionalGeneration(config).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in weights.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InterpError(f"{source}: the converted weights do not fit WhisperForConditionalGeneration "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = generation
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=dims.n_mels), tokenizer=tok).save_pretrained(out)
    return out
