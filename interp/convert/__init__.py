"""Converters from other runtimes' checkpoint formats to transformers checkpoint folders.

One module per source format: `ct2_whisper` reads a CTranslate2 `model.bin` holding a
Whisper model (`WhisperSpec`) and writes a `WhisperForConditionalGeneration` folder with an
offline `WhisperProcessor`; `gguf_llama` turns a GGUF Llama file (dequantised by
transformers' own GGUF loader) into a plain `LlamaForCausalLM` folder with its tokenizer and
chat template. `interp.models.pretrained` uses them to build the pretrained checkpoints that
`interp models get` installs; they take paths and return the folder they wrote.
"""
