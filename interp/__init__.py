"""interp: mechanistic interpretability for speech LLMs.

The names a researcher needs are here, imported on first use (so `import interp` stays light):

>>> import interp                                                                       # doctest: +SKIP
>>> model = interp.load_model(interp.make_tiny("qwen2-audio", "tiny"), device="cpu")    # doctest: +SKIP
>>> interp.trace(model, rows, "acts.h5", layers="all", positions="audio")               # doctest: +SKIP
>>> with interp.ActivationStore("acts.h5") as store:                                    # doctest: +SKIP
...     X, y = store.pooled(2), store.field("label")
...     probe = interp.fit_probe(X, y, layer=2)                     # a frozen FittedProbe
...     eraser = interp.fit_eraser(store, "label", layers=[0, 1, 2, 3])
...     lens = interp.logit_lens(model, store, layers="all")
>>> batch = model.prepare(waves, ["What is the topic?"] * len(waves), padding_side="left")  # doctest: +SKIP
>>> steered = interp.run(model, batch, [interp.Steer(layers=[2], vector=4 * probe.direction("positive"))],
...                      generate=True, max_new_tokens=8)                                # doctest: +SKIP
>>> erased = interp.run(model, batch, [interp.Erase(eraser)], generate=True)            # doctest: +SKIP

`interp.trace` is both the function above and its module (`from interp.trace import record`).
The notebook notebooks/quickstart.ipynb runs these end to end. The command line is
`interp --help`; the layers of the package are described in docs/architecture.md.
"""

from interp.version import __version__

#: public name -> module that defines it
_API = {
    "load_model": "interp.models",
    "ActivationStore": "interp.store",
    "run": "interp.forward",
    "Record": "interp.interventions", "Zero": "interp.interventions", "MeanAblate": "interp.interventions",
    "Steer": "interp.interventions", "Ablate": "interp.interventions", "Patch": "interp.interventions",
    "Edit": "interp.interventions", "Erase": "interp.interventions",
    "fit_probe": "interp.analysis.fitted_probe", "FittedProbe": "interp.analysis.fitted_probe",
    "fit_eraser": "interp.analysis.leace", "Eraser": "interp.analysis.leace",
    "logit_lens": "interp.analysis.lens",
    "load_audio": "interp.audio", "read_manifest": "interp.manifest", "make_tiny": "interp.testing",
}

__all__ = ["__version__", "trace", *_API]


def __getattr__(name):
    import importlib

    if name == "trace":  # the module, which is callable: interp.trace(model, rows, out)
        value = importlib.import_module("interp.trace")
    elif name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    else:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
