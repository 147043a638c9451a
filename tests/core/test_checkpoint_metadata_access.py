"""Checkpoint metadata is read in one place: gcross_core/checkpoint.py turns it into a CheckpointHeader and
every other module reads the header's attributes (an AST scan of the library, the ROS package, the
command lines, benchmarks and experiments; tests may poke at files on purpose).

What the scan refuses outside checkpoint.py:
- importing safetensors (the raw metadata's only door);
- indexing or ``.get``-ing what a checkpoint reader returned (``load_checkpoint(...)[1]``, ``read_header``,
  ``checkpoint_encoder``'s third item, ``load_pretrained_encoder``), or the free-form ``extra`` of it:
  tools act on typed fields only;
- indexing or ``.get``-ing a header field's key on a variable named like metadata (``meta["grid_size_m"]``).
"""
import ast
import dataclasses
from pathlib import Path

import pytest

from gcross_core.checkpoint import CheckpointHeader

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["gcross_core", "gcross_ros", "training", "benchmarks", "experiments", "scripts", "launch"]
THE_READER = ROOT / "gcross_core" / "checkpoint.py"
# function -> which item of its result is the header (None: the result itself)
READERS = {"load_checkpoint": 1, "read_header": None, "checkpoint_encoder": 2, "load_pretrained_encoder": None}
# header fields whose key never means anything else in this code base ("class_names" and "config" also
# name fields of a saved map's map.json, "extra"/"source" are not metadata keys)
FIELD_KEYS = {f.name for f in dataclasses.fields(CheckpointHeader)} - {"class_names", "config", "extra", "source"}
DICT_METHODS = {"get", "pop", "setdefault", "items", "keys", "values"}


def _called(node) -> str:
    """Name of the function a Call node calls (``f(...)`` or ``x.f(...)``), else ''."""
    if isinstance(node, ast.Call):
        f = node.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    return ""


def _header_expr(node, headers) -> bool:
    """Whether ``node`` evaluates to a checkpoint header (or to its ``extra``)."""
    if isinstance(node, ast.Attribute) and node.attr == "extra":
        return _header_expr(node.value, headers)
    if isinstance(node, ast.Name):
        return node.id in headers
    if _called(node) in READERS and READERS[_called(node)] is None:
        return True
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return READERS.get(_called(node.value), "-") == node.slice.value
    return False


def _meta_named(node) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "meta" in name.lower()


def violations(source: str, where: str) -> list:
    tree = ast.parse(source)
    bad = []
    # names bound to a header anywhere in the module (tuple unpacking: the reader's header item)
    headers = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            reader = _called(node.value)
            for t in targets:
                if reader in READERS and READERS[reader] is not None and isinstance(t, ast.Tuple):
                    item = t.elts[READERS[reader]] if len(t.elts) > READERS[reader] else None
                    if isinstance(item, ast.Name):
                        headers.add(item.id)
                elif isinstance(t, ast.Name) and _header_expr(node.value, set()):
                    headers.add(t.id)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] == "safetensors" for n in names):
                bad.append(f"{where}:{node.lineno} imports safetensors")
        target = None
        if isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in DICT_METHODS):
            target, key = node.func.value, (node.args[0] if node.args else None)
        if target is None:
            continue
        if _header_expr(target, headers):
            bad.append(f"{where}:{node.lineno} indexes checkpoint metadata")
        elif _meta_named(target) and isinstance(key, ast.Constant) and key.value in FIELD_KEYS:
            bad.append(f"{where}:{node.lineno} reads metadata key {key.value!r}")
    return bad


def test_only_checkpoint_py_reads_checkpoint_metadata():
    files = [p for d in SCANNED if (ROOT / d).is_dir() for p in sorted((ROOT / d).rglob("*.py"))]
    assert THE_READER in files and len(files) > 50
    bad = [v for p in files if p != THE_READER for v in violations(p.read_text(), str(p.relative_to(ROOT)))]
    assert bad == []


@pytest.mark.parametrize("code", [
    "tensors, meta = load_checkpoint(p)\ng = meta['grid_size_m']",
    "tensors, header = load_checkpoint(p)\nk = header.get('kind')",
    "x = load_checkpoint(p)[1]['class_names']",
    "h = read_header(p)\nsrc = h.extra['source']",
    "x = read_header(p).extra.get('pretrained')",
    "_, cfg, meta = checkpoint_encoder(p)\nprefix = meta.get('encoder_prefix', 'encoder')",
    "m = load_pretrained_encoder(model, p)\nm['kind']",
    "def f(metadata):\n    return metadata.get('input_features')",
    "self.checkpoint_metadata['grid_lattice'] = 'x'",
    "from safetensors import safe_open",
])
def test_the_scan_catches_string_keyed_reads(code):
    assert violations(code, "x.py")


@pytest.mark.parametrize("code", [
    "tensors, header = load_checkpoint(p)\nw = tensors['encoder.w']\ng = header.grid_size_m",
    "meta = json.loads(text)\nvoxel = meta['voxel_size_m']\nnames = meta['class_names']",
    "state, cfg, header = checkpoint_encoder(p)\nstate['w']",
])
def test_the_scan_lets_typed_reads_and_other_dicts_pass(code):
    assert violations(code, "x.py") == []
