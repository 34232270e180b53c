"""The architecture as a rule the suite checks: one-way layers, modules of one role, a library
that never prints."""

from __future__ import annotations

import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "cascades", "tasks")
MAX_LINES = 400  #: a module longer than this mixes roles: split it


def _lint(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(lint), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract["layers"]


def test_the_layers_contract_holds():
    proc = _lint(ROOT)
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout + proc.stderr


def test_an_import_from_a_lower_layer_to_a_higher_one_breaks_it(tmp_path):
    """The contract can fail: core importing tasks inside a function (the lazy import that used to
    hide the cycles) is caught, as is core reaching analysis through the package's own API."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "samples", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    trace = tmp_path / "interp" / "trace.py"
    trace.write_text(trace.read_text() + "\n\ndef _task_prompt(row):\n    from tasks import get_task\n\n"
                     "    return get_task(row['task'])\n")
    proc = _lint(tmp_path)
    assert proc.returncode == 1 and "BROKEN" in proc.stdout and "interp.trace -> tasks" in proc.stdout, proc.stdout


def _core_and_upper() -> tuple[set[str], set[str]]:
    core, upper = set(), set()
    for layer in _layers():
        names = {n.strip() for n in re.split(r"[|:]", layer)}
        (core if ":" in layer else upper).update(names)
    return core, upper


def test_every_module_of_interp_is_in_a_layer():
    """A new core module must be added to the contract, or it would escape the check silently."""
    core, upper = _core_and_upper()
    import interp

    modules = [m.name for m in pkgutil.walk_packages(interp.__path__, "interp.")]
    assert len(modules) > 40
    stray = [m for m in modules if not any(m == p or m.startswith(p + ".") for p in core | upper)]
    assert not stray, f"modules in no layer of pyproject.toml's contract: {stray}"


def test_no_module_is_over_400_lines():
    sources = [p for name in PACKAGES for p in (ROOT / name).rglob("*.py")] + [ROOT / "cli.py"]
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules into modules of one role: {long}"


PRINTERS = {"rich", "tqdm", "typer", "logging", "click"}  #: libraries that write to the terminal


def _printing(tree) -> list[tuple[int, str]]:
    """(line, what) for every print call, stdout/stderr access and terminal library imported."""
    import ast

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append((node.lineno, "print()"))
        elif isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") and \
                isinstance(node.value, ast.Name) and node.value.id == "sys":
            found.append((node.lineno, f"sys.{node.attr}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"import {n}") for n in names if n.split(".")[0] in PRINTERS]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_the_library_never_prints(package):
    """Library code returns data and reports through `interp.progress` and warnings; only the
    command line (interp/cli) prints."""
    import ast

    found = []
    for path in (ROOT / package).rglob("*.py"):
        if path.is_relative_to(ROOT / "interp" / "cli"):
            continue
        found += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in _printing(ast.parse(path.read_text()))]
    assert not found, "\n".join(found)


def test_the_print_check_finds_printing():
    import ast

    code = "import sys\nfrom rich.console import Console\n\ndef f():\n    print('x')\n    sys.stderr.write('y')\n"
    assert [w for _, w in _printing(ast.parse(code))] == ["import rich.console", "print()", "sys.stderr"]
