"""The quickstart notebook runs as written (its code cells, in order)."""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    namespace: dict = {}
    exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["store"].n_items == len(namespace["rows"])
    assert len(namespace["record"].saved[1]) >= 2  # the prompt pass and at least one generated step
    assert namespace["eraser"].layers == [0, 1, 2, 3]
