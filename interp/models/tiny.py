"""Tiny offline tokenizers for the tiny checkpoints that tests and the demo build.

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


def chat_template(audio_placeholder: str = "") -> str:
    return CHATML.replace("{{ audio_placeholder }}", audio_placeholder)


def make_tokenizer(special_tokens: list[str], vocab_size: int = 600, eos: str = "<|endoftext|>",
                   bos: str | None = None, audio_placeholder: str = ""):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([eos, "<|im_start|>", "<|im_end|>", *( [bos] if bos else []), *special_tokens]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, bos_token=bos,
                                   additional_special_tokens=specials[1:])
    fast.chat_template = chat_template(audio_placeholder)
    return fast
