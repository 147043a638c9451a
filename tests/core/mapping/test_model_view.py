"""render_source gaussians: a voxel map rendered through a GaussianCross model (colour, depth, semantic,
features with a PCA basis fixed per map)."""
import numpy as np
import pytest
import torch

from gcross_core.config import from_dict
from gcross_core.data.synthetic import make_room
from gcross_core.evaluation.report import class_palette
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.map_view import visible_voxels
from gcross_core.mapping.model_view import ModelMapRenderer
from gcross_core.model.api import GaussianCrossModel
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
