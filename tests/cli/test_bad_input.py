"""Every tool exits 2 on a damaged input of each kind it reads, with one stderr line naming the file.

test_exit_codes.py checks missing inputs and bad flags by running the tools as a user would; here each
tool's ``main`` runs in-process (fast) on tiny inputs that exist but are truncated or garbled: .npy
arrays, images, pose and intrinsic text files, YAML configs, checkpoints, .pth files, bags, PLY and .sens
files. The failure must be an InputError (or a missing-file error), reported as one line that names the
damaged file: never a traceback, never exit 1 as if the tool itself had failed.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from gcross_core.cli import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[2]
TRAINING = sorted(p.stem for p in (REPO / "training").glob("*.py") if p.stem != "__init__")


def _training_main(name: str):
    """``main`` of ``training/<name>.py``, imported from its file (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bad_input_{name}", REPO / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _bag_main():
    pytest.importorskip("rosbags")
    from gcross_ros.bag.cli import main

    return main


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _garble(path: Path, text: str = "\x00\x01 not what it should be {[") -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- tiny good inputs, damaged per test

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny procedural room (points, labels, two 32x24 frames) and its bag."""
    from gcross_core.data.scene import write_scene
    from gcross_core.data.synthetic import RoomConfig, make_room

    root = tmp_path_factory.mktemp("good")
    write_scene(make_room(0, RoomConfig(num_points=300, num_views=2, width=32, height=24)), root / "scene",
                color_format="png")
    out = {"root": root, "scene": root / "scene"}
    try:
        import rosbags  # noqa: F401
    except ImportError:
        return out
    from gcross_core.data.scene import load_scene
    from gcross_ros.bag.format import RecordConfig
    from gcross_ros.bag.writer import record_scene

    record_scene(load_scene(root / "scene"), root / "bag", RecordConfig(), progress=False)
    out["bag"] = root / "bag"
    return out


def _scene(good, tmp_path) -> Path:
    return Path(shutil.copytree(good["scene"], tmp_path / "scene"))


def _bag(good, tmp_path) -> Path:
    if "bag" not in good:
        pytest.skip("rosbags is not installed")
    return Path(shutil.copytree(good["bag"], tmp_path / "bag"))


def _bag_data_file(bag: Path) -> Path:
    (data,) = [p for p in bag.iterdir() if p.suffix in (".db3", ".mcap")]
    return data


def _demo_checkpoint() -> str:
    from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT

    return str(DEMO_CHECKPOINT)


def _bad_checkpoint(tmp_path) -> Path:
    return _truncate(Path(shutil.copy(_demo_checkpoint(), tmp_path / "seg.safetensors")), 0.3)


def _frames(good, tmp_path) -> Path:
    return _scene(good, tmp_path) / "frames"


# Each case: (tool, what is damaged) -> builder(good, tmp_path) returning (argv, the damaged path).
# The tool is a training script name or "gcross-bag".

def _pretrain_yaml(good, tmp):
    cfg = _garble(tmp / "bad.yaml", "model:\n  encoder: [16, 32\n")
    return ["--config", str(cfg), "--out", str(tmp / "run"), "--no-progress", "--no-tensorboard"], cfg


def _pretrain_scene(good, tmp):
    scene = _scene(good, tmp)
    _truncate(scene / "coord.npy")
    args = ["--config", str(REPO / "training/configs/synthetic_tiny.yaml"), "--out", str(tmp / "run"),
            "--no-progress", "--no-tensorboard", "--set", f"data.scenes=[{scene}]", "--set", "data.synthetic.rooms=0",
            "--set", "train.device=cpu"]
    return args, scene / "coord.npy"


def _finetune_yaml(good, tmp):
    cfg = _garble(tmp / "bad.yaml", "train: {epochs: 1\n")
    return ["--config", str(cfg), "--out", str(tmp / "run"), "--no-progress", "--no-tensorboard"], cfg


def _finetune_pretrained(good, tmp):
    ckpt = _bad_checkpoint(tmp)
    return ["--config", str(REPO / "training/configs/finetune_synthetic.yaml"), "--pretrained", str(ckpt),
            "--out", str(tmp / "run"), "--no-progress", "--no-tensorboard",
            "--set", f"data.root={good['root']}", "--set", "data.train_split=", "--set", "data.val_split=",
            "--set", "train.device=cpu"], ckpt


def _evaluate_checkpoint(good, tmp):
    ckpt = _bad_checkpoint(tmp)
    return ["--checkpoint", str(ckpt), "--scenes", str(good["scene"]), "--out", str(tmp / "out"),
            "--no-progress"], ckpt


def _evaluate_scene(good, tmp):
    scene = _scene(good, tmp)
    _truncate(scene / "coord.npy")
    return ["--checkpoint", _demo_checkpoint(), "--scenes", str(scene), "--out", str(tmp / "out"),
            "--no-progress"], scene / "coord.npy"


def _evaluate_labels(good, tmp):
    scene = _scene(good, tmp)
    _truncate(scene / "segment.npy", 0.9)  # the labels of the demo segmenter's classes
    return ["--checkpoint", _demo_checkpoint(), "--scenes", str(scene), "--out", str(tmp / "out"),
            "--no-progress"], scene / "segment.npy"


def _cache_color(good, tmp):
    scene = _scene(good, tmp)
    color = _truncate(sorted((scene / "frames" / "color").iterdir())[1])
    return ["--scenes", str(scene), "--height", "32", "--width", "32", "--device", "cpu", "--no-progress"], color


def _cache_weights(good, tmp):
    weights = _garble(tmp / "weights.pth")
    return ["--scenes", str(good["scene"]), "--height", "32", "--width", "32", "--device", "cpu", "--no-progress",
            "--source", str(weights)], weights


def _import_pth(good, tmp):
    pth = _garble(tmp / "model_best.pth", "PK\x03\x04 truncated")
    return [str(pth), str(tmp / "out.safetensors")], pth


def _import_classes(good, tmp):
    names = tmp / "classes.txt"
    names.write_bytes(b"\xff\xfe\x00garbled\x81\x82")
    pth = _garble(tmp / "model_best.pth", "PK\x03\x04 truncated")
    return [str(pth), str(tmp / "out.safetensors"), "--classes", str(names)], names


def _make_clutter_scene(good, tmp):
    scene = _scene(good, tmp)
    _truncate(scene / "coord.npy")
    return ["--scenes", str(scene), "--out", str(tmp / "clutter"), "--num-scenes", "1"], scene / "coord.npy"


def _make_synthetic_out(good, tmp):
    out = _garble(tmp / "rooms")  # a file where the output folder should go
    return ["--out", str(out), "--rooms", "1", "--views", "1", "--points", "200", "--width", "16",
            "--height", "12", "--quiet"], out


def _prepare_frames_depth(good, tmp):
    frames = _frames(good, tmp)
    depth = _truncate(sorted((frames / "depth").iterdir())[0])
    return ["--scenes", str(frames.parent), "--out", str(tmp / "out")], depth


def _prepare_frames_pose(good, tmp):
    frames = _frames(good, tmp)
    pose = _garble(sorted((frames / "pose").iterdir())[0], "1 0 0 0\n0 1 0 zero\n")
    return ["--scenes", str(frames.parent), "--out", str(tmp / "out")], pose


def _prepare_frames_intrinsics(good, tmp):
    frames = _frames(good, tmp)
    k = _garble(frames / "intrinsic" / "intrinsic_color.txt", "500 0 320\n")
    return ["--scenes", str(frames.parent), "--out", str(tmp / "out")], k


def _scannet_scan(tmp) -> Path:
    """A ScanNet scan folder with a binary PLY mesh of one triangle (the only file a --no-frames run needs
    besides the label files, which are optional)."""
    scan = tmp / "scannet" / "scans" / "scene0000_00"
    scan.mkdir(parents=True)
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "element face 1\nproperty list uchar int vertex_indices\nend_header\n").encode()
    vertex = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    vertex["x"], vertex["y"] = [0, 1, 0], [0, 0, 1]
    face = np.array([3], np.uint8).tobytes() + np.array([0, 1, 2], "<i4").tobytes()
    (scan / "scene0000_00_vh_clean_2.ply").write_bytes(header + vertex.tobytes() + face)
    return scan


def _prepare_scannet_ply(good, tmp):
    scan = _scannet_scan(tmp)
    ply = _truncate(scan / "scene0000_00_vh_clean_2.ply", 0.8)
    return ["--scannet-root", str(tmp / "scannet"), "--out", str(tmp / "out"), "--no-frames", "--workers", "1",
            "--quiet"], ply


def _prepare_scannet_sens(good, tmp):
    scan = _scannet_scan(tmp)
    sens = scan / "scene0000_00.sens"
    sens.write_bytes(np.array([4], "<u4").tobytes() + b"\x01\x02")  # a version and then nothing
    return ["--scannet-root", str(tmp / "scannet"), "--out", str(tmp / "out"), "--workers", "1", "--quiet"], sens


def _stamp(good, tmp):
    return [str(_bad_checkpoint(tmp))], tmp / "seg.safetensors"


def _record_scene(good, tmp):
    scene = _scene(good, tmp)
    _truncate(scene / "coord.npy")
    return ["-q", "record", "--scene", str(scene), "--out", str(tmp / "bag")], scene / "coord.npy"


def _record_color(good, tmp):
    scene = _scene(good, tmp)
    color = _truncate(sorted((scene / "frames" / "color").iterdir())[1])
    return ["-q", "record", "--scene", str(scene), "--out", str(tmp / "bag")], color


def _record_classes(good, tmp):
    names = tmp / "classes.txt"
    names.write_bytes(b"\xff\xfe\x00garbled\x81\x82")
    return ["-q", "record", "--scene", str(good["scene"]), "--out", str(tmp / "bag"), "--classes", str(names)], names


def _info_data(good, tmp):
    bag = _bag(good, tmp)
    _truncate(_bag_data_file(bag), 0.3)
    return ["info", str(bag)], bag


def _info_metadata(good, tmp):
    bag = _bag(good, tmp)
    _garble(bag / "metadata.yaml", "rosbag2_bagfile_information: {version: [")
    return ["info", str(bag)], bag


def _eval_bag(good, tmp):
    bag = _bag(good, tmp)
    _truncate(_bag_data_file(bag), 0.3)
    return ["-q", "eval", str(bag), "--checkpoint", _demo_checkpoint(), "--out", str(tmp / "out")], bag


def _eval_checkpoint(good, tmp):
    ckpt = _bad_checkpoint(tmp)
    return ["-q", "eval", str(_bag(good, tmp)), "--checkpoint", str(ckpt), "--out", str(tmp / "out")], ckpt


def _eval_params_yaml(good, tmp):
    params = _garble(tmp / "params.yaml", "gcross_segment:\n  ros__parameters: {voxel_size_m: [\n")
    return ["-q", "eval", str(_bag(good, tmp)), "--checkpoint", _demo_checkpoint(), "--out", str(tmp / "out"),
            "--params-file", str(params)], params


def _eval_params_value(good, tmp):
    params = _garble(tmp / "params.yaml", "gcross_segment:\n  ros__parameters:\n    queue_size: 2.5\n")
    return ["-q", "eval", str(_bag(good, tmp)), "--checkpoint", _demo_checkpoint(), "--out", str(tmp / "out"),
            "--params-file", str(params)], params


def _eval_live_params(good, tmp):
    params = _garble(tmp / "params.yaml", "gcross_segment:\n  ros__parameters:\n    voxel_size_m: fine\n")
    return ["-q", "eval-live", str(_bag(good, tmp)), "--out", str(tmp / "out"), "--params-file", str(params)], params


def _export_bag(good, tmp):
    bag = _bag(good, tmp)
    _truncate(_bag_data_file(bag), 0.3)
    return ["-q", "export", str(bag), "--out", str(tmp / "scene")], bag


CASES = {
    ("pretrain", "yaml"): _pretrain_yaml,
    ("pretrain", "npy"): _pretrain_scene,
    ("finetune", "yaml"): _finetune_yaml,
    ("finetune", "checkpoint"): _finetune_pretrained,
    ("evaluate", "checkpoint"): _evaluate_checkpoint,
    ("evaluate", "npy"): _evaluate_scene,
    ("evaluate", "labels"): _evaluate_labels,
    ("cache_features", "image"): _cache_color,
    ("cache_features", "weights"): _cache_weights,
    ("import_pointcept", "pth"): _import_pth,
    ("import_pointcept", "classes"): _import_classes,
    ("make_clutter", "npy"): _make_clutter_scene,
    ("make_synthetic", "out"): _make_synthetic_out,
    ("prepare_frames", "depth"): _prepare_frames_depth,
    ("prepare_frames", "pose"): _prepare_frames_pose,
    ("prepare_frames", "intrinsics"): _prepare_frames_intrinsics,
    ("prepare_scannet", "ply"): _prepare_scannet_ply,
    ("prepare_scannet", "sens"): _prepare_scannet_sens,
    ("stamp_convention", "checkpoint"): _stamp,
    ("gcross-bag", "record-npy"): _record_scene,
    ("gcross-bag", "record-image"): _record_color,
    ("gcross-bag", "record-classes"): _record_classes,
    ("gcross-bag", "info-data"): _info_data,
    ("gcross-bag", "info-metadata"): _info_metadata,
    ("gcross-bag", "eval-bag"): _eval_bag,
    ("gcross-bag", "eval-checkpoint"): _eval_checkpoint,
    ("gcross-bag", "eval-params-yaml"): _eval_params_yaml,
    ("gcross-bag", "eval-params-value"): _eval_params_value,
    ("gcross-bag", "eval-live-params"): _eval_live_params,
    ("gcross-bag", "export-bag"): _export_bag,
}


def test_every_tool_is_fed_bad_input():
    assert {tool for tool, _ in CASES} == set(TRAINING) | {"gcross-bag"}
    from gcross_ros.bag.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    # play starts rclpy before it reads the bag: fed in a process of its own, below
    fed = {what.split("-")[0] if not what.startswith("eval-live") else "eval-live"
           for tool, what in CASES if tool == "gcross-bag"}
    assert fed | {"play"} == set(sub.choices)


def test_play_of_a_damaged_bag_exits_2_with_one_line_naming_it(good, tmp_path):
    pytest.importorskip("rclpy")
    import os
    import subprocess

    bag = _bag(good, tmp_path)
    _truncate(_bag_data_file(bag), 0.3)
    env = {k: v for k, v in os.environ.items() if k != "GCROSS_TRACEBACK"}
    env["ROS_DOMAIN_ID"] = str(150 + os.getpid() % 50)  # nothing else hears the replay
    proc = subprocess.run([sys.executable, "-c", "import sys; from gcross_ros.bag.cli import main; sys.exit(main())",
                           "play", str(bag)], capture_output=True, text=True, timeout=120, env=env)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_BAD_INPUT, err
    assert len(err) == 1 and str(bag) in err[0], err


@pytest.mark.parametrize("tool,what", [pytest.param(t, w, id=f"{t}-{w}") for t, w in sorted(CASES)])
def test_damaged_input_exits_2_with_one_line_naming_the_file(tool, what, good, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GCROSS_TRACEBACK", raising=False)
    monkeypatch.chdir(tmp_path)
    argv, damaged = CASES[(tool, what)](good, tmp_path)
    main = _bag_main() if tool == "gcross-bag" else _training_main(tool)
    capsys.readouterr()
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(err) == 1, err
    assert str(damaged) in err[0], err
