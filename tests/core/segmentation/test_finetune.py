"""Fine-tuning data, data-efficient splits, the fine-tuning run, evaluation on the original points and
the two scripts (training/finetune.py, training/evaluate.py) run as separate processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gcross_core.checkpoint import CheckpointHeader, load_checkpoint, prefixed, save_checkpoint
from gcross_core.model.features import GCROSS_CONVENTION, POINTCEPT_CONVENTION
from gcross_core.config import load_config
from gcross_core.data.classes import SYNTHETIC_CLASSES
from gcross_core.data.grid import grid_sample
from gcross_core.data.scene import Scene, write_scene
from gcross_core.errors import CheckpointError
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.segmentation.dataset import (LIMITED_POINTS_FILE, LIMITED_SCENES_FILE, SegDataConfig,
                                              SegmentationDataset, collate_segmentation, keep_labels,
                                              limited_point_indices, limited_scenes, list_scenes,
                                              read_point_indices, read_scene_list, row_labels, sphere_crop,
                                              training_sample)
from gcross_core.segmentation.evaluate import evaluate_scenes
from gcross_core.segmentation.model import SegmentationModel
from gcross_core.segmentation.run import FinetuneConfig, run_finetuning, segmentation_step
from gcross_core.segmentation.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[3]


def _script(name, *args):
    """Run ``training/<name>.py`` as its users do: a separate process; returns (exit status, stderr)."""
    out = subprocess.run([sys.executable, str(REPO / "training" / f"{name}.py"), *map(str, args)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out.returncode, out.stderr

TINY = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))
K = len(SYNTHETIC_CLASSES)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _scene(name, seed, n=1500):
    """Points on a floor (z=0) and a wall (x=0), labelled floor / wall, some unlabelled."""
    rng = np.random.default_rng(seed)
    half = n // 2
    floor = np.c_[rng.uniform(0, 2, (half, 2)), np.zeros(half)]
    wall = np.c_[np.zeros(n - half), rng.uniform(0, 2, (n - half, 2))]
    coord = np.concatenate([floor, wall]).astype(np.float32)
    normal = np.concatenate([np.tile([0, 0, 1.0], (half, 1)), np.tile([1.0, 0, 0], (n - half, 1))]).astype(np.float32)
    color = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    segment = np.r_[np.full(half, SYNTHETIC_CLASSES.index("floor")), np.full(n - half, SYNTHETIC_CLASSES.index("wall"))]
    segment[rng.random(n) < 0.1] = -1
    return Scene(name, coord, color, normal, segment, class_names=SYNTHETIC_CLASSES)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    for split, names in (("train", ["room_a", "room_b", "room_c"]), ("val", ["room_v"])):
        for i, name in enumerate(names):
            write_scene(_scene(name, seed=10 * i + len(split)), root / split / name)
    return root


def _data_cfg(root, **kw):
    base = dict(root=str(root), label_file="segment", class_set="synthetic", grid_size_m=0.1, max_points=400)
    base.update(kw)
    return SegDataConfig(**base)


# ----------------------------------------------------------------------------------------------------
# data-efficient splits


def test_limited_scenes_are_a_seeded_share_independent_of_order():
    names = [f"scene{i:04d}_00" for i in range(200)]
    a = limited_scenes(names, 5, seed=0)
    assert len(a) == 10 and set(a) <= set(names) and a == sorted(a)
    assert limited_scenes(names[::-1], 5, seed=0) == a
    assert limited_scenes(names, 5, seed=1) != a
    assert len(limited_scenes(names[:30], 1, seed=0)) == 1  # never empty
    with pytest.raises(ValueError, match="pct"):
        limited_scenes(names, 0, seed=0)


def test_limited_points_pick_labelled_points_per_scene_and_seed():
    segment = np.full(1000, -1)
    segment[::3] = np.arange(334) % 5
    idx = limited_point_indices(segment, 20, seed=0, scene_name="scene0000_00")
    assert len(idx) == 20 and len(np.unique(idx)) == 20 and np.all(segment[idx] >= 0)
    np.testing.assert_array_equal(idx, limited_point_indices(segment, 20, 0, "scene0000_00"))
    assert not np.array_equal(idx, limited_point_indices(segment, 20, 0, "scene0001_00"))
    assert not np.array_equal(idx, limited_point_indices(segment, 20, 1, "scene0000_00"))
    few = np.array([-1, 2, -1, 0])
    np.testing.assert_array_equal(limited_point_indices(few, 20, 0, "x"), [1, 3])
    kept = keep_labels(segment, idx)
    assert (kept >= 0).sum() == 20 and np.array_equal(kept[idx], segment[idx])


# ----------------------------------------------------------------------------------------------------
# training samples


def test_row_labels_keep_a_labelled_point_of_the_cell_when_the_kept_one_is_unlabelled():
    segment = np.array([-1, 3, -1, -1])
    keep = np.array([0, 2])  # cell 0 kept its unlabelled point, cell 1 has no label at all
    inverse = np.array([0, 0, 1, 1])
    np.testing.assert_array_equal(row_labels(segment, keep, inverse), [3, -1])
    np.testing.assert_array_equal(row_labels(np.array([1, 3, 2, 2]), keep, inverse), [1, 2])  # kept label wins


def test_sphere_crop_keeps_the_nearest_rows_to_one_centre():
    rng = np.random.default_rng(0)
    coord = rng.uniform(0, 5, (2000, 3))
    idx = sphere_crop(coord, 300, np.random.default_rng(1))
    assert len(idx) == 300 and len(np.unique(idx)) == 300
    centre = coord[np.random.default_rng(1).integers(2000)]  # the draw sphere_crop makes
    dist = np.linalg.norm(coord - centre, axis=1)
    rest = np.setdiff1d(np.arange(2000), idx)
    assert dist[idx].max() <= dist[rest].min()
    np.testing.assert_array_equal(sphere_crop(coord[:100], 300, rng), np.arange(100))


def test_training_sample_is_grid_sampled_cropped_and_keeps_only_chosen_labels(data_root):
    scene = _scene("s", 0, n=3000)
    cfg = _data_cfg(data_root, grid_size_m=0.05, max_points=500)
    s = training_sample(scene, cfg, np.random.default_rng(0))
    m = len(s["coord"])
    assert m == 500
    assert s["feat"].shape == (m, 6) and s["grid_coord"].shape == (m, 3) and s["segment"].shape == (m,)
    assert s["grid_coord"].min() == 0
    assert len(np.unique(s["grid_coord"], axis=0)) == m  # one row per occupied cell
    np.testing.assert_allclose(np.linalg.norm(s["feat"][:, 3:], axis=1), 1.0, atol=1e-5)  # normals turned, unit
    assert set(np.unique(s["segment"])) <= {-1, 0, 1}
    # without augmentation the rows are original points with their own features
    plain = training_sample(scene, _data_cfg(data_root, grid_size_m=0.05, max_points=10 ** 6, augment=False),
                            np.random.default_rng(0))
    where = {tuple(c): i for i, c in enumerate(scene.coord)}
    rows = np.array([where[tuple(c)] for c in plain["coord"]])  # KeyError if a row were not an original point
    np.testing.assert_allclose(plain["feat"][:, :3] * 255.0, scene.color[rows], rtol=1e-5)
    assert len(rows) == len(grid_sample(scene.coord, 0.05)[0])
    labelled = limited_point_indices(scene.segment, 20, 0, "s")
    lim = training_sample(scene, _data_cfg(data_root, grid_size_m=0.05, max_points=10 ** 6), np.random.default_rng(0),
                          labelled)
    # every labelled point lands in some row (one per cell), and no other label survives
    assert 0 < (lim["segment"] >= 0).sum() <= 20


def test_dataset_collate_and_step(data_root):
    cfg = _data_cfg(data_root, loop=2)
    ds = SegmentationDataset(list_scenes(data_root, "train"), cfg)
    assert len(ds) == 6
    batch = collate_segmentation([ds[0], ds[4]])
    assert batch.points.num_scenes == 2 and batch.segment.shape == (batch.points.coord.shape[0],)
    torch.manual_seed(0)
    out = segmentation_step(SegmentationModel(TINY, K), batch)
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert 0.0 <= float(out["acc"]) <= 1.0


# ----------------------------------------------------------------------------------------------------
# evaluation on the original points


def test_evaluation_counts_every_original_point_by_hand(tmp_path):
    # 6 points, two of them in one grid cell; class "wall" (0) predicted everywhere by a constant head
    coord = np.array([[0, 0, 0], [0.01, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], dtype=np.float32)
    segment = np.array([0, 0, 1, -1, 2, 1])  # floor (1) twice, cabinet (2) once, one ignored
    scene = Scene("hand", coord, np.zeros((6, 3), np.float32), np.tile([0, 0, 1.0], (6, 1)).astype(np.float32),
                  segment, class_names=SYNTHETIC_CLASSES)
    write_scene(scene, tmp_path / "val" / "hand")
    model = SegmentationModel(TINY, K)
    with torch.no_grad():
        model.seg_head.weight.zero_()
        model.seg_head.bias.zero_()
        model.seg_head.bias[0] = 5.0
    res = evaluate_scenes(Segmenter(model, SYNTHETIC_CLASSES, 0.1), list_scenes(tmp_path, "val"), "segment")
    expected = np.zeros((K, K), np.int64)
    expected[0, 0], expected[1, 0], expected[2, 0] = 2, 2, 1  # rows = ground truth; ignored point dropped
    np.testing.assert_array_equal(res.conf, expected)
    m = res.metrics
    # wall: TP 2, FP 3 -> 2/5; floor and cabinet: 0; the 9 absent classes do not count
    assert m.miou == pytest.approx((2 / 5 + 0 + 0) / 3)
    assert m.macc == pytest.approx((1 + 0 + 0) / 3)
    assert m.allacc == pytest.approx(2 / 5)
    assert res.per_scene[0]["points"] == 6


# ----------------------------------------------------------------------------------------------------
# scripts


def _write_config(path, root, **extra):
    cfg = {
        "train": {"epochs": 1, "batch_size": 2, "max_steps": 2, "seed": 0, "device": "cpu",
                  "checkpoint_every_steps": 0, "image_every_steps": 0},
        "optim": {"lr": 0.01},
        "data": {"root": str(root), "label_file": "segment", "class_set": "synthetic", "grid_size_m": 0.1,
                 "max_points": 400},
        **extra,
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _pretrain_checkpoint(path, seed=0, convention=GCROSS_CONVENTION):
    torch.manual_seed(seed)
    enc = SegmentationModel(TINY, 2).encoder
    tensors = {**prefixed(enc.state_dict(), "model.encoder"), "model.head.bias": torch.zeros(3)}
    save_checkpoint(path, tensors, CheckpointHeader(kind="pretrain", encoder_config=TINY.to_dict(),
                                                    encoder_prefix="model.encoder", **convention.header_fields()))
    return enc.state_dict()


def test_linear_probe_from_a_pretraining_checkpoint_then_evaluate(data_root, tmp_path):
    # a checkpoint trained on Pointcept's conventions: the run and its segmenter keep them
    pre = _pretrain_checkpoint(tmp_path / "pre.safetensors", convention=POINTCEPT_CONVENTION)
    cfg = _write_config(tmp_path / "cfg.yaml", data_root)
    out = tmp_path / "probe"
    rc, err = _script("finetune", "--config", cfg, "--pretrained", tmp_path / "pre.safetensors",
                      "--linear-probe", "--out", out, "--no-progress", "--no-tensorboard", "--threads", "1")
    assert rc == 0, err
    seg = Segmenter.from_checkpoint(out / "segmenter.safetensors", expected_classes=SYNTHETIC_CLASSES)
    for k, v in pre.items():  # frozen: weights and BatchNorm statistics exactly as pretrained
        assert torch.equal(seg.model.encoder.state_dict()[k], v), k
    header = load_checkpoint(out / "segmenter.safetensors")[1]
    assert header.extra["linear_probe"] is True and header.extra["trained_steps"] == 2
    assert seg.convention == POINTCEPT_CONVENTION
    assert (header.config["data"]["input_features"], header.config["data"]["grid_lattice"]) == (
        "rgb_minus1_1_normal", "center_shift")
    results = json.loads((out / "eval" / "results.json").read_text())
    assert 0.0 <= results["metrics"]["miou"] <= 1.0 and (out / "eval" / "confusion.png").is_file()

    rc, err = _script("evaluate", "--checkpoint", out / "segmenter.safetensors", "--root", data_root,
                      "--split", "val", "--rotations", "2", "--out", tmp_path / "ev", "--no-progress")
    assert rc == 0, err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    conf = np.array(res["confusion_matrix"])
    val = _scene("room_v", seed=3)  # as written by data_root
    assert conf.sum() == (val.segment >= 0).sum() and res["scenes"][0]["points"] == len(val.coord)
    assert res["metrics"]["allacc"] == pytest.approx(np.trace(conf) / conf.sum())
    assert (tmp_path / "ev" / "confusion.csv").is_file() and res["settings"]["rotations"] == 2


def test_pretrained_encoder_of_another_architecture_stops_the_run(data_root, tmp_path):
    _pretrain_checkpoint(tmp_path / "pre.safetensors")
    other = {"base_channels": 8, "channels": [8, 16, 16, 8], "layers": [1, 1, 1, 1]}
    cfg = _write_config(tmp_path / "cfg.yaml", data_root, encoder=other)
    with pytest.raises(CheckpointError, match="holds"):
        run_finetuning(load_config(cfg, FinetuneConfig), tmp_path / "run",
                       str(tmp_path / "pre.safetensors"), progress=False, tensorboard=False)
    rc, err = _script("finetune", "--config", cfg, "--pretrained", tmp_path / "pre.safetensors",
                      "--out", tmp_path / "run2", "--no-progress", "--no-tensorboard")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "holds" in err, err


def test_limited_annotation_run_writes_reusable_selections(data_root, tmp_path):
    cfg_path = _write_config(tmp_path / "cfg.yaml", data_root, encoder={**TINY.to_dict()}, evaluate=False)
    out = tmp_path / "lim"
    rc, err = _script("finetune", "--config", cfg_path, "--limited-points", "20", "--limited-scenes", "67",
                      "--out", out, "--no-progress", "--no-tensorboard", "--threads", "1")
    assert rc == 0, err
    scenes = read_scene_list(out / LIMITED_SCENES_FILE)
    assert len(scenes) == 2 and set(scenes) <= {"room_a", "room_b", "room_c"}
    points = read_point_indices(out / LIMITED_POINTS_FILE)
    assert sorted(points) == scenes and all(len(v) == 20 for v in points.values())
    # feeding the files back reproduces the selection
    cfg = load_config(cfg_path, FinetuneConfig, [f"data.limited_scenes_file={out / LIMITED_SCENES_FILE}",
                                                 f"data.limited_points_file={out / LIMITED_POINTS_FILE}",
                                                 "data.split_seed=5"])
    run_finetuning(cfg, tmp_path / "again", progress=False, tensorboard=False)
    assert read_scene_list(tmp_path / "again" / LIMITED_SCENES_FILE) == scenes
    again = read_point_indices(tmp_path / "again" / LIMITED_POINTS_FILE)
    assert all(np.array_equal(again[k], points[k]) for k in scenes)


def test_batchnorm_recalibration_averages_batches_and_touches_no_weight():
    from gcross_core.segmentation.run import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, momentum=0.01))
    net.eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "batches" not in k}
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(50, 3, generator=gen) * 3 + 1 for _ in range(4)]
    assert recalibrate_batchnorm(net, batches) == 4
    bn = net[1]
    with torch.no_grad():
        means = torch.stack([net[0](b).mean(0) for b in batches])
    torch.testing.assert_close(bn.running_mean, means.mean(0))  # plain average, not the 0.01 momentum
    assert bn.momentum == 0.01 and not net.training
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k


def _room_with_chairs(name, seed, n=1200):
    """A floor (stuff) with two chair blocks on it, each its own instance."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 2, (n // 2, 2)), np.zeros(n // 2)]
    chairs = [rng.uniform(0, 0.4, (n // 4, 3)) + [x, 0.5, 0.0] for x in (0.2, 1.2)]
    coord = np.concatenate([floor, *chairs]).astype(np.float32)
    normal = np.tile(np.float32([0, 0, 1]), (len(coord), 1))
    color = rng.uniform(0, 255, (len(coord), 3)).astype(np.float32)
    segment = np.r_[np.full(n // 2, SYNTHETIC_CLASSES.index("floor")), np.full(n // 2, SYNTHETIC_CLASSES.index("chair"))]
    instance = np.r_[np.full(n // 2, 0), np.full(n // 4, 1), np.full(n // 4, 2)]
    return Scene(name, coord, color, normal, segment, instance, class_names=SYNTHETIC_CLASSES)


def test_instance_task_then_instance_head_only(tmp_path):
    for split, names in (("train", ["a", "b"]), ("val", ["v"])):
        for i, name in enumerate(names):
            write_scene(_room_with_chairs(name, seed=i + len(split)), tmp_path / "data" / split / name)
    overrides = [f"data.root={tmp_path / 'data'}", "encoder.base_channels=8", "encoder.channels=[8,8,8,8]",
                 "encoder.layers=[1,1,1,1]", "train.max_steps=2", "train.batch_size=2", "train.device=cpu",
                 "data.grid_size_m=0.1", "data.max_points=400", "instance.min_points=2"]
    cfg = load_config(REPO / "training" / "configs" / "finetune_synthetic_insseg.yaml", FinetuneConfig, overrides)
    run_finetuning(cfg, tmp_path / "ins", progress=False, tensorboard=False)
    seg = Segmenter.from_checkpoint(tmp_path / "ins" / "segmenter.safetensors")
    assert seg.has_instance_head and seg.instance_config.stuff_classes == ("wall", "floor")
    results = json.loads((tmp_path / "ins" / "eval" / "results.json").read_text())
    assert results["instance"]["per_class"]["chair"]["num_gt"] == 2 and 0.0 <= results["instance"]["ap50"] <= 1.0
    assert "AP50" in (tmp_path / "ins" / "eval" / "report.md").read_text()

    # only the offset head trains: the classes of the given segmenter stay exactly as they were
    head_only = load_config(REPO / "training" / "configs" / "finetune_synthetic_insseg.yaml", FinetuneConfig,
                            overrides + ["instance_head_only=true", "evaluate=false"])
    run_finetuning(head_only, tmp_path / "head", pretrained=str(tmp_path / "ins" / "segmenter.safetensors"),
                   progress=False, tensorboard=False)
    seg2 = Segmenter.from_checkpoint(tmp_path / "head" / "segmenter.safetensors")
    scene = _room_with_chairs("v", seed=4)
    np.testing.assert_array_equal(seg.predict_proba(scene.coord, scene.color, scene.normal),
                                  seg2.predict_proba(scene.coord, scene.color, scene.normal))
    before, after = seg.model.offset_head.state_dict(), seg2.model.offset_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(CheckpointError, match="instance_head_only"):
        build = load_config(REPO / "training" / "configs" / "finetune_synthetic_insseg.yaml", FinetuneConfig,
                            overrides + ["instance_head_only=true"])
        run_finetuning(build, tmp_path / "bad", pretrained=None, progress=False, tensorboard=False)


def test_from_segmenter_starts_from_its_classifier_and_trains_everything(tmp_path):
    from gcross_core.segmentation.model import build_segmenter_checkpoint
    from gcross_core.segmentation.run import build_model

    ckpt = build_segmenter_checkpoint(tmp_path / "seg.safetensors", SYNTHETIC_CLASSES, TINY, grid_size_m=0.1, seed=3)
    cfg = load_config(REPO / "training" / "configs" / "finetune_synthetic_insseg.yaml", FinetuneConfig,
                      ["from_segmenter=true", "encoder=null"])
    model = build_model(cfg, str(ckpt))
    source = Segmenter.from_checkpoint(ckpt).model
    for name, value in source.seg_head.state_dict().items():
        assert torch.equal(model.seg_head.state_dict()[name], value)
    assert model.has_instance_head and all(p.requires_grad for p in model.parameters())
    other = build_segmenter_checkpoint(tmp_path / "other.safetensors", ["a", "b"], TINY)
    with pytest.raises(CheckpointError, match="not a segmenter of the classes"):
        build_model(cfg, str(other))


def test_tabletop_instance_config_is_the_semantic_one_plus_offsets(tmp_path):
    from gcross_core.data.classes import class_names_for
    from gcross_core.segmentation.model import build_segmenter_checkpoint
    from gcross_core.segmentation.run import build_model

    configs = REPO / "training" / "configs"
    sem = load_config(configs / "finetune_tabletop.yaml", FinetuneConfig)
    ins = load_config(configs / "finetune_tabletop_insseg.yaml", FinetuneConfig)
    # what the semantic recipe sees, composed into clutter, and its encoder
    from dataclasses import replace
    assert ins.data.clutter.enabled and not sem.data.clutter.enabled
    assert replace(ins.data, clutter=sem.data.clutter) == sem.data and ins.encoder == sem.encoder
    grouping = ins.instance_config()
    assert grouping.shifted_radius_m < grouping.cluster_radius_m and grouping.normal_min_cos is not None
    assert ins.task == "instance" and not ins.from_segmenter
    assert ins.instance_config().stuff_classes == ("table",)  # objects are instanced, the table is not
    assert build_model(ins, None).has_instance_head
    # the documented two-stage variant continues a semantic tabletop segmenter with its classifier
    two = load_config(configs / "finetune_tabletop_insseg.yaml", FinetuneConfig, ["from_segmenter=true"])
    ckpt = build_segmenter_checkpoint(tmp_path / "tabletop.safetensors", class_names_for("tabletop"), sem.encoder,
                                      grid_size_m=0.02, seed=1)
    model = build_model(two, str(ckpt))
    source = Segmenter.from_checkpoint(ckpt).model
    for name, value in source.seg_head.state_dict().items():
        assert torch.equal(model.seg_head.state_dict()[name], value)
    assert model.has_instance_head


def test_instance_step_weighs_the_offsets_of_touching_rows():
    from gcross_core.data.grid import collate_points
    from gcross_core.segmentation.dataset import SegBatch
    from gcross_core.segmentation.instance import InstanceConfig
    from gcross_core.segmentation.run import InstanceStep

    # two objects side by side along x (cells 0-1 and 2-3) and a table cell; the model's offsets are
    # right except on the two rows where the objects touch (cells 1 and 2)
    grid = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [9, 0, 0]], np.int32)
    coord = grid.astype(np.float32) * 0.02
    instance = torch.tensor([0, 0, 1, 1, -1])
    segment = torch.tensor([1, 1, 1, 1, 0])  # tabletop-like: class 0 stuff, class 1 objects
    target = torch.tensor([[0.01, 0, 0], [-0.01, 0, 0], [0.01, 0, 0], [-0.01, 0, 0], [0, 0, 0]])
    predicted = target.clone()
    predicted[1:3] = -predicted[1:3]
    points = collate_points([coord], [np.zeros((5, 6), np.float32)], [grid])
    batch = SegBatch(points, segment, instance, target)

    class Fixed(torch.nn.Module):
        def forward(self, points, with_offsets=False):
            return torch.zeros(len(points.coord), 2, requires_grad=True), predicted.clone().requires_grad_(True)

    thing = np.array([False, True])
    plain = InstanceStep(thing, InstanceConfig())(Fixed(), batch)
    weighted = InstanceStep(thing, InstanceConfig(contact_weight=3.0))(Fixed(), batch)
    assert "contact_rows" not in plain and weighted["contact_rows"].item() == 2.0
    # plain: half the rows wrong by 0.02 in L1; weighted: the wrong rows weigh 4 each of 1 + 4 + 4 + 1
    assert plain["offset_l1"].item() == pytest.approx(0.01)
    assert weighted["offset_l1"].item() == pytest.approx(0.02 * 8 / 10)
    assert weighted["loss"].item() > plain["loss"].item()
