"""The six tasks of the study as data: definitions and prompts (`task`), answer parsers
(`parse`), loaders for the released dataset files (`datasets`), offline speech synthesis
(`tts`, `synth`), noise at an exact SNR (`noise`) and a seconds-long demo set (`demo`)."""

from tasks.datasets import load_dataset, sample_audio_dir, sample_path
from tasks.demo import demo_data
from tasks.noise import add_noise, mix_at_snr
from tasks.parse import UNPARSED
from tasks.synth import synthesize
from tasks.task import TASKS, Score, Task, check_task_rows, get_task, load_templates, speech_prompt

__all__ = ["TASKS", "Score", "Task", "UNPARSED", "add_noise", "check_task_rows", "demo_data", "get_task", "load_dataset",
           "load_templates", "mix_at_snr", "sample_audio_dir", "sample_path", "speech_prompt",
           "synthesize"]
