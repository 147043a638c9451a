"""render_source gaussians: a voxel map rendered through a GaussianCross model (colour, depth, semantic,
features with a PCA basis fixed per map; the map turned z-up for the model)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from gcross_core.config import from_dict
from gcross_core.data.gravity import rotation_to_z_up
from gcross_core.data.synthetic import make_room
from gcross_core.errors import InputError
from gcross_core.evaluation.report import class_palette
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.map_view import visible_voxels
from gcross_core.mapping.model_view import ModelMapRenderer, render_view
from gcross_core.model.api import DEMO_MODEL, GaussianCrossModel
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig

MODEL = {
    "encoder": {"base_channels": 8, "channels": [8, 16, 16, 8], "layers": [1, 1, 1, 1]},
    "head": {"grid": [16, 16, 8], "dense_channels": 8, "dense_blocks": 1, "head_hidden": 8, "feature_dim": 4},
    "grid_size_m": 0.1,
}
W, H = 40, 30


@pytest.fixture(scope="module")
def room_map():
    room = make_room(3, num_points=2000, num_views=3, width=W, height=H)
    vmap = VoxelMap(0.05, 100_000, num_classes=4)
    for f in room.frames:
        vmap.integrate(f.color, f.depth_m, f.K_depth, f.cam_to_world)
    n = len(vmap)
    vmap.fuse_probabilities(np.arange(n), np.eye(4, dtype=np.float32)[np.arange(n) % 2])
    return room, vmap


def _renderer():
    torch.manual_seed(0)
    model = GaussianCrossModel(GaussianCross(from_dict(GaussianCrossConfig, MODEL)))
    return ModelMapRenderer(model, max_points=50_000, context_m=0.3, backend="reference")


def test_renders_every_view_of_the_configured_size(room_map, one_torch_thread):
    room, vmap = room_map
    r = _renderer()
    palette = class_palette(4)
    f = room.frames.frame(0)
    view = r.render(vmap.snapshot(), f.cam_to_world, f.K_depth, W, H, palette)
    assert view.color.shape == (H, W, 3) and view.features.shape == (H, W, 3) and view.semantic.shape == (H, W, 3)
    covered = np.isfinite(view.depth_m)
    assert covered.mean() > 0.5  # the room seen from one of its own cameras
    # model depth near the sensor depth where both exist (an untrained model: loosely)
    sensor = f.depth_m
    both = covered & (sensor > 0)
    assert np.median(np.abs(view.depth_m[both] - sensor[both])) < 0.5
    # classes 0 and 1 of the palette appear; features are coloured where covered, black elsewhere
    colours = {tuple(c) for c in view.semantic[covered].reshape(-1, 3)}
    assert tuple(palette[0]) in colours or tuple(palette[1]) in colours
    assert view.features[covered].any() and not view.features[~covered].any()


def test_pca_basis_is_fixed_per_map(room_map, one_torch_thread):
    room, vmap = room_map
    r = _renderer()
    palette = class_palette(4)
    snap = vmap.snapshot()
    f0, f1 = room.frames.frame(0), room.frames.frame(1)
    a = r.render(snap, f0.cam_to_world, f0.K_depth, W, H, palette)
    basis = r.basis
    assert basis is not None
    r.render(snap, f1.cam_to_world, f1.K_depth, W, H, palette)
    assert r.basis is basis  # a second view keeps the colours of the first
    again = r.render(snap, f0.cam_to_world, f0.K_depth, W, H, palette)
    np.testing.assert_array_equal(again.features, a.features)
    # a new map (fewer frames integrated) gets a new basis
    fresh = VoxelMap(0.05, 100_000, num_classes=4)
    fresh.integrate(f1.color, f1.depth_m, f1.K_depth, f1.cam_to_world)
    r.render(fresh.snapshot(), f1.cam_to_world, f1.K_depth, W, H, palette)
    assert r.basis is not basis


def test_empty_view_renders_nothing(room_map):
    room, vmap = room_map
    r = _renderer()
    away = np.eye(4)
    away[:3, 3] = [100.0, 100.0, 100.0]
    view = r.render(vmap.snapshot(), away, room.frames.frame(0).K_depth, W, H, class_palette(4))
    assert np.isnan(view.depth_m).all() and not view.color.any() and not view.features.any()
    assert r.basis is None


def test_model_input_is_thinned_to_the_model_grid_then_cut_by_distance(room_map):
    room, vmap = room_map
    snap = vmap.snapshot()
    f = room.frames.frame(0)
    r = _renderer()  # model grid 0.1 m, map voxels 0.05 m
    visible = visible_voxels(snap.coords, f.cam_to_world, f.K_depth, W, H, r.context_m, len(snap.coords))
    thinned = r._model_input(snap.coords, f.cam_to_world, f.K_depth, W, H)
    assert set(thinned) <= set(visible) and len(thinned) < 0.8 * len(visible)
    r.max_points = 50
    near = r._model_input(snap.coords, f.cam_to_world, f.K_depth, W, H)
    assert len(near) == 50 and set(near) <= set(thinned)
    depth = (snap.coords - f.cam_to_world[:3, 3]) @ f.cam_to_world[:3, 2]
    assert depth[near].max() <= np.sort(depth[thinned])[49] + 1e-6  # the nearest cells are kept


# --- up direction: the model sees the map turned z-up, the views stay in the camera's pixels ---------------

HELD_W, HELD_H = 80, 60
FUSED, HELD_OUT = (0, 1, 2, 3), (4, 5)


def _tilt(deg: float = 70.0) -> np.ndarray:
    """[4, 4] z-up map -> a tilted map frame: a turn about x plus a translation (a camera-like world frame)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    T = np.eye(4)
    T[:3, :3] = [[1, 0, 0], [0, c, -s], [0, s, c]]
    T[:3, 3] = [0.37, -1.21, 2.53]
    return T


def _moved(snap, T):
    """The snapshot's voxels moved rigidly by T (points and normals); the same map in another frame."""
    R = T[:3, :3]
    return replace(snap, coords=(snap.coords.astype(np.float64) @ R.T + T[:3, 3]).astype(np.float32),
                   normals=(snap.normals.astype(np.float64) @ R.T).astype(np.float32))


def _psnr(color: np.ndarray, target: np.ndarray) -> float:  # [H, W, 3] uint8 both
    mse = np.mean((color.astype(np.float64) - target.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


@pytest.fixture(scope="module")
def unseen_room():
    """A room the shipped model never saw (it was trained on seeds 0-7), fused from 4 of its 6 views."""
    room = make_room(1000, num_points=2000, num_views=len(FUSED) + len(HELD_OUT), width=HELD_W, height=HELD_H)
    vmap = VoxelMap(0.05, 100_000, num_classes=4)
    for i in FUSED:
        f = room.frames.frame(i)
        vmap.integrate(f.color, f.depth_m, f.K_depth, f.cam_to_world)
    return room, vmap.snapshot()


@pytest.fixture(scope="module")
def shipped_model():
    # a trained model: PSNR against the recorded colour says whether it saw the room the way it was trained
    return GaussianCrossModel.from_checkpoint(DEMO_MODEL)


def _held_out_psnr(room, snap, renderer, T=np.eye(4)) -> list:
    """PSNR of the held-out views of ``snap`` rendered through ``renderer`` (render_view, the node's
    entry), the cameras moved by T like the map."""
    scores = []
    for i in HELD_OUT:
        f = room.frames.frame(i)
        view = render_view(snap, T @ f.cam_to_world, f.K_depth, HELD_W, HELD_H, class_palette(4),
                           voxel_size_m=0.05, max_gaussians=50_000, model_renderer=renderer)
        assert view.color.shape == (HELD_H, HELD_W, 3)
        scores.append(_psnr(view.color, f.color))
    return scores


def _observing(renderer, room, T=np.eye(4)):
    for i in FUSED:
        renderer.observe_camera(T @ room.frames.frame(i).cam_to_world)
    return renderer


def test_tilted_map_renders_as_the_z_up_map(unseen_room, shipped_model, one_torch_thread):
    # The acceptance: held-out-view PSNR on a tilted map frame equals that of the z-up frame within
    # 0.2 dB. Exact image equality is out of reach: the tilted map's float32 coordinates, turned back, differ
    # from the originals by ~1e-6 m, enough to move a point across one of the model's grid cells now and then.
    room, snap = unseen_room
    T = _tilt()
    tilted = _moved(snap, T)
    new = lambda **kw: ModelMapRenderer(shipped_model, 50_000, backend="reference", **kw)  # noqa: E731
    # given up: the tilt's image of +z. The smallest rotation onto +z undoes a turn about x exactly.
    z_up = _held_out_psnr(room, snap, new(up=(0, 0, 1)))
    given = _held_out_psnr(room, tilted, new(up=T[:3, 2]), T)
    np.testing.assert_allclose(given, z_up, atol=0.2)
    # up (and heading) from the cameras: the same estimate in both frames, so the same model input up to a
    # translation. It is ~7 degrees off the true up with 4 cameras, so compare with the z-up map's own.
    from_cams_z_up = _held_out_psnr(room, snap, _observing(new(), room))
    tilted_renderer = _observing(new(), room, T)
    from_cams = _held_out_psnr(room, tilted, tilted_renderer, T)
    np.testing.assert_allclose(from_cams, from_cams_z_up, atol=0.2)
    assert tilted_renderer.up @ T[:3, 2] > np.cos(np.radians(15))


def test_without_the_z_up_turn_a_tilted_map_renders_worse(unseen_room, shipped_model, one_torch_thread):
    # What the issue measured on 7-Scenes (12.30 dB tilted against 13.76 dB z-up): the model given the room
    # tilted 70 degrees (up forced to the map's +z, i.e. no turn) renders it worse than the same room z-up.
    room, snap = unseen_room
    T = _tilt()
    z_up = _held_out_psnr(room, snap, ModelMapRenderer(shipped_model, 50_000, backend="reference"))
    unturned = _held_out_psnr(room, _moved(snap, T), ModelMapRenderer(shipped_model, 50_000, backend="reference",
                                                                       up=(0, 0, 1)), T)
    assert np.mean(unturned) < np.mean(z_up) - 1.0


def test_up_is_given_or_a_running_estimate_from_the_cameras(room_map):
    room, _ = room_map
    poses = [room.frames.frame(i).cam_to_world for i in range(len(room.frames))]
    r = _renderer()
    np.testing.assert_array_equal(r.up, [0, 0, 1])  # no camera yet: the map as it is
    np.testing.assert_array_equal(r.to_z_up, np.eye(4))
    # a rigid turn of the map frame (not about a principal axis), cameras turned with it
    T = rotation_to_z_up([0.3, -0.8, 0.5]) @ _tilt(25.0)
    r.observe_camera(T @ poses[0])
    np.testing.assert_allclose(r.up, -(T @ poses[0])[:3, 1], atol=1e-12)  # one camera: minus its down axis
    for pose in poses[1:]:
        r.observe_camera(T @ pose)
    assert r.cameras_observed == len(poses)
    upright = _renderer()
    for pose in poses:
        upright.observe_camera(pose)
    np.testing.assert_allclose(r.up, T[:3, :3] @ upright.up, atol=1e-9)
    # up onto +z, and the whole turn follows the map frame: (R' T) = R up to nothing (rotation parts)
    np.testing.assert_allclose(r.to_z_up[:3, :3] @ r.up, [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(r.to_z_up[:3, :3] @ T[:3, :3], upright.to_z_up[:3, :3], atol=1e-9)
    r.reset()
    assert r.cameras_observed == 0
    np.testing.assert_array_equal(r.up, [0, 0, 1])
    # a given up vector wins over the cameras and turns by the smallest rotation
    g = ModelMapRenderer(r.model, 100, up=(0, -2, 0))
    g.observe_camera(poses[0])
    np.testing.assert_allclose(g.up, [0, -1, 0])
    np.testing.assert_allclose(g.to_z_up, rotation_to_z_up([0, -1, 0]))
    with pytest.raises(InputError, match="cam_to_map has shape"):
        g.observe_camera(np.eye(3))
    with pytest.raises(InputError, match="NaN"):
        g.observe_camera(np.full((4, 4), np.nan))
    with pytest.raises(InputError, match="zero vector"):
        ModelMapRenderer(r.model, 100, up=(0, 0, 0))


def test_a_replaced_map_keeps_only_the_cameras_observed_since_the_previous_render(room_map):
    room, vmap = room_map
    f0, f1 = room.frames.frame(0), room.frames.frame(1)
    away = np.eye(4)
    away[:3, 3] = [100.0, 100.0, 100.0]  # sees nothing: the render is cheap
    r = _renderer()
    for i in range(len(room.frames)):
        r.observe_camera(room.frames.frame(i).cam_to_world)
    r.render(vmap.snapshot(), away, f0.K_depth, W, H, class_palette(4))
    tilted = _tilt() @ f1.cam_to_world  # the new map's first frame, observed before its first render
    r.observe_camera(tilted)
    fresh = VoxelMap(0.05, 100_000, num_classes=4)
    fresh.integrate(f1.color, f1.depth_m, f1.K_depth, tilted)
    r.render(fresh.snapshot(), away, f1.K_depth, W, H, class_palette(4))  # fewer frames: a new map
    assert r.cameras_observed == 1
    np.testing.assert_allclose(r.up, -tilted[:3, 1], atol=1e-12)
