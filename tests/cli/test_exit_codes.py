"""Every command-line tool follows one exit-code convention (gcross_core/cli.py).

Bad arguments, configs or input files: exit 2 with one line naming the input, no traceback. Runtime
failures: exit 1 with one line. Checked by running each console script and ``training/*.py`` as a user
would, plus the convention itself on a function that fails each way.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gcross_core.cli import EXIT_BAD_INPUT, EXIT_FAILURE, cli_main
from gcross_core.errors import CheckpointError, ConfigError, GcrossError, InputError, LiveEvalError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRAINING_SCRIPTS = sorted(p.name for p in (REPO / "training").glob("*.py") if p.name != "__init__.py")
CONSOLE_MODULES = {"segment_node": "gcross_ros/node/segment_node.py", "gcross-bag": "gcross_ros/bag/cli.py",
                   "gcross_ros.demo": "gcross_ros/demo.py"}
MISSING = "/nonexistent/gcross-input"


def _run(cmd, tmp_path, timeout=120):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("GCROSS_TRACEBACK", None)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def _script(name):
    return [sys.executable, str(REPO / "training" / name)]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# (tool, arguments) that name a missing input; the tool must exit 2 and name it
MISSING_INPUT = {
    "cache_features.py": ["--scenes", MISSING, "--height", "8", "--width", "8"],
    "evaluate.py": ["--checkpoint", MISSING + ".safetensors", "--scenes", MISSING, "--out", "out"],
    "finetune.py": ["--config", MISSING + ".yaml", "--out", "out"],
    "import_pointcept.py": [MISSING + ".pth", "out.safetensors"],
    "make_clutter.py": ["--scenes", MISSING, "--out", "out"],
    "prepare_scannet.py": ["--scannet-root", MISSING, "--out", "out"],
    "prepare_frames.py": ["--scenes", MISSING, "--out", "out"],
    "pretrain.py": ["--config", MISSING + ".yaml", "--out", "out"],
    "stamp_convention.py": [MISSING + ".safetensors"],
}


def test_every_training_script_is_covered():
    assert set(MISSING_INPUT) | {"make_synthetic.py"} == set(TRAINING_SCRIPTS)


@pytest.mark.parametrize("name", TRAINING_SCRIPTS)
def test_training_script_bad_argument_exits_2(name, tmp_path):
    r = _run(_script(name) + ["--no-such-flag"], tmp_path)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert "Traceback" not in r.stderr and "error:" in r.stderr


@pytest.mark.parametrize("name", sorted(MISSING_INPUT))
def test_training_script_missing_input_exits_2_naming_it(name, tmp_path):
    r = _run(_script(name) + MISSING_INPUT[name], tmp_path)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert MISSING in _last_line(r.stderr), r.stderr


def test_make_synthetic_bad_value_exits_2(tmp_path):
    r = _run(_script("make_synthetic.py") + ["--out", "rooms", "--rooms", "0"], tmp_path)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert "Traceback" not in r.stderr and "rooms" in _last_line(r.stderr)


def test_config_with_unknown_key_exits_2_naming_it(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  no_such_option: 3\n")
    for name in ("pretrain.py", "finetune.py"):
        r = _run(_script(name) + ["--config", str(cfg), "--out", "out"], tmp_path)
        assert r.returncode == EXIT_BAD_INPUT, (name, r.stderr)
        assert "Traceback" not in r.stderr and "no_such_option" in _last_line(r.stderr), (name, r.stderr)


def test_gcross_bag_bad_argument_and_missing_bag_exit_2(tmp_path):
    exe = str(BIN / "gcross-bag")
    r = _run([exe, "info", "--no-such-flag"], tmp_path)
    assert r.returncode == EXIT_BAD_INPUT and "Traceback" not in r.stderr
    for args in (["info", MISSING], ["eval", MISSING, "--checkpoint", MISSING, "--out", "out"]):
        r = _run([exe] + args, tmp_path)
        assert r.returncode == EXIT_BAD_INPUT, (args, r.stderr)
        assert "Traceback" not in r.stderr and MISSING in _last_line(r.stderr), (args, r.stderr)


def test_gcross_bag_record_of_a_folder_without_frames_exits_2(tmp_path):
    (tmp_path / "empty_scene").mkdir()
    r = _run([str(BIN / "gcross-bag"), "record", "--scene", "empty_scene", "--out", "bag"], tmp_path)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert "Traceback" not in r.stderr and "empty_scene" in _last_line(r.stderr)


def test_demo_bad_argument_and_missing_checkpoint_exit_2(tmp_path):
    r = _run([sys.executable, "-m", "gcross_ros.demo", "--no-such-flag"], tmp_path)
    assert r.returncode == EXIT_BAD_INPUT and "Traceback" not in r.stderr
    r = _run([sys.executable, "-m", "gcross_ros.demo", "--checkpoint", MISSING, "--offline-only",
              "--views", "2", "--out", "demo"], tmp_path)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert "Traceback" not in r.stderr and MISSING in _last_line(r.stderr), r.stderr


@pytest.mark.ros
def test_segment_node_missing_checkpoint_exits_2_with_one_fatal_line(tmp_path):
    pytest.importorskip("rclpy")
    r = _run([str(BIN / "segment_node"), "--ros-args", "-p", f"checkpoint:={MISSING}"], tmp_path, timeout=60)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr + r.stdout
    out = r.stderr + r.stdout
    assert "Traceback" not in out and MISSING in out


def _decorated_with_cli_main(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "cli_main"
                       for d in node.decorator_list)
    return False


@pytest.mark.parametrize("path", [f"training/{n}" for n in TRAINING_SCRIPTS] + sorted(CONSOLE_MODULES.values()))
def test_every_tool_main_goes_through_cli_main(path):
    """Runtime failures exit 1 only if the tool's main is wrapped: every one of them is."""
    assert _decorated_with_cli_main(REPO / path), f"{path}: main is not decorated with gcross_core.cli.cli_main"


@pytest.mark.parametrize("exc, code, words", [
    (InputError("scene folder /x has no coord.npy"), EXIT_BAD_INPUT, "/x"),
    (ConfigError("train.lr: expected a float"), EXIT_BAD_INPUT, "train.lr"),
    (CheckpointError("/c.safetensors is not a segmenter"), EXIT_BAD_INPUT, "/c.safetensors"),
    (FileNotFoundError("/missing.yaml does not exist"), EXIT_BAD_INPUT, "/missing.yaml"),
    (LiveEvalError("no cloud on /labelled_cloud within 20 s"), EXIT_FAILURE, "/labelled_cloud"),
    (RuntimeError("CUDA error: out of memory\nmore detail"), EXIT_FAILURE, "RuntimeError: CUDA error"),
    (KeyError("oops"), EXIT_FAILURE, "KeyError"),
])
def test_cli_main_maps_exceptions_to_one_line_and_a_status(exc, code, words, capsys):
    @cli_main("tool")
    def main(argv=None):
        raise exc

    assert main([]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tool: ") and words in err


def test_cli_main_passes_argparse_exits_and_results_through():
    @cli_main("tool")
    def ok(argv=None):
        return 0

    @cli_main("tool")
    def usage(argv=None):
        raise SystemExit(2)

    assert ok([]) == 0
    with pytest.raises(SystemExit) as e:
        usage([])
    assert e.value.code == 2


def test_every_project_exception_derives_from_gcross_error():
    import gcross_core.errors as errors

    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert len(classes) >= 8
    assert all(issubclass(c, GcrossError) for c in classes)
    # and no module of the package defines an exception class of its own outside errors.py
    offenders = []
    for path in list((REPO / "gcross_core").rglob("*.py")) + list((REPO / "gcross_ros").rglob("*.py")) \
            + list((REPO / "training").glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases):
                offenders.append(f"{path.relative_to(REPO)}:{node.name}")
    assert not offenders, offenders
