"""The quickstart notebook runs as written (its code cells, in order), with public names only."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import torch

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _source() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_quickstart_uses_the_package_api():
    """The toolkit's names come from `import interp` (plus the tasks package for data and prompts)."""
    imported = set()
    for node in ast.walk(ast.parse(_source())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not {m for m in imported if m.startswith("interp.")}, imported
    assert "interp" in imported


def test_quickstart_notebook_runs():
    namespace: dict = {}
    exec(compile(_source(), str(NOTEBOOK), "exec"), namespace)
    ns = namespace
    assert ns["store"].n_items == len(ns["rows"])
    assert ns["eraser"].layers == [0, 1, 2, 3]
    # the fitted direction was steered through generation: at block 2 every recorded row, prompt
    # and generated, is the unsteered one plus 8 x direction
    saved = ns["at_block_2"].saved[2]
    assert len(saved) >= 2 and [s for s, _, _ in saved] == list(range(len(saved)))
    plain = ns["interp"].Record(layers=[2], positions="all")
    ns["interp"].run(ns["model"], ns["batch"], [plain])
    delta = saved[0][2] - plain.saved[2][0][2]
    torch.testing.assert_close(delta, (8.0 * ns["direction"]).expand_as(delta), rtol=1e-4, atol=1e-4)
    # the SAELens export holds the store's rows of block 3, 16 at a time
    export, data = ns["export"], ns["sae_data"]
    rows = ns["store"].read(3)[: export.n_positions]
    np.testing.assert_array_equal(np.asarray(data[export.hook_name], dtype=np.float32).reshape(-1, rows.shape[1]), rows)
