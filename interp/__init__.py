"""interp: mechanistic interpretability for speech LLMs."""

__version__ = "0.1.0"
