"""The package's API: `import interp` gives the documented names, lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import interp
from interp.errors import InterpError

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_what_its_module_defines():
    from interp.analysis.fitted_probe import FittedProbe, fit_probe
    from interp.analysis.leace import Eraser, fit_eraser
    from interp.analysis.lens import logit_lens
    from interp.forward import run
    from interp.interventions import Ablate, Edit, Erase, MeanAblate, Patch, Record, Steer, Zero
    from interp.models import load_model
    from interp.store import ActivationStore

    expected = {"fit_probe": fit_probe, "FittedProbe": FittedProbe, "fit_eraser": fit_eraser, "Eraser": Eraser,
                "logit_lens": logit_lens, "run": run, "load_model": load_model, "ActivationStore": ActivationStore,
                "Ablate": Ablate, "Edit": Edit, "Erase": Erase, "MeanAblate": MeanAblate, "Patch": Patch,
                "Record": Record, "Steer": Steer, "Zero": Zero}
    for name, value in expected.items():
        assert getattr(interp, name) is value, name
    assert set(expected) | {"trace", "__version__", "load_audio", "read_manifest", "make_tiny"} == set(interp.__all__)
    assert set(interp.__all__) <= set(dir(interp))


def test_interp_trace_is_the_function_and_the_module():
    import interp.trace as module
    from interp.trace import record, trace

    assert interp.trace is module and callable(interp.trace) and callable(record)
    with pytest.raises(InterpError, match="unknown positions 'nowhere' for a store"):  # the call reaches `trace`
        interp.trace(None, [], "never-written.h5", positions="nowhere")
    assert trace.__name__ == "trace"


def test_import_interp_is_light():
    """`import interp` loads none of torch, transformers or the analysis stack until a name is used."""
    code = "import sys, interp; print(sorted(m for m in ('torch', 'transformers', 'h5py', 'interp.analysis') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_readme_python_examples_compile():
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) >= 2
    for block in blocks:
        compile(block, "README.md", "exec")
