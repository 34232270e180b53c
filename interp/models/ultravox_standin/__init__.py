"""TEST STAND-IN for Ultravox's remote code. Not the real model code.

Real Ultravox checkpoints ship their own `ultravox_config.py`, `ultravox_model.py` and
`ultravox_processing.py` (fixie-ai/ultravox, `ultravox/model/`) and load with
`trust_remote_code=True`. Tests cannot fetch that code, so these three files re-create it at
tiny scale with the same class names, attribute names (`audio_tower`,
`multi_modal_projector`, `language_model`), forward keyword arguments and audio-placement
semantics. `Ultravox.make_tiny` copies them into a checkpoint folder and points the
folder's `config.json` `auto_map` at the copies, exactly as the released checkpoints do, so
the adapter loads them through `trust_remote_code` like a real checkpoint.

`UltravoxConfig.standin_api` picks which generation of the real code to imitate:

- "v0.5" (default; the released v0.5/v0.6 code, fixie-ai/ultravox main): the processor
  expands `<|audio|>` into `audio_token_len` copies of the tokenizer's EOS token, chunks
  audio longer than 30 s, and returns `audio_values`, `audio_lens`, `audio_token_len`,
  `audio_token_start_idx`, `audio_batch_size`; the model overwrites the embeddings at
  `[start, start + len)` with the projected audio.
- "v0.4": the v0.4.x code: same overwrite, no chunking, token count from samples / 320,
  kwargs `audio_values`, `audio_token_start_idx`, `audio_token_len`, `audio_len`.
- "insert": the experimental adapter branch: no placeholder tokens in `input_ids`; the
  model inserts the audio embeddings at `audio_start_idx` (kwargs `audio_values`,
  `audio_start_idx`, `audio_len`), lengthening each row.

Known differences from the real code: one set of files serves all three generations
(switched by `standin_api`); the tiny checkpoint holds every weight (a real config may name
`text_model_id` / `audio_model_id`, and then the real code loads the Llama and Whisper
weights from those hub ids); the processor's `audio_processor` is the folder's own
`WhisperFeatureExtractor` (the real one is a `WhisperProcessor` fetched by hub id);
transformers 5 signatures for encoder layers and `prepare_inputs_for_generation`; no
training, LoRA, loss, streaming (`audio_latency_block_size`) or CFormer code; the
insertion branch's own `generate` is left out.

These files import nothing from `interp` (they must run when copied into a checkpoint
folder), only torch, numpy and transformers.
"""
