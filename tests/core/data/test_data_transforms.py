"""Augmentation (Table S.1) keeps the views aligned: augmented points through augmented cameras land on the
same pixels at the (scaled) depth of the augmented depth maps."""
import math

import numpy as np
import pytest
import torch
import transforms3d
from scipy.spatial import cKDTree

from gcross_core.data import AugmentConfig, make_room, sample_augmentation
from gcross_core.pretraining.dataset import PretrainDataConfig, PretrainDataset
from gcross_core.geometry import backproject_depth, transform_points

H, W = 36, 48


@pytest.fixture(scope="module")
def room():
    return make_room(2, num_points=8000, num_views=3, width=64, height=48)


def project(world_to_cam, K, pts):
    cam = pts @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    return K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2], K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2], cam[:, 2]


@pytest.mark.parametrize("mode", ["reflect", "mirror_image"])
def test_augmented_points_project_onto_the_same_pixels_through_augmented_cameras(room, mode):
    cfg = PretrainDataConfig(views_per_scene=3, image_size=(H, W), augment=AugmentConfig(flip_cameras=mode))
    ds = PretrainDataset([room], cfg)
    seen_reflection = seen_rotation = False
    for seed in range(12):
        s = ds.sample(0, np.random.default_rng(seed))
        A = s.augmentation
        reflects = np.linalg.det(A[:3, :3]) < 0
        seen_reflection |= reflects
        seen_rotation |= not reflects
        scale = abs(np.linalg.det(A[:3, :3])) ** (1 / 3)
        assert 0.9 <= scale <= 1.1
        # the network's points are the scene's points moved by A
        moved = room.coord.astype(np.float64) @ A[:3, :3].T + A[:3, 3]
        assert cKDTree(moved).query(s.coord)[0].max() < 1e-5
        for k, fid in enumerate(s.frame_ids):
            f = room.frames.frame(int(fid)).resized(W, H)
            pts_cam, pix = backproject_depth(f.depth_m, f.K_depth)
            world = transform_points(f.cam_to_world, pts_cam.astype(np.float64))
            u, v, z = project(s.world_to_cam[k], s.K[k], world @ A[:3, :3].T + A[:3, 3])
            u0, v0 = (pix % W).astype(np.float64), (pix // W).astype(np.float64)
            mirrored = mode == "mirror_image" and reflects
            if mirrored:
                u0 = W - 1 - u0
            np.testing.assert_allclose(u, u0, atol=1e-3)
            np.testing.assert_allclose(v, v0, atol=1e-3)
            ui, vi = np.rint(u).astype(int), np.rint(v).astype(int)
            assert np.abs(s.depths_m[k][vi, ui] - z).max() < 1e-3  # depth agrees to 1 mm
            np.testing.assert_allclose(z, scale * pts_cam[:, 2], rtol=1e-5)
            expected = f.color[:, ::-1] if mirrored else f.color
            np.testing.assert_array_equal(s.images[k], expected)
            R = s.world_to_cam[k][:3, :3]
            assert np.linalg.det(R) == pytest.approx(-1.0 if reflects and not mirrored else 1.0, abs=1e-6)
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)  # no scale left in the camera
    assert seen_reflection and seen_rotation


def test_augmentation_follows_table_s1_ranges_and_centres_the_scene(room):
    cfg = AugmentConfig()
    reflections, tilts = 0, []
    for seed in range(200):
        aug = sample_augmentation(room.coord, cfg, np.random.default_rng(seed))
        L = aug.matrix[:3, :3]
        assert 0.9 <= aug.scale <= 1.1
        Q = aug.rotation
        np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-12)
        reflections += aug.reflects
        tilts.append(math.degrees(math.acos(min(1.0, abs(Q[2, 2])))))
        np.testing.assert_allclose(L, aug.scale * Q)
    assert 0.35 < reflections / 200 < 0.65  # one of two independent flips
    # tilt from x and y rotations of at most pi/64 each
    assert max(tilts) <= math.degrees(math.pi / 64) * math.sqrt(2) + 1e-9 and max(tilts) > 1.0
    pts = aug.points(room.coord)
    lo, hi = pts.min(0), pts.max(0)
    np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], 0, atol=1e-5)
    # normals stay unit and perpendicular to the (moved) surfaces
    n = aug.normals(room.normal)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    ident = sample_augmentation(room.coord, AugmentConfig.none(), np.random.default_rng(0))
    np.testing.assert_allclose(ident.matrix, np.eye(4))
    with pytest.raises(ValueError, match="flip_cameras"):
        AugmentConfig(flip_cameras="rotate")


def test_reflected_cameras_render_the_same_image_as_before(room):
    """The renderer takes the reflected world_to_cam as it is (R p + t, R Sigma R^T)."""
    render_mod = pytest.importorskip("gcross_core.render")
    from gcross_core.types import Cameras, Gaussians

    rng = np.random.default_rng(0)
    g = 40
    means = rng.uniform([-1, -1, 2], [1, 1, 4], (g, 3))
    quats = rng.normal(size=(g, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scales = rng.uniform(0.05, 0.2, (g, 3))
    colors, opac = rng.uniform(0, 1, (g, 3)), rng.uniform(0.3, 0.9, g)
    K = np.array([[40.0, 0, 19.5], [0, 40.0, 14.5], [0, 0, 1]])

    def draw(m, q, s, w2c, K_):
        t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        gs = Gaussians(t(m), t(q), t(s), t(colors), t(opac), torch.zeros(g, 0), torch.zeros(g, dtype=torch.int64))
        cams = Cameras(t(w2c[None]), t(K_[None]), torch.zeros(1, dtype=torch.int64))
        return render_mod.render(gs, cams, 40, 30, backend="reference")

    before = draw(means, quats, scales, np.eye(4), K)
    seed = next(s for s in range(50) if sample_augmentation(means, AugmentConfig(), np.random.default_rng(s)).reflects)
    aug = sample_augmentation(means, AugmentConfig(), np.random.default_rng(seed))
    Q = aug.rotation
    Qr = -Q  # a proper rotation with the same Q Sigma Q^T
    q2 = [transforms3d.quaternions.mat2quat(Qr @ transforms3d.quaternions.quat2mat(q)) for q in quats]
    w2c, K2, _, _ = aug.view(np.eye(4), K, np.zeros((30, 40, 3)), np.zeros((30, 40), np.float32))
    after = draw(aug.points(means), q2, scales * aug.scale, w2c, K2)
    assert before.alpha.max() > 0.5
    torch.testing.assert_close(after.color, before.color, atol=1e-4, rtol=0)
    torch.testing.assert_close(after.depth, before.depth * aug.scale, atol=1e-4, rtol=1e-5)
