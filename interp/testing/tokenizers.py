"""Tiny offline tokenizers for the tiny checkpoints (`interp.testing.checkpoints`).

A byte-level BPE trained in milliseconds on a small built-in English corpus, wrapped as a
`PreTrainedTokenizerFast` with a family's special tokens and a ChatML chat template, so
processors, chat templates and `generate` work as with the real checkpoints.
"""

from __future__ import annotations

CORPUS = """
the a an of to in and is was for on that with as it by at from this be are or his her they
what which who where when how why answer question topic news article world sports business
science technology sci tech positive negative sentiment movie film review good bad great
terrible love hate happy sad angry surprise fear disgust neutral joy sarcastic sarcasm yes no
option choice correct one word letter listen audio speech transcript transcribe speaker says
the team won the match in the final minute stocks fell after the bank raised rates
a new phone chip doubles battery life the president met leaders to discuss peace
this film is a delight from start to finish the plot is dull and the acting is worse
where would you keep a book bookshelf library ocean river forest kitchen school store
A B C D E 0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' " ( ) -
"""

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ audio_placeholder }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# A message's content, a string or a list of parts; `{{ audio_placeholder }}` stands for an audio part.
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ audio_placeholder }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)

#: Phi-4 style: `<|user|>...<|end|><|assistant|>` (Phi-4-mini / Phi-4-multimodal).
PHI = (
    "{% for message in messages %}<|{{ message['role'] }}|>" + _CONTENT + "<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

#: Mistral instruct style: `<s>[INST]...[/INST]answer</s>` (Voxtral's text side).
MISTRAL = (
    "<s>{% for message in messages %}{% if message['role'] == 'user' %}[INST]" + _CONTENT + "[/INST]"
    "{% elif message['role'] == 'assistant' %}" + _CONTENT + "</s>{% endif %}{% endfor %}"
)


#: Llama-3 style (Ultravox's backbone): string contents, as Ultravox prompts are strings holding `<|audio|>`.
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n" + _CONTENT + "<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

#: Whisper's special tokens in the order of the real vocabulary (they follow the byte-level BPE).
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|fr|>", "<|es|>", "<|translate|>",
                    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]

def chat_template(audio_placeholder: str = "", template: str = CHATML) -> str:
    return template.replace("{{ audio_placeholder }}", audio_placeholder)


def make_tokenizer(special_tokens: list[str], vocab_size: int = 600, eos: str = "<|endoftext|>",
                   bos: str | None = None, audio_placeholder: str = "", template: str = CHATML,
                   named_tokens: dict[str, str] | None = None, pre_tokenizer: str = "bytelevel"):
    """A trained byte-level BPE with `special_tokens` first in the vocabulary (after eos, the ChatML
    markers and bos, in that order, so ids are predictable) and a chat template (`CHATML`, `PHI`,
    `MISTRAL`, or any template using `{{ audio_placeholder }}`). `named_tokens` become tokenizer
    attributes, e.g. {"audio_token": "<|audio|>"} gives `tok.audio_token` and `tok.audio_token_id`.
    `pre_tokenizer="qwen2"` uses Qwen2's NFC + split regex + byte-level pipeline, so the file
    tokenizes identically when a causal-LM folder reloads it as `Qwen2Tokenizer`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([eos, "<|im_start|>", "<|im_end|>", *( [bos] if bos else []), *special_tokens]))
    tok = Tokenizer(models.BPE())
    if pre_tokenizer == "qwen2":
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    extra = {"extra_special_tokens": dict(named_tokens)} if named_tokens else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, bos_token=bos,
                                   additional_special_tokens=specials[1:], **extra)
    fast.chat_template = chat_template(audio_placeholder, template)
    return fast


def make_whisper_tokenizer(vocab_size: int = 400):
    """A `WhisperTokenizer` over the same tiny BPE, with Whisper's special tokens after it."""
    import json

    from transformers import WhisperTokenizer

    backend = json.loads(make_tokenizer([], vocab_size=vocab_size).backend_tokenizer.to_str())["model"]
    words = [w for w in backend["vocab"] if not (w.startswith("<|") and w.endswith("|>"))]
    tok = WhisperTokenizer(vocab={w: i for i, w in enumerate(words)}, merges=[tuple(m) for m in backend["merges"]])
    tok.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    return tok
