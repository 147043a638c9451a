"""What the node renders of a voxel map: voxel Gaussians, the visible set, and the rendered view."""
import numpy as np
import pytest

from gcross_core.mapping.map_view import level_of_detail, render_map_view, visible_voxels, voxel_gaussians

K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])  # 32 x 24
W, H = 32, 24
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def _wall(z_m=2.0, voxel_m=0.05, half_m=1.5):
    """A wall of voxels facing the camera at the origin (optical frame = map frame)."""
    xs = np.arange(-half_m, half_m + 1e-9, voxel_m)
    x, y = np.meshgrid(xs, xs)
    coords = np.stack([x.ravel(), y.ravel(), np.full(x.size, z_m)], 1).astype(np.float32)
    return coords, np.full((len(coords), 3), 200.0), np.where(coords[:, 0] < 0, 0, 2)


def test_voxel_gaussians_carry_one_hot_labels():
    coords, colors, labels = _wall()
    labels[:5] = -1
    g = voxel_gaussians(coords, colors, labels, num_classes=3, voxel_size_m=0.05)
    feats = g.features.numpy()
    assert feats.shape == (len(coords), 3)
    assert (feats[:5] == 0).all()
    np.testing.assert_array_equal(feats[5:].argmax(1), labels[5:])
    assert (feats.sum(1)[5:] == 1).all()
    np.testing.assert_allclose(g.scales.numpy(), 0.025)
    with pytest.raises(ValueError, match="labels has shape"):
        voxel_gaussians(coords, colors, labels[:-1], 3, 0.05)


def test_visible_voxels_keeps_the_nearest_in_front():
    coords = np.array([[0, 0, 2.0], [0, 0, -2.0], [0, 0, 1.0], [50.0, 0, 1.0], [0, 0, 3.0]], np.float32)
    idx = visible_voxels(coords, np.eye(4), K, W, H, margin_m=0.0, limit=10)
    assert sorted(idx.tolist()) == [0, 2, 4]  # behind the camera and far outside the image are dropped
    assert sorted(visible_voxels(coords, np.eye(4), K, W, H, 0.0, limit=2).tolist()) == [0, 2]


def test_rendered_wall_has_its_depth_and_class_colours():
    coords, colors, labels = _wall()
    view = render_map_view(coords, colors, labels, np.eye(4), K, W, H, PALETTE, voxel_size_m=0.05,
                           max_gaussians=10_000, backend="reference")
    assert view.color.shape == (H, W, 3) and view.depth_m.shape == (H, W) and view.semantic.shape == (H, W, 3)
    assert np.isfinite(view.depth_m).all()  # the wall fills the image (alpha >= RENDER_MIN_ALPHA everywhere)
    assert abs(np.median(view.depth_m) - 2.0) < 0.05
    assert abs(int(np.median(view.color)) - 200) <= 20
    np.testing.assert_array_equal(view.semantic[H // 2, 2], PALETTE[0])  # left half: class 0
    np.testing.assert_array_equal(view.semantic[H // 2, W - 3], PALETTE[2])  # right half: class 2


def test_empty_view_renders_nothing():
    coords, colors, labels = _wall(z_m=-2.0)  # behind the camera
    view = render_map_view(coords, colors, labels, np.eye(4), K, W, H, PALETTE, 0.05, 10_000, backend="reference")
    assert np.isnan(view.depth_m).all() and not view.color.any() and not view.semantic.any()


def _corridor(voxel_m=0.1, length_m=20.0):
    """Floor and two walls of a corridor receding from a camera at the origin looking along +z."""
    zs = np.arange(0.3, length_m, voxel_m)
    x, z = np.meshgrid(np.arange(-2, 2, voxel_m), zs)
    floor = np.stack([x.ravel(), np.full(x.size, 1.0), z.ravel()], 1)
    y, z = np.meshgrid(np.arange(-1.5, 1.0, voxel_m), zs)
    left = np.stack([np.full(y.size, -2.0), y.ravel(), z.ravel()], 1)
    right = left * [-1, 1, 1]
    coords = np.concatenate([floor, left, right]) + voxel_m / 2  # voxel centres, off the lattice planes
    return coords.astype(np.float32), np.full((len(coords), 3), 150.0), np.repeat([0, 1, 2], [len(floor), len(left), len(right)])


def test_level_of_detail_meets_the_budget_and_keeps_near_voxels():
    coords, colors, labels = _corridor()
    idx, z = visible_voxels(coords, np.eye(4), K, W, H, margin_m=0.15, return_depth=True)
    feats = np.eye(3, dtype=np.float32)[labels[idx]]
    limit = len(idx) // 10
    lod = level_of_detail(coords[idx], colors[idx], feats, z, 0.1, limit)
    assert len(lod.means) <= limit and 0.3 < lod.near_m < 20
    near = z < lod.near_m
    assert near.any()
    kept = {tuple(p) for p in coords[idx][near]}  # voxels nearer than near_m are splatted as they are
    assert kept <= {tuple(p) for p in lod.means}
    np.testing.assert_allclose(lod.features.sum(1), 1, atol=1e-5)  # label mixes of labelled voxels
    assert lod.sigma_m.min() == pytest.approx(0.05) and lod.sigma_m.max() > 0.05
    untouched = level_of_detail(coords[idx], colors[idx], feats, z, 0.1, len(idx))
    assert len(untouched.means) == len(idx) and untouched.near_m == np.inf


def test_render_coverage_with_a_gaussian_budget_below_the_map_size():
    """Merging distant voxels keeps the whole frustum covered where keeping the nearest left holes."""
    coords, colors, labels = _corridor(voxel_m=0.15, length_m=12.0)
    idx = visible_voxels(coords, np.eye(4), K, W, H, margin_m=0.2)
    budget = len(idx) // 10

    def coverage(c, lab, limit):
        view = render_map_view(c, colors[:len(c)], lab, np.eye(4), K, W, H, PALETTE, 0.15, limit,
                               backend="reference")
        return np.isfinite(view.depth_m).mean(), view

    full, _ = coverage(coords, labels, len(coords))
    lod, view = coverage(coords, labels, budget)
    assert view.gaussians <= budget < view.voxels_in_view
    assert lod >= 0.98 * full
    nearest = idx[np.argsort(coords[idx, 2])[:budget]]
    assert coverage(coords[nearest], labels[nearest], budget)[0] < 0.9 * full
