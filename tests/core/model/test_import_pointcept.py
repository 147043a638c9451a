"""training/import_pointcept.py on checkpoints written here in Pointcept's format."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gcross_core.model.encoder import SpUNet, SpUNetConfig
from gcross_core.checkpoint import load_checkpoint, unprefixed
from gcross_core.types import PointBatch

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("import_pointcept", ROOT / "training" / "import_pointcept.py")
imp = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("import_pointcept", imp)  # dataclasses look their module up by name
_spec.loader.exec_module(imp)

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
                          extra_keys={"module.seg_head.weight": torch.zeros(20, 8)})
    dst = tmp_path / "encoder.safetensors"
    report = imp.import_pointcept(src, dst)
    assert report.config == SMALL  # inferred from shapes
    assert report.outside_backbone == ["seg_head.weight"] and not report.missing

    tensors, meta = load_checkpoint(dst)
    assert meta["model"] == "spunet" and meta["encoder_config"] == SMALL.to_dict()
    assert meta["source"]["epoch"] == 12 and meta["not_converted_keys"] == ["seg_head.weight"]
    assert meta["input_features"] == "rgb_minus1_1_normal" and meta["encoder_prefix"] == "encoder"
    enc = unprefixed(tensors, "encoder")
    assert set(enc) == set(src_model.state_dict())
    loaded = SpUNet(SpUNetConfig.from_dict(meta["encoder_config"]))
    loaded.load_state_dict(enc, strict=True)
    points = _points(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(points), src_model.eval()(points), atol=0, rtol=0)


def test_plain_state_dict_without_backbone_prefix_and_with_classifier(tmp_path):
    cfg = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1), num_classes=13)
    src = _pointcept_file(tmp_path / "seg.pth", SpUNet(cfg), prefix="module.")
    report = imp.import_pointcept(src, tmp_path / "seg.safetensors", prefix="")
    assert report.config.num_classes == 13
    tensors, _ = load_checkpoint(tmp_path / "seg.safetensors")
    assert tuple(tensors["final.weight"].shape) == (13, 1, 1, 1, 8)


def test_missing_unexpected_and_misshaped_keys_are_listed_and_fail(tmp_path):
    model = SpUNet(SMALL)
    missing = _pointcept_file(tmp_path / "missing.pth", model, drop=("enc.1.block1.bn2.running_var",))
    with pytest.raises(imp.PointceptImportError, match=r"missing key.*enc\.1\.block1\.bn2\.running_var"):
        imp.import_pointcept(missing, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    report = imp.import_pointcept(missing, tmp_path / "partial.safetensors", allow_partial=True)
    assert report.missing == ["enc.1.block1.bn2.running_var"]
    assert load_checkpoint(tmp_path / "partial.safetensors")[1]["missing_keys"] == report.missing

    unexpected = _pointcept_file(tmp_path / "unexpected.pth", model,
                                 extra_keys={"module.backbone.enc.0.block0.extra.weight": torch.zeros(2)})
    with pytest.raises(imp.PointceptImportError, match=r"unexpected key.*enc\.0\.block0\.extra\.weight"):
        imp.import_pointcept(unexpected, tmp_path / "out.safetensors", allow_partial=True)

    bad_shape = _pointcept_file(tmp_path / "shape.pth", model, reshape="dec.0.block0.conv1.weight")
    with pytest.raises(imp.PointceptImportError, match=r"dec\.0\.block0\.conv1\.weight has \(3, 3\), expected"):
        imp.import_pointcept(bad_shape, tmp_path / "out.safetensors")

    # a checkpoint of another width against an explicit config: every mismatch is named
    with pytest.raises(imp.PointceptImportError, match=r"conv_input\.0\.weight has \(8, 5, 5, 5, 6\), expected "
                                                       r"\(32, 5, 5, 5, 6\)"):
        imp.import_pointcept(missing, tmp_path / "out.safetensors", config=SpUNetConfig(), allow_partial=True)


def test_refuses_pickled_code_and_non_checkpoints(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Path("/tmp")}, evil)
    with pytest.raises(imp.PointceptImportError, match="weights_only"):
        imp.load_pointcept_checkpoint(evil)
    with pytest.raises(imp.PointceptImportError, match="does not exist"):
        imp.load_pointcept_checkpoint(tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"state_dict": {}}, empty)
    with pytest.raises(imp.PointceptImportError, match="no state dict"):
        imp.load_pointcept_checkpoint(empty)


def test_cli(tmp_path, capsys):
    src = _pointcept_file(tmp_path / "m.pth", SpUNet(SMALL))
    assert imp.main([str(src), str(tmp_path / "m.safetensors")]) == 0
    assert (tmp_path / "m.safetensors").is_file()
    bad = _pointcept_file(tmp_path / "bad.pth", SpUNet(SMALL), drop=("down.0.0.weight",))
    assert imp.main([str(bad), str(tmp_path / "bad.safetensors")]) == 2  # an unusable input file
    assert imp.main([str(src), str(tmp_path / "x.safetensors"), "--encoder-config", "{not json"]) == 2
    with pytest.raises(SystemExit) as e:
        imp.main(["--help"])
    assert e.value.code == 0
    assert "Pointcept" in capsys.readouterr().out


def test_reads_numpy_scalars_saved_under_numpy_1_names(tmp_path):
    # Pointcept stores best_metric_value as a numpy float; files from numpy < 2 name its constructor
    # numpy.core.multiarray.scalar (legacy torch format so the pickle can be edited in place)
    import io

    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_metric_value": np.float64(0.5)}, buf,
               _use_new_zipfile_serialization=False)
    old = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n" in old
    (tmp_path / "old.pth").write_bytes(old)
    state, extra = imp.load_pointcept_checkpoint(tmp_path / "old.pth")
    assert torch.equal(state["w"], torch.ones(2)) and float(extra["best_metric_value"]) == 0.5
