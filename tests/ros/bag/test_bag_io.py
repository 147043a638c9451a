"""Bag record/read round trip, corrupt bags, and the offline evaluator's scoring (no ROS needed)."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from gcross_core.geometry import pose_from_quat, scale_intrinsics  # noqa: E402
from gcross_core.mapping.pipeline import PipelineConfig, SegmentationPipeline  # noqa: E402
from gcross_core.errors import BagError  # noqa: E402
from gcross_core.image import register_color_to_depth  # noqa: E402
from gcross_ros.bag.cli import main  # noqa: E402
from gcross_ros.bag.evaluate import EvalConfig, evaluate_bag  # noqa: E402
from gcross_ros.bag.score import object_boxes  # noqa: E402
from gcross_ros.bag.format import RecordConfig  # noqa: E402
from gcross_ros.bag.frames import read_bag  # noqa: E402
from gcross_ros.bag.writer import record_scene  # noqa: E402

CLASSES = ["floor", "cabinet", "lamp"]  # lamp never occurs: an absent class


class _Frames:
    def __init__(self, frames):
        self._frames = frames

    def __len__(self):
        return len(self._frames)

    def frame(self, i):
        return self._frames[i]


def random_scene(n_frames=4, h=12, w=16, seed=0):
    """Random content (the round trip must preserve any bytes), one frame with a lost-tracking pose."""
    rng = np.random.default_rng(seed)
    K = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])
    frames = []
    for i in range(n_frames):
        q = rng.normal(size=4)
        pose = pose_from_quat(rng.normal(size=3), q / np.linalg.norm(q))
        if i == 1:
            pose = np.full((4, 4), -np.inf)  # ScanNet's marker for a frame without tracking
        depth_mm = rng.integers(0, 6000, (h, w))
        frames.append(SimpleNamespace(color=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                                      depth_m=(depth_mm / 1000.0).astype(np.float32), K_color=K, K_depth=K,
                                      cam_to_world=pose))
    n = 40
    return SimpleNamespace(name="random", frames=_Frames(frames), coord=rng.normal(size=(n, 3)).astype(np.float32),
                           color=rng.integers(0, 256, (n, 3)).astype(np.float32), segment=rng.integers(-1, 3, n))


def look_at(eye, target):
    """cam_to_world of an optical frame (x right, y down, z forward) at ``eye`` looking at ``target``."""
    f = np.asarray(target, float) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    T = np.eye(4)
    T[:3, :3] = np.stack([r, np.cross(f, r), f], axis=1)
    T[:3, 3] = eye
    return T


def plane_scene(n_frames=4, h=24, w=32):
    """A floor (z = 0, x in [0, 2]) and a cabinet face (x = 3, z in [0.4, 2]) seen by a moving camera.

    The two classes are far apart, so a map labelled by height is exactly right after label transfer.
    The ground truth is the union of the frames' back-projected points, so the map covers all of it.
    """
    K = np.array([[24.0, 0, (w - 1) / 2], [0, 24.0, (h - 1) / 2], [0, 0, 1]])
    frames, gt = [], []
    for i in range(n_frames):
        eye = np.array([-1.0, -0.3 + 0.2 * i, 1.2])
        T = look_at(eye, [2.5, 0.0, 0.5])
        v, u = np.mgrid[0:h, 0:w].astype(float)
        d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        d = d_cam @ T[:3, :3].T
        with np.errstate(divide="ignore", invalid="ignore"):
            t_floor = np.where(d[..., 2] < 0, -eye[2] / d[..., 2], np.inf)
            p = eye + t_floor[..., None] * d
            t_floor[(p[..., 0] < 0) | (p[..., 0] > 2) | (np.abs(p[..., 1]) > 1.5)] = np.inf
            t_wall = np.where(d[..., 0] > 0, (3.0 - eye[0]) / d[..., 0], np.inf)
            p = eye + t_wall[..., None] * d
            t_wall[(p[..., 2] < 0.4) | (p[..., 2] > 2.0) | (np.abs(p[..., 1]) > 1.5)] = np.inf
        t = np.minimum(t_floor, t_wall)
        depth_m = (np.rint(np.where(np.isfinite(t), t, 0) * 1000) / 1000).astype(np.float32)
        label = np.where(t_floor <= t_wall, 0, 1)
        color = np.where(label[..., None] == 0, [120, 110, 100], [200, 60, 40]).astype(np.uint8)
        color[depth_m == 0] = 0
        frames.append(SimpleNamespace(color=color, depth_m=depth_m, K_color=K, K_depth=K, cam_to_world=T))
        ok = depth_m > 0
        pts = (d_cam[ok] * depth_m[ok][:, None]) @ T[:3, :3].T + T[:3, 3]
        gt.append((pts, color[ok], label[ok]))
    coord = np.concatenate([g[0] for g in gt]).astype(np.float32)
    return SimpleNamespace(name="planes", frames=_Frames(frames), coord=coord,
                           color=np.concatenate([g[1] for g in gt]).astype(np.float32),
                           segment=np.concatenate([g[2] for g in gt]).astype(np.int64), class_names=CLASSES)


class HeightOracle:
    """Stands in for Segmenter: labels by height (exact on plane_scene), or everything 'floor'."""

    class_names = CLASSES
    grid_size_m = 0.02

    def __init__(self, all_floor=False):
        self.all_floor = all_floor

    def predict(self, coord, color, normal, return_probs=False):
        labels = np.where(coord[:, 2] < 0.2, 0, 1)
        if self.all_floor:
            labels[:] = 0
        probs = np.eye(len(CLASSES), dtype=np.float32)[labels]
        return labels, probs.max(1), probs if return_probs else None


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_record_then_read_gives_identical_arrays(tmp_path, storage):
    scene = random_scene()
    cfg = RecordConfig(storage=storage, rate_hz=5.0)
    summary = record_scene(scene, tmp_path / "bag", cfg, class_names=CLASSES)
    assert summary.frames_written == 3 and summary.frames_skipped_invalid_pose == 1
    got = read_bag(tmp_path / "bag")
    kept = [scene.frames.frame(i) for i in (0, 2, 3)]
    np.testing.assert_array_equal(got.stamps_ns, cfg.start_time_ns + np.arange(3) * 200_000_000)
    for i, f in enumerate(kept):
        np.testing.assert_array_equal(got.color[i], f.color)
        np.testing.assert_array_equal(np.rint(got.depth_m[i] * 1000), np.rint(f.depth_m * 1000))
        np.testing.assert_allclose(got.depth_m[i], f.depth_m, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.cam_to_map[i], f.cam_to_world, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got.K[i], f.K_depth)
    np.testing.assert_array_equal(got.gt.coord, scene.coord)
    np.testing.assert_array_equal(got.gt.color, scene.color.astype(np.uint8))
    np.testing.assert_array_equal(got.gt.label, scene.segment)  # -1 survives the uint32 field
    assert got.class_names == CLASSES and got.scene_name == "random"


def test_record_every_and_existing_output(tmp_path):
    scene = random_scene(n_frames=5)
    summary = record_scene(scene, tmp_path / "bag", RecordConfig(every=2))
    assert summary.frames_written == 3  # frames 0, 2, 4 (1 and 3 dropped by --every)
    with pytest.raises(BagError, match="already exists"):
        record_scene(scene, tmp_path / "bag", RecordConfig())


def test_color_is_registered_to_the_depth_camera():
    K_depth = np.array([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]])
    K_color = scale_intrinsics(K_depth, 2, 2)  # color at twice the depth resolution
    v, u = np.mgrid[0:12, 0:16]
    color = np.stack([8 * u, 10 * v, np.full_like(u, 100)], -1).astype(np.uint8)  # linear ramps
    out, seen = register_color_to_depth(color, K_color, K_depth, (6, 8))
    assert out.shape == (6, 8, 3) and seen.all()
    # depth pixel (ud, vd) sees colour pixel (2 ud + 0.5, 2 vd + 0.5); a linear ramp survives any
    # symmetric resampling filter away from the border
    vd, ud = np.mgrid[1:5, 1:7]
    np.testing.assert_allclose(out[1:5, 1:7, 0], 8 * (2 * ud + 0.5), atol=1)
    np.testing.assert_allclose(out[1:5, 1:7, 1], 10 * (2 * vd + 0.5), atol=1)
    np.testing.assert_array_equal(register_color_to_depth(color, K_depth, K_depth, (12, 16))[0], color)


@pytest.mark.parametrize("storage,ext", [("sqlite3", "db3"), ("mcap", "mcap")])
def test_truncated_bag_gives_error_naming_the_bag(tmp_path, storage, ext):
    record_scene(random_scene(n_frames=2), tmp_path / "good", RecordConfig(storage=storage))
    bad = tmp_path / "truncated"
    shutil.copytree(tmp_path / "good", bad)
    data_file = bad / f"good.{ext}"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(BagError, match=str(bad)):
        read_bag(bad)


def test_unreadable_metadata_and_missing_bag(tmp_path):
    record_scene(random_scene(n_frames=2), tmp_path / "good", RecordConfig())
    (tmp_path / "good" / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: [")
    with pytest.raises(BagError, match="good"):
        read_bag(tmp_path / "good")
    with pytest.raises(BagError, match="nowhere"):
        read_bag(tmp_path / "nowhere")


def test_segment_period_runs_in_stream_time():
    scene = plane_scene(n_frames=1)
    f = scene.frames.frame(0)
    pipe = SegmentationPipeline(HeightOracle(), PipelineConfig(segment_period_s=2.0))
    ran = []
    for stamp in range(10):  # seconds
        pipe.process_frame(f.color, f.depth_m, f.K_depth, f.cam_to_world, float(stamp))
        ran.append(pipe.maybe_segment(float(stamp)) is not None)
    assert [i for i, r in enumerate(ran) if r] == [2, 4, 6, 8]
    pts = pipe.labelled_points()
    assert (pts.label >= 0).all() and set(np.unique(pts.label)) == {0, 1}


@pytest.fixture(scope="module")
def plane_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "planes"
    scene = plane_scene()
    record_scene(scene, path, RecordConfig(), class_names=CLASSES)
    return path, scene


def test_eval_of_an_exact_map_scores_one(plane_bag, tmp_path):
    bag, _ = plane_bag
    res = evaluate_bag(bag, HeightOracle(), tmp_path / "report", PipelineConfig(segment_period_s=0.15))
    assert res.miou == pytest.approx(1.0) and res.allacc == pytest.approx(1.0)
    assert res.coverage.uncovered_points == 0
    assert res.performance["frames"] == 4
    for name in ("results.json", "report.md", "confusion.png", "confusion.csv", "topdown.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["metrics"]["per_class"]["lamp"]["present"] is False
    assert saved["coverage"] == res.coverage.to_dict() and saved["performance"]["frames"] == 4
    summary = res.to_dict()
    assert summary["coverage"]["covered_fraction"] == 1.0 and summary["files"]["markdown"] == res.markdown
    assert res.markdown == str(tmp_path / "report" / "report.md") and "ap50" not in summary
    assert "p90" in (tmp_path / "report" / "report.md").read_text()


def test_eval_of_a_known_corruption(plane_bag, tmp_path):
    bag, scene = plane_bag
    res = evaluate_bag(bag, HeightOracle(all_floor=True), tmp_path / "report", PipelineConfig())
    n_floor, n_cabinet = (scene.segment == 0).sum(), (scene.segment == 1).sum()
    # everything called floor: IoU(floor) = n_floor / (n_floor + n_cabinet), IoU(cabinet) = 0
    assert res.miou == pytest.approx(n_floor / (n_floor + n_cabinet) / 2)
    assert res.macc == pytest.approx(0.5)
    assert res.allacc == pytest.approx(n_floor / (n_floor + n_cabinet))


def test_eval_uncovered_ground_truth_counts_as_misses(plane_bag, tmp_path):
    bag, _ = plane_bag
    res = evaluate_bag(bag, HeightOracle(), tmp_path / "r", PipelineConfig(), EvalConfig(max_frames=1))
    assert res.coverage.uncovered_points > 0
    assert res.miou < 1.0 and res.allacc == pytest.approx(res.coverage.covered_fraction)


def _eval_cli(plane_bag, ckpt, out):
    """``gcross-bag eval`` of the plane bag with ``ckpt``: exit 0, an mIoU in [0, 1], and the final
    segmentation labels every covered point; returns results.json."""
    bag, _ = plane_bag
    rc = main(["-q", "eval", str(bag), "--checkpoint", str(ckpt), "--out", str(out), "--segment-period-s", "0.2"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["metrics"]["miou"] <= 1.0
    assert res["coverage"]["covered_but_unlabelled_points"] == 0
    return res


def test_eval_cli_with_a_real_segmenter_checkpoint(plane_bag, tmp_path):
    pytest.importorskip("spconv")
    from gcross_core.model.encoder import SpUNetConfig
    from gcross_core.segmentation.model import build_segmenter_checkpoint

    tiny = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8, 8, 8, 8, 8), layers=(1, 1, 1, 1, 1, 1, 1, 1))
    ckpt = build_segmenter_checkpoint(tmp_path / "seg.safetensors", CLASSES, tiny)
    res = _eval_cli(plane_bag, ckpt, tmp_path / "report")
    assert res["performance"]["segmentations"] >= 2


def test_eval_cli_with_an_imported_pointcept_segmentor(plane_bag, tmp_path, pointcept_pth):
    pytest.importorskip("spconv")
    from gcross_core.model.encoder import SpUNetConfig
    from gcross_core.interop.pointcept import import_pointcept_checkpoint

    tiny = SpUNetConfig(base_channels=8, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1))
    src, _ = pointcept_pth(tmp_path / "model_best.pth", "DefaultSegmentor", tiny, num_classes=len(CLASSES))
    ckpt = tmp_path / "imported.safetensors"
    import_pointcept_checkpoint(src, ckpt, class_names=CLASSES)
    _eval_cli(plane_bag, ckpt, tmp_path / "report")


def test_eval_rejects_a_bag_without_ground_truth(tmp_path):
    scene = random_scene(n_frames=2)
    scene.segment = None
    record_scene(scene, tmp_path / "bag", RecordConfig())
    assert main(["-q", "eval", str(tmp_path / "bag"), "--checkpoint", "x", "--out", str(tmp_path / "r")]) == 2


def test_replay_schedule_scales_with_rate():
    from gcross_ros.bag.player import wall_target

    t0 = 10**18
    assert wall_target(t0 + 2 * 10**9, t0, 100.0, rate=1.0) == pytest.approx(102.0)
    assert wall_target(t0 + 2 * 10**9, t0, 100.0, rate=4.0) == pytest.approx(100.5)
    assert wall_target(t0 + 2 * 10**9, t0, 100.0, rate=0.0) == 100.0  # as fast as possible


def test_failed_recording_leaves_no_bag(tmp_path):
    scene = random_scene(n_frames=3)
    scene.frames.frame(2).depth_m = np.zeros((3, 3, 3), np.float32)  # not [H, W]
    with pytest.raises(ValueError, match="depth image"):
        record_scene(scene, tmp_path / "bag", RecordConfig())
    assert not (tmp_path / "bag").exists()


def test_ground_truth_is_remapped_by_class_name():
    from gcross_ros.bag.evaluate import labels_for_classes
    from gcross_ros.bag.format import GroundTruthCloud

    gt = GroundTruthCloud(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.uint8), np.array([0, 1, -1, 1]),
                          class_names=["wall", "floor"])
    np.testing.assert_array_equal(labels_for_classes(gt, ["floor", "chair", "wall"]), [2, 0, -1, 0])
    with pytest.raises(ValueError, match="wall"):
        labels_for_classes(gt, ["floor", "chair"])


def test_registration_with_scannet_intrinsics_marks_what_color_does_not_see():
    # ScanNet: 1296x968 color, 640x480 depth with a slightly wider field of view
    K_color = np.array([[1170.19, 0, 647.75], [0, 1170.19, 483.75], [0, 0, 1]])
    K_depth = np.array([[571.62, 0, 319.5], [0, 571.62, 239.5], [0, 0, 1]])
    color = np.full((968, 1296, 3), 200, np.uint8)
    out, seen = register_color_to_depth(color, K_color, K_depth, (480, 640))
    assert out.shape == (480, 640, 3) and (out == 200).all()
    # depth pixel u sees color pixel ~2.047 u - 6.3: a border of ~3 pixels lies outside the color image
    assert not seen[:, :3].any() and not seen[:, -3:].any() and not seen[:3].any() and not seen[-3:].any()
    assert seen[4:-4, 4:-4].all()


def test_recorded_depth_stops_where_the_color_camera_does(tmp_path):
    """A depth camera wider than the color camera: the bag has no depth where no color is known."""
    K_depth = np.array([[40.0, 0, 15.5], [0, 40.0, 11.5], [0, 0, 1]])
    K_color = np.array([[80.0, 0, 23.5], [0, 80.0, 19.5], [0, 0, 1]])  # 48x40: narrower than depth
    color = np.full((40, 48, 3), 90, np.uint8)
    depth = np.full((24, 32), 1.5, np.float32)
    frame = SimpleNamespace(color=color, depth_m=depth, K_color=K_color, K_depth=K_depth, cam_to_world=np.eye(4))
    record_scene(SimpleNamespace(name="narrow", frames=_Frames([frame]), segment=None), tmp_path / "bag")
    expected = register_color_to_depth(color, K_color, K_depth, depth.shape)[1]
    assert 0 < expected.sum() < expected.size
    recorded = read_bag(tmp_path / "bag").depth_m[0]
    np.testing.assert_array_equal(recorded > 0, expected)
    assert np.allclose(recorded[expected], 1.5)


def test_record_cli_on_a_scene_folder(tmp_path):
    data = pytest.importorskip("gcross_core.data")
    scene = data.make_room(3, num_views=3, width=40, height=30, num_points=2000)
    data.write_scene(scene, tmp_path / "room", color_format="png")
    rc = main(["-q", "record", "--scene", str(tmp_path / "room"), "--out", str(tmp_path / "bag"),
               "--storage", "mcap", "--segment", "segment"])
    assert rc == 0
    got = read_bag(tmp_path / "bag")
    assert got.class_names == list(scene.class_names) and got.scene_name == "room"
    np.testing.assert_array_equal(got.gt.label, scene.segment)
    np.testing.assert_allclose(got.gt.coord, scene.coord, atol=1e-6)
    for i in range(3):
        f = scene.frames.frame(i)
        np.testing.assert_array_equal(got.color[i], f.color)  # lossless png in the folder
        np.testing.assert_allclose(got.depth_m[i], f.depth_m, atol=0.0005 + 1e-6)  # mm in the folder and bag
        np.testing.assert_allclose(got.cam_to_map[i], f.cam_to_world, atol=1e-9)
    assert main(["-q", "record", "--scene", str(tmp_path / "room"), "--out", str(tmp_path / "bag")]) == 2


def test_the_node_parameters_contain_the_pipeline_and_assembly_configs():
    """gcross-bag eval and the node fuse, segment and assemble alike: one config each, read from parameters."""
    from dataclasses import fields

    from gcross_core.mapping.assembly import AssemblyConfig
    from gcross_ros.bag.evaluate import assembly_config_from_params, pipeline_config_from_params
    from gcross_ros.node.params import SegmentNodeParams

    names = set(SegmentNodeParams.parameter_names())
    for config in (PipelineConfig, AssemblyConfig):
        assert {f.name for f in fields(config)} <= names
        assert all(len(f.metadata["description"]) > 10 for f in fields(config))
    assert pipeline_config_from_params() == PipelineConfig()
    assert assembly_config_from_params() == AssemblyConfig()
    assert pipeline_config_from_params(overrides={"voxel_size_m": 0.03}).voxel_size_m == 0.03


class _CountingOracle(HeightOracle):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def predict(self, coord, color, normal, return_probs=False):
        self.sizes.append(len(coord))
        return super().predict(coord, color, normal, return_probs)


@pytest.mark.parametrize("scope", ["recent", "map"])
def test_recent_scope_segments_what_was_observed_since_the_last_segmentation(scope):
    f = plane_scene(n_frames=1).frames.frame(0)
    moved = f.cam_to_world.copy()
    moved[0, 3] += 20.0  # the same view 20 m away: a disjoint part of the map
    oracle = _CountingOracle()
    pipe = SegmentationPipeline(oracle, PipelineConfig(segment_scope=scope, segment_context_m=1.0))
    pipe.process_frame(f.color, f.depth_m, f.K_depth, f.cam_to_world, 0.0)
    first = len(pipe.map)
    assert pipe.segment(0.0).updated == first and oracle.sizes == [first]

    quiet = pipe.segment(1.0)  # nothing observed since
    pipe.process_frame(f.color, f.depth_m, f.K_depth, moved, 2.0)
    second = pipe.segment(2.0)
    total = len(pipe.map)
    if scope == "map":
        assert oracle.sizes == [first, first, total] and quiet.updated == first and second.updated == total
    else:
        assert quiet.voxels == 0 and quiet.updated == 0 and len(oracle.sizes) == 2  # no pass when quiet
        assert second.updated == total - first and oracle.sizes[-1] == total - first  # no context 20 m away
        pipe.process_frame(f.color, f.depth_m, f.K_depth, f.cam_to_world, 3.0)  # back to the first view
        third = pipe.segment(3.0)
        assert third.updated == first and third.voxels == first
    pts = pipe.labelled_points()
    assert (pts.label >= 0).all() and set(np.unique(pts.label)) == {0, 1}


def test_recent_scope_gives_the_encoder_context_around_what_it_fuses():
    f = plane_scene(n_frames=1).frames.frame(0)
    oracle = _CountingOracle()
    pipe = SegmentationPipeline(oracle, PipelineConfig(segment_scope="recent", segment_context_m=0.3))
    pipe.process_frame(f.color, f.depth_m, f.K_depth, f.cam_to_world, 0.0)
    pipe.segment(0.0)
    snap = pipe.map.snapshot()
    # observe again only the voxels of the left half of the image (depth elsewhere invalid)
    half = f.depth_m.copy()
    half[:, half.shape[1] // 2:] = 0
    pipe.process_frame(f.color, half, f.K_depth, f.cam_to_world, 1.0)
    rows, fuse = pipe.segment_rows(pipe.map.snapshot())
    seen = pipe.map.snapshot().last_seen == 1
    assert 0 < seen.sum() < len(snap)
    np.testing.assert_array_equal(rows[fuse], np.flatnonzero(seen))
    context = np.setdiff1d(rows, np.flatnonzero(seen))
    assert len(context) > 0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(snap.coords[seen]).query(snap.coords[context])
    assert d.max() <= 0.3 + 1e-6
    assert pipe.segment(1.0).updated == seen.sum()


def test_pipeline_config_rejects_unknown_scope():
    with pytest.raises(ValueError, match="segment_scope 'all'"):
        PipelineConfig(segment_scope="all")
    with pytest.raises(ValueError, match="segment_context_m"):
        PipelineConfig(segment_context_m=-1.0)


class HeightInstanceOracle(HeightOracle):
    """HeightOracle with an instance head: the cabinet face is one object, the floor is stuff."""

    has_instance_head = True

    def __init__(self):
        super().__init__()
        from gcross_core.segmentation.instance import InstanceConfig

        self.instance_config = InstanceConfig(stuff_classes=("floor",))

    def predict_instances(self, coord, color, normal):
        from gcross_core.segmentation.instance import InstanceSet
        from gcross_core.segmentation.segmenter import InstancePrediction

        labels, conf, probs = self.predict(coord, color, normal, return_probs=True)
        cabinet = np.flatnonzero(labels == 1)
        found = InstanceSet([cabinet] if len(cabinet) else [], np.ones(int(len(cabinet) > 0), np.int64),
                            np.full(int(len(cabinet) > 0), 0.9, np.float32), len(coord))
        return InstancePrediction(labels, conf, probs, found)


def test_eval_scores_the_objects_of_the_map(tmp_path):
    scene = plane_scene()
    scene.instance = np.where(scene.segment == 1, 7, 0)  # the cabinet is object 7; the floor object 0 (stuff)
    bag = tmp_path / "bag"
    record_scene(scene, bag, RecordConfig())
    assert (read_bag(bag).gt.instance == scene.instance).all()  # instance ids survive the round trip
    res = evaluate_bag(bag, HeightInstanceOracle(), tmp_path / "report", PipelineConfig(segment_period_s=0.15))
    assert res.miou == pytest.approx(1.0)
    assert res.instance.map_objects == 1 and res.instance.ap50 == pytest.approx(1.0)
    assert res.instance.map == pytest.approx(1.0)
    assert {k: res.to_dict()[k] for k in ("objects", "ap50")} == {"objects": 1, "ap50": res.instance.ap50}
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["instance"]["per_class"]["cabinet"]["num_gt"] == 1 and "floor" not in saved["instance"]["per_class"]
    assert "AP50 100.0" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "topdown.png").stat().st_size > 0


def test_object_boxes_of_map_ids_and_ground_truth_ids():
    coord = np.array([[0, 0, 0], [1, 2, 3], [5, 5, 5], [6, 4, 5], [9, 9, 9]], np.float32)
    label = np.array([1, 1, 2, -1, 0])
    boxes, classes = object_boxes(coord, label, np.array([3, 3, 7, 7, 0]), none=0)  # a map: 0 = no object
    np.testing.assert_array_equal(boxes, [[[0, 0, 0], [1, 2, 3]], [[5, 4, 5], [6, 5, 5]]])
    assert classes.tolist() == [1, 2]  # the unlabelled point does not vote
    boxes, classes = object_boxes(coord, label, np.array([0, 0, -1, -1, -1]), none=-1)  # ground truth: 0 is an id
    assert boxes.shape == (1, 2, 3) and classes.tolist() == [1]
    assert object_boxes(coord, label, np.zeros(5, int), none=0)[0].shape == (0, 2, 3)


def test_eval_skips_garbled_messages_and_scores_the_rest(plane_bag, tmp_path):
    from garble import garble_bag

    bag, _ = plane_bag
    bad = tmp_path / "garbled"
    garbled = garble_bag(bag, bad, lambda topic, k: (topic, k) in {("/camera/color/image_raw", 1),
                                                                   ("/camera/depth/image_raw", 2)})
    res = evaluate_bag(bad, HeightOracle(), tmp_path / "report", PipelineConfig(segment_period_s=0.15))
    acc = res.performance["assembly"]
    assert acc["messages_skipped"] == 2
    assert {(s["topic"], s["log_time_ns"]) for s in acc["skipped"]} == {
        (topic, t) for topic, times in garbled.items() for t in times}
    # four frames: one colour image unreadable (never in), one left without its depth image
    assert (acc["frames_in"], acc["frames_fused"], acc["dropped.no_depth"], acc["frames_waiting"]) == (3, 2, 1, 0)
    assert res.performance["frames"] == 2 and res.miou > 0.5
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["performance"]["assembly"]["messages_skipped"] == 2

    everything = tmp_path / "all_garbled"
    garble_bag(bag, everything, lambda topic, k: topic == "/camera/color/image_raw")
    assert main(["-q", "eval", str(everything), "--checkpoint", "unused.safetensors", "--out",
                 str(tmp_path / "r2")]) == 2  # nothing usable remains (the checkpoint is checked first)
    with pytest.raises(BagError, match="no usable RGB-D frames: 0 colour images.*4 messages could not be decoded"):
        evaluate_bag(everything, HeightOracle(), tmp_path / "r3", PipelineConfig())


def test_the_pipeline_owns_its_map_version_and_reset():
    f = plane_scene(n_frames=1).frames.frame(0)
    pipe = SegmentationPipeline(HeightOracle(), PipelineConfig())
    v0 = pipe.version
    pipe.process_frame(f.color, f.depth_m, f.K_depth, f.cam_to_world, 0.0)
    v1 = pipe.version
    assert v1 != v0 and len(pipe) > 0 and pipe.voxel_size_m == pipe.map.voxel_size_m
    assert pipe.segment(0.0).updated > 0 and pipe.version != v1
    v2 = pipe.version
    assert pipe.segment(1.0).updated == 0 and pipe.version == v2  # nothing new: what a render shows is unchanged
    voxels = len(pipe)
    assert pipe.reset() == voxels and len(pipe) == 0 and pipe.version != v2
