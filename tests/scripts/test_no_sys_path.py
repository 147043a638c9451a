"""No Python file of the repository edits sys.path: the library is imported as installed (``make env``
installs it in editable mode), and benchmarks/, experiments/ and training/ are packages run from the
repository root as ``python -m benchmarks.node``, ``python -m experiments.real_tabletop`` and
``python -m training.pretrain``."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# what is not the project's own source: hidden folders (.git, .venv, .venv-jazzy), colcon's and setuptools'
# outputs, and run folders
SKIPPED_DIRS = {"build", "install", "log", "runs", "dist", "__pycache__"}
EDITS = {"insert", "append", "extend", "remove", "pop", "clear"}


def _is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def sys_path_edits(source: str) -> list:
    """Line numbers where ``source`` changes sys.path: a call of one of its list methods, an assignment to
    it or to an item or slice of it, an augmented assignment."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EDITS \
                and _is_sys_path(node.func.value):
            lines.append(node.lineno)
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            if _is_sys_path(target) or (isinstance(target, ast.Subscript) and _is_sys_path(target.value)):
                lines.append(node.lineno)
    return sorted(lines)


def python_files(root: Path) -> list:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                   and not (Path(folder, d) / "pyvenv.cfg").exists()]
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return sorted(found)


@pytest.mark.parametrize("source, lines", [
    ("import sys\nsys.path.insert(0, '..')\n", [2]),
    ("import sys\nif True:\n    sys.path.append('x')\n", [3]),
    ("import sys\nsys.path = ['x'] + sys.path\n", [2]),
    ("import sys\nsys.path[:0] = ['x']\n", [2]),
    ("import sys\nsys.path += ['x']\n", [2]),
    ('"""Mentions sys.path.insert(0, x) in prose."""\nimport sys\nprint(sys.path[0])\n', []),
])
def test_the_check_finds_each_kind_of_edit(source, lines):
    assert sys_path_edits(source) == lines


def test_no_python_file_edits_sys_path():
    files = python_files(REPO)
    assert any(p.name == "test_no_sys_path.py" for p in files)  # the walk reaches the tests
    offenders = [f"{p.relative_to(REPO)}:{line}" for p in files for line in sys_path_edits(p.read_text())]
    assert not offenders, f"sys.path edited at {offenders}; import the installed package instead"


def test_scripts_import_as_packages():
    """Every benchmark and experiment module imports from the repository root as its package's member
    (benchmarks import each other as benchmarks.<name>), and one of each runs with ``python -m``."""
    modules = [f"{pkg}.{p.stem}" for pkg in ("benchmarks", "experiments", "training")
               for p in sorted((REPO / pkg).glob("*.py")) if p.stem != "__init__"]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    run = subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for module in ("benchmarks.node_accounting", "experiments.real_tabletop", "training.pretrain"):
        run = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0 and "usage:" in run.stdout, (module, run.stderr[-3000:])
