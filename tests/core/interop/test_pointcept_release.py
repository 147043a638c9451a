"""Pointcept-layout checkpoints end to end: read without running pickled code, imported as the project's
checkpoint kinds, and predicting exactly what Pointcept's own inference would.

The reference below is written the way Pointcept runs a SpUNet test pass (CenterShift(apply_z=True),
GridSample: floor(coord / grid) - min, NormalizeColor, features = colour then normal; one point per voxel,
here the first in input order, its output copied to the voxel's other points) and is independent of
gcross_core.data.grid and gcross_core.model.features.
"""
import os
import zipfile

import pickle

import numpy as np
import pytest
import torch

from gcross_core.checkpoint import load_checkpoint, read_header, save_checkpoint
from gcross_core.data.grid import grid_sample
from gcross_core.errors import CheckpointError, PointceptImportError
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.model.features import GCROSS_CONVENTION, InputConvention, encoder_features
from gcross_core.interop.pointcept import import_pointcept_checkpoint, load_pointcept_checkpoint
from gcross_core.interop.pth import Inert, read_pth
from gcross_core.segmentation.dataset import SegDataConfig, training_sample
from gcross_core.segmentation.run import FinetuneConfig, build_model, finetune_convention
from gcross_core.segmentation.segmenter import Segmenter
from gcross_core.types import PointBatch

TINY = SpUNetConfig(base_channels=8, channels=(8, 16, 16, 8), layers=(1, 1, 1, 1))
CLASSES = ["c0", "c1", "c2", "c3", "c4"]
GRID = 0.05


def _cloud(n=4000, seed=3):
    """A room-sized cloud away from the origin (so centring and flooring from the minimum differ)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([0.37, -1.21, 0.13]), np.array([3.91, 1.74, 2.46])
    coord = (lo + rng.uniform(0, 1, (n, 3)) * (hi - lo)).astype(np.float32)
    coord[: n // 2, 2] = lo[2] + rng.uniform(0, 0.04, n // 2)  # a dense floor: voxels with several points
    color = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return coord, color, normal


def pointcept_inference(net, coord, color, normal, grid_size, colour_divisor, colour_offset):
    """Per-point logits as Pointcept's test pass computes them (module docstring)."""
    c = coord.astype(np.float32).copy()
    x_min, y_min, z_min = c.min(axis=0)
    x_max, y_max, _ = c.max(axis=0)
    c -= np.array([(x_min + x_max) / 2, (y_min + y_max) / 2, z_min], np.float32)  # CenterShift(apply_z=True)
    g = np.floor(c / np.float32(grid_size)).astype(np.int64)  # GridSample
    g -= g.min(axis=0)
    _, first, inverse = np.unique(g, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    colour = color.astype(np.float32) / np.float32(colour_divisor) + np.float32(colour_offset)  # NormalizeColor
    feat = np.concatenate([colour, normal.astype(np.float32)], axis=1)[first]  # feat_keys=("color", "normal")
    batch = PointBatch(coord=torch.from_numpy(c[first]), feat=torch.from_numpy(feat),
                       offset=torch.tensor([len(first)]), grid_coord=torch.from_numpy(g[first]).int())
    with torch.no_grad():
        logits = net(batch)
    return logits[torch.from_numpy(inverse)].numpy()


class _KeepLogits(torch.nn.Module):
    """Wraps the Segmenter's model and keeps its per-point logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.logits = inner, None

    def forward(self, batch):
        out = self.inner(batch)
        self.logits = out[batch.inverse].numpy()
        return out


COLOUR = {"rgb_minus1_1_normal": (127.5, -1.0), "rgb01_normal": (255.0, 0.0)}


@pytest.mark.parametrize("layout", ["DefaultSegmentor", "DefaultSegmentorV2"])
@pytest.mark.parametrize("input_features", ["rgb_minus1_1_normal", "rgb01_normal"])
def test_imported_segmentor_predicts_what_pointcept_predicts(pointcept_pth, tmp_path, one_torch_thread, layout,
                                                             input_features):
    src, net = pointcept_pth(tmp_path / "model_best.pth", layout, TINY, num_classes=len(CLASSES))
    dst = tmp_path / "seg.safetensors"
    convention = InputConvention(input_features, "center_shift")
    report = import_pointcept_checkpoint(src, dst, class_names=CLASSES, convention=convention, grid_size_m=GRID)
    assert (report.kind, report.layout) == ("segmenter", layout)

    seg = Segmenter.from_checkpoint(dst)
    assert seg.convention == convention and seg.class_names == CLASSES and seg.grid_size_m == GRID
    seg.model = _KeepLogits(seg.model)
    coord, color, normal = _cloud()
    labels, _, probs = seg.predict(coord, color, normal, return_probs=True)
    ref_logits = pointcept_inference(net, coord, color, normal, GRID, *COLOUR[input_features])
    np.testing.assert_allclose(seg.model.logits, ref_logits, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(labels, ref_logits.argmax(1))
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(ref_logits), 1).numpy(), atol=1e-5)

    # the conventions matter here: gcross's own (min-corner lattice, its colour range) predicts otherwise
    gcross = Segmenter(seg.model.inner, CLASSES, GRID, convention=GCROSS_CONVENTION)
    assert (gcross.predict(coord, color, normal)[0] != labels).any()
    assert not np.array_equal(grid_sample(coord, GRID, lattice="min_corner")[2],
                              grid_sample(coord, GRID, lattice="center_shift")[2])


@pytest.mark.parametrize("legacy_format", [False, True])
def test_scheduler_state_with_a_function_reference_is_read_without_running_it(pointcept_pth, tmp_path,
                                                                              legacy_format):
    src, net = pointcept_pth(tmp_path / "model_last.pth", "backbone", TINY, legacy_format=legacy_format)
    if not legacy_format:
        with pytest.raises(pickle.UnpicklingError):  # what the importer used to stop on
            torch.load(src, weights_only=True)
    state, extra = load_pointcept_checkpoint(src)
    assert extra["epoch"] == 7 and isinstance(extra["best_metric_value"], Inert)
    assert isinstance(extra["scheduler"]["anneal_func"], Inert)
    assert "getattr" in extra["scheduler"]["anneal_func"].target
    for k, v in net.state_dict().items():
        assert torch.equal(state["module.backbone." + k], v), k


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": _Payload(marker), "path": tmp_path}, tmp_path / "e.pth")
    obj = read_pth(tmp_path / "e.pth")
    assert not marker.exists()
    assert isinstance(obj["hook"], Inert) and obj["hook"].target.endswith("system")
    assert isinstance(obj["path"], Inert) and torch.equal(obj["state_dict"]["w"], torch.ones(2))


def test_unreadable_or_non_tensor_entries_are_named(tmp_path):
    torch.save({"state_dict": {"backbone.a": torch.ones(3), "backbone.b": torch.arange(4.0)}}, tmp_path / "ok.pth")
    broken = tmp_path / "broken.pth"
    with zipfile.ZipFile(tmp_path / "ok.pth") as zin, zipfile.ZipFile(broken, "w") as zout:
        # torch numbers storage records in the order it meets them: backbone.b's bytes are data/1
        dropped = [n for n in zin.namelist() if n.endswith("/data/1")]
        assert len(dropped) == 1
        for name in zin.namelist():
            if name not in dropped:
                zout.writestr(name, zin.read(name))
    with pytest.raises(CheckpointError, match=r"entry 'backbone\.b' cannot be read: storage record data/1"):
        load_pointcept_checkpoint(broken)
    torch.save({"state_dict": {"backbone.a": torch.ones(3), "backbone.b": np.float32(1)}}, tmp_path / "np.pth")
    with pytest.raises(PointceptImportError, match=r"entry 'backbone\.b' is a numpy.*not a tensor"):
        load_pointcept_checkpoint(tmp_path / "np.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02junk")
    with pytest.raises(PointceptImportError, match="junk.pth"):
        load_pointcept_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(PointceptImportError, match="does not exist"):
        load_pointcept_checkpoint(tmp_path / "nope.pth")


def test_imported_backbone_fine_tunes_with_its_convention(pointcept_pth, tmp_path):
    src, net = pointcept_pth(tmp_path / "model_last.pth", "backbone", TINY)
    enc = tmp_path / "enc.safetensors"
    report = import_pointcept_checkpoint(src, enc, grid_size_m=GRID)
    assert report.kind == "encoder" and report.outside_backbone == ["gaussian_decoder.0.weight"]
    data = SegDataConfig(root="unused", class_set="synthetic", grid_size_m=GRID, augment=False, max_points=10 ** 6)
    # the backbone's convention unless told otherwise
    assert finetune_convention(data, str(enc)) == InputConvention("rgb_minus1_1_normal", "center_shift")
    told = SegDataConfig(root="unused", class_set="synthetic", input_features="rgb01_normal")
    assert finetune_convention(told, str(enc)) == InputConvention("rgb01_normal", "center_shift")
    assert finetune_convention(data, None) == GCROSS_CONVENTION
    # the encoder loads strictly into the segmentation model
    model = build_model(FinetuneConfig(data=data), str(enc))
    for k, v in net.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    # training samples are built in the recorded convention
    coord, color, normal = _cloud(600)
    scene = type("S", (), {"coord": coord, "color": color, "normal": normal,
                           "segment": np.zeros(len(coord), np.int64), "instance": None})()
    conv = finetune_convention(data, str(enc))
    sample = training_sample(scene, SegDataConfig(root="unused", class_set="synthetic", grid_size_m=GRID,
                                                  augment=False, max_points=10 ** 6,
                                                  input_features=conv.input_features, grid_lattice=conv.grid_lattice),
                             np.random.default_rng(0))
    assert sample["feat"][:, :3].min() < -0.5  # colour in -1..1
    rows = [int(np.flatnonzero(np.all(coord == c, axis=1))[0]) for c in sample["coord"]]
    np.testing.assert_array_equal(sample["feat"], encoder_features(color, normal, "rgb_minus1_1_normal")[rows])
    n_cells = len(grid_sample(coord, GRID, lattice="center_shift")[0])
    assert len(sample["coord"]) == n_cells


def test_missing_convention_in_a_pretrained_checkpoint_is_refused(pointcept_pth, tmp_path):
    src, _ = pointcept_pth(tmp_path / "model_last.pth", "backbone", TINY)
    enc = tmp_path / "enc.safetensors"
    import_pointcept_checkpoint(src, enc)
    tensors, header = load_checkpoint(enc)
    save_checkpoint(enc, tensors, header.replace(grid_lattice=None))
    data = SegDataConfig(root="unused", class_set="synthetic")
    with pytest.raises(CheckpointError, match="no 'grid_lattice' in its metadata"):
        finetune_convention(data, str(enc))
    both = SegDataConfig(root="unused", class_set="synthetic", input_features="rgb01_normal",
                         grid_lattice="min_corner")
    assert finetune_convention(both, str(enc)) == GCROSS_CONVENTION  # told explicitly: nothing to guess
    assert read_header(enc).input_features == "rgb_minus1_1_normal"


def test_imported_pointgroup_predicts_pointgroups_offsets_and_instances(pointcept_pth, tmp_path, one_torch_thread):
    classes = ["wall", "floor", "chair", "table", "sofa"]
    src, net = pointcept_pth(tmp_path / "pointgroup.pth", "PointGroup", TINY, num_classes=len(classes))
    dst = tmp_path / "insseg.safetensors"
    report = import_pointcept_checkpoint(src, dst, class_names=classes, grid_size_m=GRID)
    assert (report.kind, report.layout, report.stuff_classes) == ("segmenter", "PointGroup", ["wall", "floor"])
    assert not [k for k in report.outside_backbone if "bias_head" in k]
    seg = Segmenter.from_checkpoint(dst)
    assert seg.has_instance_head and seg.instance_config.stuff_classes == ("wall", "floor")
    assert seg.instance_config.cluster_radius_m == pytest.approx(1.5 * GRID)

    # offsets: PointGroup's bias_head (BatchNorm eps 1e-3) on the reference input, row for row
    coord, color, normal = _cloud()
    seen = {}
    inner = seg.model

    class KeepOffsets(torch.nn.Module):
        def forward(self, batch, with_offsets=False):
            logits, offsets = inner(batch, with_offsets=True)
            seen["logits"], seen["offsets"] = logits[batch.inverse].numpy(), offsets[batch.inverse].numpy()
            return (logits, offsets) if with_offsets else logits

    seg.model = KeepOffsets()
    pred = seg.predict_instances(coord, color, normal)
    ref_logits = pointcept_inference(net, coord, color, normal, GRID, *COLOUR["rgb_minus1_1_normal"])
    ref_offsets = pointcept_inference(net.offsets, coord, color, normal, GRID, *COLOUR["rgb_minus1_1_normal"])
    np.testing.assert_allclose(seen["logits"], ref_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(seen["offsets"], ref_offsets, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(pred.labels, ref_logits.argmax(1))
    assert all(c not in (0, 1) for c in pred.instances.classes)  # walls and floors are never objects

    # without folding PointGroup's eps into the running variance the offsets would differ
    tensors, _ = load_checkpoint(dst)
    var = [v for k, v in tensors.items() if k.endswith("mlp.1.running_var")][0]
    np.testing.assert_allclose(var.numpy(), net.bias_head[1].running_var.numpy() + 1e-3 - 1e-5, rtol=1e-6)
    # an offset branch of another shape stops the import, naming the key
    bad = torch.load(src, weights_only=False)
    bad["state_dict"]["module.bias_head.3.weight"] = torch.zeros(2, TINY.channels[-1])
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(PointceptImportError, match="bias_head.3.weight"):
        import_pointcept_checkpoint(tmp_path / "bad.pth", tmp_path / "bad.safetensors", class_names=classes)
    with pytest.raises(PointceptImportError, match="lamp"):
        import_pointcept_checkpoint(src, tmp_path / "x.safetensors", class_names=classes, stuff_classes=["lamp"])
