"""The six tasks of the study as data: definitions, dataset loaders, speech synthesis and noise."""

from tasks.task import TASKS, Score, Task, get_task, load_templates

__all__ = ["TASKS", "Score", "Task", "get_task", "load_templates"]
