"""gcross_core.interop.pointcept on checkpoints written here in Pointcept's format, and its command line
training/import_pointcept.py run as a separate process."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gcross_core.checkpoint import load_checkpoint, unprefixed
from gcross_core.data.classes import S3DIS_CLASSES, SCANNET20_CLASSES
from gcross_core.errors import PointceptImportError
from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.interop.pointcept import import_pointcept_checkpoint
from gcross_core.types import PointBatch

SCRIPT = Path(__file__).resolve().parents[3] / "training" / "import_pointcept.py"

SMALL = SpUNetConfig(in_channels=6, base_channels=8, channels=(8, 16, 24, 24, 16, 8), layers=(1, 2, 1, 1, 2, 1))


def _pointcept_file(path, model, prefix="module.backbone.", extra_keys=None, drop=(), reshape=None):
    """Save ``model`` the way Pointcept's CheckpointSaver does: state_dict + epoch + numpy metric."""
    state = {prefix + k: v.clone() for k, v in model.state_dict().items() if k not in drop}
    if reshape:
        state[prefix + reshape] = torch.zeros(3, 3)
    state.update(extra_keys or {})
    torch.save({"epoch": 12, "state_dict": state, "best_metric_value": np.float64(0.42),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.002}]}}, path)
    return path


def _points(seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = torch.unique(torch.randint(0, 24, (600, 3), generator=g), dim=0).int()
    return PointBatch(coord=grid.float() * 0.02, feat=torch.rand(len(grid), 6, generator=g),
                      offset=torch.tensor([len(grid)]), grid_coord=grid)


def test_round_trip_preserves_weights_config_and_outputs(tmp_path):
    torch.manual_seed(0)
    src_model = SpUNet(SMALL)
    for p in src_model.parameters():  # make every tensor distinctive
        p.data.normal_()
    src_model.train()(_points(1))  # update BatchNorm running statistics
    src = _pointcept_file(tmp_path / "model_best.pth", src_model,
                          extra_keys={"module.gaussian_head.weight": torch.zeros(20, 8)})
    dst = tmp_path / "encoder.safetensors"
    report = import_pointcept_checkpoint(src, dst)
    assert report.config == SMALL  # inferred from shapes
    assert report.outside_backbone == ["gaussian_head.weight"] and not report.missing

    tensors, header = load_checkpoint(dst)
    provenance = header.extra
    assert provenance["model"] == "spunet" and header.encoder_config == SMALL.to_dict()
    assert provenance["source"]["epoch"] == 12 and provenance["not_converted_keys"] == ["gaussian_head.weight"]
    assert header.input_features == "rgb_minus1_1_normal" and header.grid_lattice == "center_shift"
    assert header.kind == "encoder" and header.encoder_prefix == "encoder" and provenance["source"]["layout"] == "backbone"
    assert header.grid_size_m == 0.02
    enc = unprefixed(tensors, "encoder")
    assert set(enc) == set(src_model.state_dict())
    loaded = SpUNet(SpUNetConfig.from_dict(header.encoder_config))
    loaded.load_state_dict(enc, strict=True)
    points = _points(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(points), src_model.eval()(points), atol=0, rtol=0)


def test_plain_state_dict_without_backbone_prefix_and_with_classifier(tmp_path):
    cfg = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1), num_classes=13)
    src = _pointcept_file(tmp_path / "seg.pth", SpUNet(cfg), prefix="module.")
    # a classifier's classes are never guessed
    with pytest.raises(PointceptImportError, match=r"DefaultSegmentor with a 13-class classifier.*--classes"):
        import_pointcept_checkpoint(src, tmp_path / "seg.safetensors")
    with pytest.raises(PointceptImportError, match="20 class names given for the 13-class classifier"):
        import_pointcept_checkpoint(src, tmp_path / "seg.safetensors", class_names=SCANNET20_CLASSES)
    report = import_pointcept_checkpoint(src, tmp_path / "seg.safetensors", class_names=S3DIS_CLASSES)
    assert report.config.num_classes == 13 and report.kind == "segmenter" and report.layout == "DefaultSegmentor"
    tensors, header = load_checkpoint(tmp_path / "seg.safetensors")
    assert tuple(tensors["seg_head.weight"].shape) == (13, 8) and "encoder.final.weight" not in tensors
    assert header.class_names == tuple(S3DIS_CLASSES) and header.encoder_config["num_classes"] == 0
    # or only its backbone, for fine-tuning on other classes
    report = import_pointcept_checkpoint(src, tmp_path / "enc.safetensors", prefix="", backbone_only=True)
    tensors, header = load_checkpoint(tmp_path / "enc.safetensors")
    assert header.kind == "encoder" and header.encoder_config["num_classes"] == 0
    assert "final.weight" not in tensors and "backbone.final.weight" in header.extra["not_converted_keys"]


def test_missing_unexpected_and_misshaped_keys_are_listed_and_fail(tmp_path):
    model = SpUNet(SMALL)
    missing = _pointcept_file(tmp_path / "missing.pth", model, drop=("enc.1.block1.bn2.running_var",))
    with pytest.raises(PointceptImportError, match=r"missing key.*enc\.1\.block1\.bn2\.running_var"):
        import_pointcept_checkpoint(missing, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    report = import_pointcept_checkpoint(missing, tmp_path / "partial.safetensors", allow_partial=True)
    assert report.missing == ["enc.1.block1.bn2.running_var"]
    assert load_checkpoint(tmp_path / "partial.safetensors")[1].extra["missing_keys"] == report.missing

    unexpected = _pointcept_file(tmp_path / "unexpected.pth", model,
                                 extra_keys={"module.backbone.enc.0.block0.extra.weight": torch.zeros(2)})
    with pytest.raises(PointceptImportError, match=r"unexpected key.*enc\.0\.block0\.extra\.weight"):
        import_pointcept_checkpoint(unexpected, tmp_path / "out.safetensors", allow_partial=True)

    bad_shape = _pointcept_file(tmp_path / "shape.pth", model, reshape="dec.0.block0.conv1.weight")
    with pytest.raises(PointceptImportError, match=r"dec\.0\.block0\.conv1\.weight has \(3, 3\), expected"):
        import_pointcept_checkpoint(bad_shape, tmp_path / "out.safetensors")

    # a checkpoint of another width against an explicit config: every mismatch is named
    with pytest.raises(PointceptImportError, match=r"conv_input\.0\.weight has \(8, 5, 5, 5, 6\), expected "
                                                       r"\(32, 5, 5, 5, 6\)"):
        import_pointcept_checkpoint(missing, tmp_path / "out.safetensors", config=SpUNetConfig(), allow_partial=True)


def _script(*args):
    """Run training/import_pointcept.py as its users do: a separate process."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli(tmp_path):
    src = _pointcept_file(tmp_path / "m.pth", SpUNet(SMALL))
    ok = _script(src, tmp_path / "m.safetensors")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m.safetensors").is_file()
    assert f"wrote {tmp_path / 'm.safetensors'}" in ok.stderr and "rgb_minus1_1_normal" in ok.stderr
    assert "encoder checkpoint" in ok.stderr and "center_shift" in ok.stderr
    bad = _pointcept_file(tmp_path / "bad.pth", SpUNet(SMALL), drop=("down.0.0.weight",))
    r = _script(bad, tmp_path / "bad.safetensors")
    assert r.returncode == 2, r.stderr  # an unusable input file
    assert "down.0.0.weight" in r.stderr and "Traceback" not in r.stderr
    r = _script(src, tmp_path / "x.safetensors", "--encoder-config", "{not json")
    assert r.returncode == 2 and "--encoder-config" in r.stderr, r.stderr
    r = _script("--help")
    assert r.returncode == 0
    assert "Pointcept" in r.stdout


def test_cli_segmentor_classes_and_conventions(tmp_path, pointcept_pth, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_pointcept_cli", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cfg = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))
    src, _ = pointcept_pth(tmp_path / "lin.pth", "DefaultSegmentorV2", cfg, num_classes=3)
    names = tmp_path / "classes.txt"
    names.write_text("floor\nwall\n\nchair\n")
    assert cli.main([str(src), str(tmp_path / "a.safetensors")]) == 2  # classes are never guessed
    assert "--classes" in capsys.readouterr().err
    assert cli.main([str(src), str(tmp_path / "a.safetensors"), "--classes", "scannet20"]) == 2
    assert "20 class names given for the 3-class classifier" in capsys.readouterr().err
    assert cli.main([str(src), str(tmp_path / "a.safetensors"), "--classes", "nope"]) == 2
    assert "neither a class set" in capsys.readouterr().err
    assert cli.main([str(src), str(tmp_path / "a.safetensors"), "--classes", str(names),
                     "--input-features", "rgb01_normal", "--grid-size", "0.05"]) == 0
    header = load_checkpoint(tmp_path / "a.safetensors")[1]
    assert header.kind == "segmenter" and header.class_names == ("floor", "wall", "chair")
    assert (header.input_features, header.grid_lattice, header.grid_size_m) == ("rgb01_normal", "center_shift", 0.05)
    assert header.extra["source"]["layout"] == "DefaultSegmentorV2" and header.extra["source"]["epoch"] == 7
