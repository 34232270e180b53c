"""The Typer application the command modules register on, and the options several share."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability for speech LLMs.")
models_app = typer.Typer(help="Supported model families and tiny test checkpoints.", invoke_without_command=True)
data_app = typer.Typer(no_args_is_help=True,
                       help="Task datasets, offline speech synthesis and noise: build the manifests other commands read.")
store_app = typer.Typer(no_args_is_help=True, help="Activation stores: merge the shards of a trace.")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")

#: Base models an Ultravox checkpoint names by hub id, where they are not in the HF cache.
AUDIO_MODEL = typer.Option(None, "--audio-model", help="folder of the Whisper model an Ultravox checkpoint names by "
                           "audio_model_id (default: the local Hugging Face cache)")
TEXT_MODEL = typer.Option(None, "--text-model", help="folder of the Llama an Ultravox checkpoint names by "
                          "text_model_id (default: the local Hugging Face cache)")
DEVICE = typer.Option("auto", help="auto | cpu | cuda")
DEVICE_MAP = typer.Option(None, "--device-map", help="auto | balanced | sequential: spread a model too large for one GPU "
                          "over the visible GPUs (Accelerate's device map; replaces --device)")
MAX_MEMORY = typer.Option(None, "--max-memory", help="per-device cap with --device-map: 0=70GiB,1=70GiB,cpu=200GiB, or "
                          "70GiB for every GPU")
MODEL_DTYPE = typer.Option("auto", help="dtype to run the model in: auto (float32 on CPU, bfloat16 on CUDA) | float32 | "
                           "bfloat16 | float16")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error "
                                                                 "(also accepted after the command)")):
    """Mechanistic interpretability for speech LLMs."""
