"""gcross_core's import graph runs one way: every module imports only from its own package or from lower
levels, never up (read from the source with ``ast``, lazy imports inside functions included).

The levels, from the ground up. A package may import from every level below its own; two packages on the
same level do not import each other.
"""
import ast
from pathlib import Path

import pytest

LEVELS = [
    # what every other module uses: the exceptions, the data types, atomic file writing
    ["errors", "types", "files"],
    # leaf utilities, each on its own: camera geometry, images, config files, command lines, metrics,
    # the checkpoint file format, the renderer
    ["geometry", "image", "config", "cli", "evaluation", "checkpoint", "render"],
    # point clouds, frames and scenes on disk; the generic trainer
    ["data", "train"],
    # the networks and their input (encoder, Gaussian head, GaussianCross, encoder input)
    ["model"],
    # segmentation heads, training and inference
    ["segmentation"],
    # paths built on segmentation: the voxel map behind the node; foreign (Pointcept) weights in
    ["mapping", "interop"],
    # self-supervised pretraining (uses fusion for frames-only scenes)
    ["pretraining"],
]
# top-level packages that use gcross_core; gcross_core never imports them
ABOVE_CORE = {"gcross_ros", "training", "benchmarks", "experiments"}

ROOT = Path(__file__).resolve().parents[2]
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}


def _unit(module: str) -> str:
    """gcross_core.model.api -> model; gcross_core.checkpoint -> checkpoint."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path):
    """(line, imported module) of every absolute import in ``path``; ``from gcross_core import x`` gives
    gcross_core.x."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "gcross_core":
                for alias in node.names:
                    yield node.lineno, f"gcross_core.{alias.name}"
            else:
                yield node.lineno, node.module


def upward_imports(files, root: Path = ROOT) -> list:
    bad = []
    for path in files:
        unit = _unit(_module_name(path, root))
        for line, target in imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(root)}:{line} imports {target}"
            if top in ABOVE_CORE:
                bad.append(f"{where} (gcross_core never imports {top})")
            elif top == "gcross_core" and unit:
                other = _unit(target)
                if other and other != unit and LEVEL[other] >= LEVEL[unit]:
                    bad.append(f"{where} ({other!r} is on level {LEVEL[other]}, {unit!r} on level {LEVEL[unit]})")
    return bad


CORE_FILES = sorted((ROOT / "gcross_core").rglob("*.py"))


def test_every_package_of_gcross_core_has_a_level():
    units = {_unit(_module_name(p)) for p in CORE_FILES} - {""}
    assert units - set(LEVEL) == set(), "place new packages of gcross_core in LEVELS"
    assert set(LEVEL) - units == set(), "LEVELS names packages that no longer exist"


def test_no_module_imports_from_a_higher_level():
    assert upward_imports(CORE_FILES) == []


@pytest.mark.parametrize("importer, imported, ok", [
    ("gcross_core/data/x.py", "from gcross_core.mapping.fusion import f", False),
    ("gcross_core/model/x.py", "from gcross_core.segmentation.model import f", False),
    ("gcross_core/segmentation/x.py", "from gcross_core.mapping import fusion", False),
    ("gcross_core/model/x.py", "def f():\n    from gcross_core import pretraining", False),  # lazy counts
    ("gcross_core/data/x.py", "from gcross_core.train import trainer", False),  # same level, other package
    ("gcross_core/data/x.py", "from gcross_core.render import render", True),
    ("gcross_core/render/x.py", "import gcross_ros.msgs", False),
    ("gcross_core/model/x.py", "from gcross_core.data.grid import grid_sample", True),
    ("gcross_core/model/x.py", "from gcross_core.model.encoder import SpUNet", True),
])
def test_the_check_sees_upward_imports(tmp_path, importer, imported, ok):
    path = tmp_path / importer
    path.parent.mkdir(parents=True)
    path.write_text(imported + "\n")
    assert (upward_imports([path], root=tmp_path) == []) == ok
