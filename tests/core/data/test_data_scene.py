"""Scene folders: Pointcept-layout points, SensReader frames, writing, and clear errors on bad input."""
import errno
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcross_core.data import (SCANNET20_CLASSES, SCANNET200_CLASSES, Frame, FrameList, Scene, SensReaderFrames,
                              load_scene, write_scene)
from gcross_core.geometry import pose_from_quat
from conftest import failing_renames, tree_listing


def write_pointcept(d, n=50, seed=0, **extra):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = dict(coord=rng.normal(size=(n, 3)).astype(np.float32),
                  color=rng.integers(0, 256, (n, 3)).astype(np.uint8),
                  normal=rng.normal(size=(n, 3)).astype(np.float32),
                  segment20=rng.integers(-1, 20, n).astype(np.int16),
                  segment200=rng.integers(-1, 200, n).astype(np.int16),
                  instance=rng.integers(-1, 5, n).astype(np.int16))
    arrays.update(extra)
    for k, v in arrays.items():
        if v is not None:
            np.save(d / f"{k}.npy", v)
    return arrays


def K_txt(fx, fy, cx, cy):
    return f"{fx} 0 {cx} 0\n0 {fy} {cy} 0\n0 0 1 0\n0 0 0 1\n"


def write_sensreader(d, n=3, color_hw=(12, 16), depth_hw=(6, 8), bad_pose_at=(), seed=0):
    """Frames written by hand (not by write_frames): color and depth of different sizes."""
    rng = np.random.default_rng(seed)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "intrinsic" / "intrinsic_color.txt").write_text(K_txt(20.0, 20.0, 7.5, 5.5))
    (d / "intrinsic" / "intrinsic_depth.txt").write_text(K_txt(10.0, 10.0, 3.5, 2.5))
    poses, depths = [], []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*color_hw, 3), dtype=np.uint8)).save(d / "color" / f"{i}.png")
        depth_mm = rng.integers(0, 5000, depth_hw).astype(np.uint16)
        Image.fromarray(depth_mm).save(d / "depth" / f"{i}.png")
        q = rng.normal(size=4)
        T = pose_from_quat(rng.normal(size=3), q / np.linalg.norm(q))
        if i in bad_pose_at:
            T = np.full((4, 4), -np.inf)
        np.savetxt(d / "pose" / f"{i}.txt", T)
        poses.append(T)
        depths.append(depth_mm)
    return poses, depths


def test_reads_pointcept_folder_with_selectable_segments(tmp_path):
    a = write_pointcept(tmp_path / "s")
    s = load_scene(tmp_path / "s")
    assert s.name == "s" and s.frames is None
    np.testing.assert_array_equal(s.coord, a["coord"])
    assert s.color.dtype == np.float32 and np.array_equal(s.color, a["color"].astype(np.float32))
    np.testing.assert_array_equal(s.segment, a["segment20"])  # segment20 is the default
    assert s.segment.dtype == np.int64 and s.class_names == SCANNET20_CLASSES
    np.testing.assert_array_equal(s.instance, a["instance"])
    s200 = load_scene(tmp_path / "s", segment="segment200")
    np.testing.assert_array_equal(s200.segment, a["segment200"])
    assert s200.class_names == SCANNET200_CLASSES
    assert load_scene(tmp_path / "s", segment="none").segment is None
    with pytest.raises(FileNotFoundError, match="segment.npy"):
        load_scene(tmp_path / "s", segment="segment")
    with pytest.raises(ValueError, match="segment="):
        load_scene(tmp_path / "s", segment="segment40")


def test_missing_files_and_row_mismatches_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scene(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither coord.npy nor frames"):
        load_scene(tmp_path / "empty")
    write_pointcept(tmp_path / "a", normal=None)
    with pytest.raises(FileNotFoundError, match="normal.npy"):
        load_scene(tmp_path / "a")
    write_pointcept(tmp_path / "b", color=np.zeros((49, 3), np.uint8))
    with pytest.raises(ValueError, match="color.npy has 49 rows but coord.npy has 50"):
        load_scene(tmp_path / "b")
    write_pointcept(tmp_path / "c", segment20=np.zeros(7, np.int16))
    with pytest.raises(ValueError, match="segment20.npy has 7 rows"):
        load_scene(tmp_path / "c")
    write_pointcept(tmp_path / "d", coord=np.zeros((50, 2), np.float32))
    with pytest.raises(ValueError, match=r"coord has shape \(50, 2\)"):
        load_scene(tmp_path / "d")


def test_sensreader_frames_skip_invalid_poses_and_resize_into_the_depth_camera(tmp_path):
    write_pointcept(tmp_path / "s")
    poses, depths = write_sensreader(tmp_path / "s" / "frames", n=4, bad_pose_at=(1,))
    s = load_scene(tmp_path / "s")
    assert len(s.frames) == 3 and s.frames.skipped_frames == 1
    assert s.frames.frame_ids == ["0", "2", "3"]
    f = s.frames.frame(1)
    assert f.frame_id == "2" and f.color.shape == (12, 16, 3) and f.depth_m.shape == (6, 8)
    np.testing.assert_allclose(f.cam_to_world, poses[2], atol=1e-12)
    np.testing.assert_allclose(f.depth_m, depths[2] / 1000.0, atol=1e-6)
    np.testing.assert_allclose(f.K_depth, [[10, 0, 3.5], [0, 10, 2.5], [0, 0, 1]])

    # Color registered to depth: K_color = 2 x K_depth with centres at integer pixels, so depth pixel
    # (u, v) sees color pixel (2u + 0.5, 2v + 0.5): the mean of a 2x2 block.
    r = f.registered()
    assert r.color.shape == (6, 8, 3) and np.array_equal(r.K_color, r.K_depth)
    np.testing.assert_allclose(r.K_depth, f.K_depth)
    block = f.color.astype(np.float64).reshape(6, 2, 8, 2, 3).mean((1, 3))
    assert np.abs(r.color - block).max() <= 1.0
    np.testing.assert_array_equal(r.depth_m, f.depth_m)

    small = f.resized(4, 3)  # nearest-neighbour depth, intrinsics scaled
    np.testing.assert_array_equal(small.depth_m, f.depth_m[1::2, 1::2])  # source pixel nearest each centre
    assert small.K_depth[0, 0] == pytest.approx(5.0) and small.K_depth[0, 2] == pytest.approx(1.5)


def test_registration_drops_depth_the_color_camera_does_not_see():
    # a depth camera with a wider field of view (ScanNet-like): its border has no color of its own
    K_depth = np.array([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]])
    K_color = np.array([[30.0, 0, 9.5], [0, 30.0, 7.5], [0, 0, 1]])  # 20x16 color covers 6.7x5.3 depth pixels
    f = Frame(color=np.full((16, 20, 3), 77, np.uint8), depth_m=np.full((6, 8), 2.0, np.float32),
              K_color=K_color, K_depth=K_depth, cam_to_world=np.eye(4))
    r = f.registered()
    u = (np.arange(8) - 3.5) * 3 + 9.5  # color column seen by each depth column
    v = (np.arange(6) - 2.5) * 3 + 7.5
    seen = ((v >= -0.5) & (v <= 15.5))[:, None] & ((u >= -0.5) & (u <= 19.5))[None, :]
    assert 0 < seen.sum() < seen.size
    np.testing.assert_array_equal(r.depth_m > 0, seen)
    assert (r.color == 77).all() and (r.depth_m[seen] == 2.0).all()


def test_depth_of_wrong_dtype_or_size_and_broken_frames_get_clear_errors(tmp_path):
    d = tmp_path / "frames"
    write_sensreader(d, n=3)
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(d / "depth" / "1.png")  # 8-bit depth
    Image.fromarray(np.zeros((5, 8), np.uint16)).save(d / "depth" / "2.png")  # wrong size
    fs = SensReaderFrames(d)
    fs.frame(0)
    with pytest.raises(ValueError, match="16-bit PNG"):
        fs.frame(1)
    with pytest.raises(ValueError, match="8x5, expected 8x6"):
        fs.frame(2)
    (d / "pose" / "0.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="holds 3 numbers"):
        SensReaderFrames(d)
    (d / "pose" / "0.txt").unlink()
    with pytest.raises(FileNotFoundError, match="pose/0.txt"):
        SensReaderFrames(d)
    with pytest.raises(ValueError, match="expected \\[H, W\\] float32"):
        Frame(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint16), np.eye(3), np.eye(3), np.eye(4))


def test_write_scene_round_trips_and_is_atomic(tmp_path):
    rng = np.random.default_rng(3)
    K = np.array([[12.0, 0, 7.5], [0, 12.0, 5.5], [0, 0, 1]])
    frames = [Frame(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
                    rng.uniform(0.3, 4.0, (12, 16)).astype(np.float32), K, K, pose_from_quat([i, 0, 1], [1, 0, 0, 0]))
              for i in range(2)]
    n = 30
    names = ("a", "b", "c")
    scene = Scene("x", rng.normal(size=(n, 3)), rng.uniform(0, 255, (n, 3)), rng.normal(size=(n, 3)),
                  segment=rng.integers(-1, 3, n), instance=rng.integers(-1, 4, n), frames=FrameList(frames),
                  class_names=names, extra={"segment20": rng.integers(-1, 20, n)})
    out = write_scene(scene, tmp_path / "x", color_format="png")
    assert json.loads((out / "class_names.json").read_text()) == list(names)
    back = load_scene(out, segment="segment")
    np.testing.assert_allclose(back.coord, scene.coord, atol=1e-6)
    np.testing.assert_array_equal(back.color, np.rint(scene.color))  # stored as uint8, like Pointcept
    np.testing.assert_array_equal(back.segment, scene.segment)
    assert back.class_names == names
    np.testing.assert_array_equal(load_scene(out).segment, scene.extra["segment20"])
    for f, g in zip(frames, back.frames):
        np.testing.assert_array_equal(g.color, f.color)  # png is lossless
        assert np.abs(g.depth_m - f.depth_m).max() <= 0.0005 + 1e-6  # millimetre PNG
        np.testing.assert_allclose(g.cam_to_world, f.cam_to_world, atol=1e-12)
        np.testing.assert_allclose(g.K_color, K)
    with pytest.raises(FileExistsError):
        write_scene(scene, out)
    bad = Scene("y", scene.coord, scene.color, scene.normal)
    with pytest.raises(ValueError, match="extra array 'segment200' has 2 rows"):
        write_scene(bad, tmp_path / "y", extra_arrays={"segment200": np.zeros(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # nothing half-written left behind


def _points(n, seed, instance=True):
    rng = np.random.default_rng(seed)
    return Scene("x", rng.normal(size=(n, 3)), rng.uniform(0, 255, (n, 3)), rng.normal(size=(n, 3)),
                 instance=rng.integers(-1, 4, n) if instance else None)


# the steps of write_scene(..., tmp_path / "x", overwrite=True) that can fail, made to fail
def _moving_the_previous_scene_aside(monkeypatch):
    failing_renames(monkeypatch, lambda src, dst: src.name == "x")


def _moving_the_new_scene_into_place(monkeypatch):
    failing_renames(monkeypatch, lambda src, dst: dst.name == "x")


def _writing_an_array(monkeypatch):
    real, calls = np.save, []

    def save(*args, **kwargs):  # the disk fills up after the first array
        calls.append(args[0])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device (test)", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "save", save)


def test_write_scene_overwrite_replaces_the_whole_folder_and_leaves_nothing_else(tmp_path):
    write_scene(_points(20, seed=0), tmp_path / "x")
    out = write_scene(_points(7, seed=1, instance=False), tmp_path / "x", overwrite=True)
    np.testing.assert_array_equal(load_scene(out).coord, _points(7, seed=1).coord)
    assert tree_listing(tmp_path) == ["x", "x/color.npy", "x/coord.npy", "x/normal.npy"]  # no instance.npy of before


@pytest.mark.parametrize("previous, fail", [
    pytest.param(True, _moving_the_previous_scene_aside, id="over a scene, moving it aside"),
    pytest.param(True, _moving_the_new_scene_into_place, id="over a scene, moving the new one into place"),
    pytest.param(True, _writing_an_array, id="over a scene, writing an array"),
    pytest.param(False, _moving_the_new_scene_into_place, id="first write, moving it into place"),
    pytest.param(False, _writing_an_array, id="first write, writing an array")])
def test_a_failed_write_scene_leaves_the_previous_scene_and_nothing_else(tmp_path, monkeypatch, previous, fail):
    if previous:
        write_scene(_points(20, seed=0), tmp_path / "x")
    listing = tree_listing(tmp_path)
    fail(monkeypatch)
    with pytest.raises(OSError, match="test"):
        write_scene(_points(7, seed=1), tmp_path / "x", overwrite=True)
    monkeypatch.undo()
    assert tree_listing(tmp_path) == listing
    if previous:
        np.testing.assert_array_equal(load_scene(tmp_path / "x").coord, _points(20, seed=0).coord)


def test_a_previous_scene_that_cannot_be_put_back_is_kept_and_named(tmp_path, monkeypatch):
    out = write_scene(_points(20, seed=0), tmp_path / "x")
    failing_renames(monkeypatch, lambda src, dst: dst.name == "x", times=2)  # the new scene in, the old one back
    with pytest.raises(OSError, match="could not be put back") as raised:
        write_scene(_points(7, seed=1), out, overwrite=True)
    monkeypatch.undo()
    kept = Path(str(raised.value.strerror).rsplit("it is in ", 1)[1])
    np.testing.assert_array_equal(load_scene(kept).coord, _points(20, seed=0).coord)
    assert list(tmp_path.iterdir()) == [kept.parent] and list(kept.parent.iterdir()) == [kept]  # no new scene


def test_write_scene_overwrite_refuses_a_file_and_keeps_it(tmp_path):
    (tmp_path / "x").write_text("not a scene")
    with pytest.raises(NotADirectoryError) as raised:
        write_scene(_points(7, seed=1), tmp_path / "x", overwrite=True)
    assert raised.value.filename == str(tmp_path / "x")
    assert tree_listing(tmp_path) == ["x"] and (tmp_path / "x").read_text() == "not a scene"


def test_scene_checks_shapes():
    with pytest.raises(ValueError, match=r"normal has shape \(4, 3\), expected \(5, 3\)"):
        Scene("s", np.zeros((5, 3)), np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="neither points nor frames"):
        Scene("s", None, None, None)
    with pytest.raises(ValueError, match="only 2 class names"):
        Scene("s", np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), segment=[0, 2], class_names=("a", "b"))


def test_frames_only_scene_loads_without_points_and_fuses(tmp_path):
    # A bare SensReader export (like a 7-Scenes sequence): no coord.npy.
    rng = np.random.default_rng(0)
    d = tmp_path / "seq"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (d / sub).mkdir(parents=True)
    for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
        (d / "intrinsic" / name).write_text(K_txt(16.0, 16.0, 7.5, 5.5))
    for i in range(2):  # a wall 2 m in front of the camera
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(d / "color" / f"{i}.jpg")
        Image.fromarray(np.full((12, 16), 2000, np.uint16)).save(d / "depth" / f"{i}.png")
        np.savetxt(d / "pose" / f"{i}.txt", np.eye(4))
    s = load_scene(d)
    assert s.coord is None and len(s.frames) == 2
    pytest.importorskip("gcross_core.mapping.fusion")
    from gcross_core.mapping.frame_sets import fuse_frames_to_points
    fused = load_scene(d)
    fused = Scene(fused.name, *fuse_frames_to_points(fused.frames, 0.05), frames=fused.frames)
    assert fused.num_points > 0
    np.testing.assert_allclose(fused.coord[:, 2], 2.0, atol=0.03)
    # pretraining accepts the folder as it is: points come from fusion, views from the frames
    from gcross_core.data import AugmentConfig
    from gcross_core.pretraining.dataset import PretrainDataConfig, PretrainDataset

    cfg = PretrainDataConfig(grid_size_m=0.05, views_per_scene=2, image_size=(6, 8), fuse_voxel_size_m=0.05,
                             fuse_every=2, augment=AugmentConfig.none())
    sample = PretrainDataset([d], cfg).sample(0, np.random.default_rng(0))
    np.testing.assert_allclose(sample.coord[:, 2], 2.0, atol=0.03)
    assert sample.images.shape == (2, 6, 8, 3) and np.allclose(sample.depths_m, 2.0)
