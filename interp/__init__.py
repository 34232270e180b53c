"""interp: mechanistic interpretability for speech LLMs.

`interp.run(model, batch, interventions=[...])` runs a forward pass or a generation with
interventions (see interp.interventions); it is imported on first use, so `import interp`
stays light.
"""

from interp.version import __version__


def __getattr__(name):
    if name == "run":
        from interp.forward import run

        return run
    raise AttributeError(f"module 'interp' has no attribute {name!r}")
