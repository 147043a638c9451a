"""VoxelMap: geometry of fused voxels, invalid depth, running means, probability fusion, eviction, bad input."""
import logging
import threading

import numpy as np
import pytest

from gcross_core.errors import InputError
from gcross_core.image import depth_mm_to_m
from gcross_core.mapping.label_votes import LabelVotes
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.mapping.voxel_keys import unpack_keys
from reference_normals import depth_normals

W, H = 80, 60
K = np.array([[60.0, 0, W / 2 - 0.5], [0, 60.0, H / 2 - 0.5], [0, 0, 1]])
VOX = 0.05


def rot_z(deg):
    a = np.deg2rad(deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return T


def rot_x(deg):
    a = np.deg2rad(deg)
    T = np.eye(4)
    T[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return T


def plane_depth(z_m, h=H, w=W):
    return np.full((h, w), z_m, dtype=np.float32)


def solid_color(rgb, h=H, w=W):
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def raycast_box(cam_to_world, lo, hi, K_=K, h=H, w=W):
    """Depth [H, W] float32 of an axis-aligned box seen from outside (0 where the ray misses it)."""
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([(u - K_[0, 2]) / K_[0, 0], (v - K_[1, 2]) / K_[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d = rays @ cam_to_world[:3, :3].T  # camera z component 1: the ray parameter is the depth
    o = cam_to_world[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - o) / d, (hi - o) / d
        near = np.max(np.minimum(t0, t1), axis=1)
        far = np.min(np.maximum(t0, t1), axis=1)
    hit = (near <= far) & (near > 0)
    return np.where(hit, near, 0).reshape(h, w).astype(np.float32)


def box_surface_distance(p, lo, hi):
    """Distance of points [N, 3] to the surface of the box [lo, hi]."""
    outside = np.linalg.norm(np.maximum(np.maximum(lo - p, p - hi), 0), axis=1)
    inside = np.min(np.minimum(p - lo, hi - p), axis=1)
    return np.where(np.all((p >= lo) & (p <= hi), axis=1), inside, outside)


def test_plane_voxels_at_known_depth_and_pose():
    # Camera 1 m above the map origin looking down the map's -z axis: the plane at depth 2.01 m is z = -1.01.
    cam_to_map = rot_x(180) @ np.eye(4)
    cam_to_map[:3, 3] = [0.3, -0.2, 1.0]
    vm = VoxelMap(VOX, 10_000, 3, max_depth_m=5.0)
    stats = vm.integrate(solid_color((10, 20, 30)), plane_depth(2.01), K, cam_to_map)
    assert stats.valid_pixels == H * W and stats.new_voxels == len(vm) and stats.evicted == 0
    coords, centers = vm.coords(), vm.centers()
    np.testing.assert_allclose(coords[:, 2], 1.0 - 2.01, atol=1e-5)
    assert np.all(np.abs(coords - centers) <= VOX / 2 + 1e-5)  # running mean lies inside its voxel
    np.testing.assert_allclose(centers, (unpack_keys(vm.keys()) + 0.5) * VOX, atol=1e-6)
    # Footprint of the frustum at 2.01 m, centred under the camera (x flips with the 180 deg rotation).
    half_w = 2.01 * (W / 2) / K[0, 0]
    half_h = 2.01 * (H / 2) / K[1, 1]
    assert coords[:, 0].min() > 0.3 - half_w - 1e-3 and coords[:, 0].max() < 0.3 + half_w + 1e-3
    assert coords[:, 1].min() > -0.2 - half_h - 1e-3 and coords[:, 1].max() < -0.2 + half_h + 1e-3
    cells = np.ceil(2 * half_w / VOX) * np.ceil(2 * half_h / VOX)
    assert 0.8 * cells <= len(vm) <= 1.3 * cells
    # Normals face the camera, i.e. map +z, except on the image border (no central difference there).
    n = vm.normals()
    known = np.linalg.norm(n, axis=1) > 0
    assert known.mean() > 0.85
    np.testing.assert_allclose(n[known], np.tile([0, 0, 1.0], (known.sum(), 1)), atol=1e-4)
    np.testing.assert_allclose(vm.colors(), np.tile([10, 20, 30], (len(vm), 1)))
    assert vm.counts().sum() == H * W


def test_box_voxels_lie_on_its_surface_with_face_normals():
    lo, hi = np.array([-0.4, -0.3, -0.25]), np.array([0.4, 0.3, 0.25])
    # Camera at (1.6, -1.4, 1.2) looking at the box centre: sees the +x, -y and +z faces.
    eye = np.array([1.6, -1.4, 1.2])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    cam_to_map = np.eye(4)
    cam_to_map[:3, :3] = np.stack([right, np.cross(fwd, right), fwd], axis=1)
    cam_to_map[:3, 3] = eye
    Kb = np.array([[90.0, 0, 39.5], [0, 90.0, 29.5], [0, 0, 1]])
    depth = raycast_box(cam_to_map, lo, hi, K_=Kb)
    assert (depth > 0).mean() > 0.1
    vm = VoxelMap(0.04, 10_000, 2)
    stats = vm.integrate(solid_color((0, 0, 0)), depth, Kb, cam_to_map)
    assert stats.valid_pixels == int((depth > 0).sum())
    coords = vm.coords()
    # Means of points on one planar face lie on it; only voxels across an edge mix two faces.
    assert np.mean(box_surface_distance(coords, lo, hi) < 1e-4) > 0.8
    assert box_surface_distance(coords, lo, hi).max() < 0.04
    # Voxel centres are within half a voxel diagonal of the surface.
    assert box_surface_distance(vm.centers(), lo, hi).max() <= 0.04 * np.sqrt(3) / 2 + 1e-6
    # Every visible face is populated and its interior voxels carry the face normal.
    n = vm.normals()
    for axis, value, normal in ((0, hi[0], [1, 0, 0]), (1, lo[1], [0, -1, 0]), (2, hi[2], [0, 0, 1])):
        on_face = np.abs(coords[:, axis] - value) < 1e-3
        assert on_face.sum() > 10
        # Away from the face's edges, where central differences would reach onto the next face.
        interior = on_face & np.all((coords > lo + 0.12) | (np.arange(3) == axis), axis=1) \
            & np.all((coords < hi - 0.12) | (np.arange(3) == axis), axis=1)
        interior &= np.linalg.norm(n, axis=1) > 0
        assert interior.sum() > 3
        np.testing.assert_allclose(n[interior], np.tile(normal, (interior.sum(), 1)), atol=1e-3)


@pytest.mark.parametrize("voxel_size_m", [0.05, 0.0005])  # compact in-frame numbering, and its fallback
def test_voxels_match_a_plain_reference(voxel_size_m):
    rng = np.random.default_rng(3)
    depth = rng.uniform(1.0, 3.0, (H, W)).astype(np.float32)
    color = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    pose = rot_z(40) @ rot_x(-100)
    pose[:3, 3] = [2.0, -1.0, 1.2]
    vm = VoxelMap(voxel_size_m, 100_000, 2)
    vm.integrate(color, depth, K, pose)
    # Reference: float64 back-projection, np.unique over voxel coordinates, per-voxel means.
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    z = depth.astype(np.float64).ravel()
    pts = np.stack([(u.ravel() - K[0, 2]) * z / K[0, 0], (v.ravel() - K[1, 2]) * z / K[1, 1], z], 1)
    pts = pts @ pose[:3, :3].T + pose[:3, 3]
    cells, inverse, counts = np.unique(np.floor(pts / voxel_size_m).astype(np.int64), axis=0,
                                       return_inverse=True, return_counts=True)
    mean = np.stack([np.bincount(inverse.ravel(), pts[:, i]) for i in range(3)], 1) / counts[:, None]
    rgb = np.stack([np.bincount(inverse.ravel(), color.reshape(-1, 3)[:, i]) for i in range(3)], 1) / counts[:, None]
    ref_row = {tuple(c): i for i, c in enumerate(cells.tolist())}
    rows = np.array([ref_row.get(tuple(c), -1) for c in unpack_keys(vm.keys()).tolist()])
    found = rows >= 0
    assert vm.counts().sum() == H * W
    # float32 vs float64 arithmetic may put a point lying on a voxel face into the neighbour voxel: with
    # 0.5 mm voxels a few do; with 5 cm voxels none here.
    assert found.mean() > (0.99 if voxel_size_m < 0.01 else 1.0 - 1e-9) and len(vm) - len(cells) in (-1, 0, 1)
    same = found & (vm.counts() == np.where(found, counts[rows], -1))
    assert same.mean() > 0.99
    np.testing.assert_allclose(vm.coords()[same], mean[rows[same]], atol=1e-4)
    np.testing.assert_allclose(vm.colors()[same], rgb[rows[same]], atol=1e-3)


def test_invalid_depth_values_are_ignored():
    depth = plane_depth(1.5)
    bad = np.zeros((H, W), dtype=bool)
    bad[5, 5:15] = True
    depth[5, 5:10] = 0
    depth[5, 10] = np.nan
    depth[5, 11] = np.inf
    depth[5, 12:15] = 7.0  # beyond max_depth_m
    vm = VoxelMap(VOX, 10_000, 2, max_depth_m=4.0)
    stats = vm.integrate(solid_color((50, 60, 70)), depth, K, np.eye(4))
    assert stats.valid_pixels == H * W - bad.sum()
    assert np.all(np.isfinite(vm.coords())) and np.all(np.isfinite(vm.normals()))
    np.testing.assert_allclose(vm.coords()[:, 2], 1.5, atol=1e-5)
    # Same map as with those pixels simply zero.
    ref = VoxelMap(VOX, 10_000, 2, max_depth_m=4.0)
    ref.integrate(solid_color((50, 60, 70)), np.where(bad, 0, depth).astype(np.float32), K, np.eye(4))
    for get in ("keys", "coords", "normals", "counts", "colors"):
        np.testing.assert_array_equal(getattr(vm, get)(), getattr(ref, get)())
    # A frame with no valid pixel changes nothing but the frame counter.
    empty = vm.integrate(solid_color((0, 0, 0)), depth_mm_to_m(np.zeros((H, W), np.uint16)), K, np.eye(4))
    assert empty.valid_pixels == 0 and empty.new_voxels == 0 and len(vm) == len(ref)


def test_uint16_millimetres_are_rejected_with_the_conversion_to_use():
    rng = np.random.default_rng(0)
    depth_mm = rng.integers(800, 3000, size=(H, W)).astype(np.uint16)
    color = rng.integers(0, 256, size=(H, W, 3)).astype(np.uint8)
    vm = VoxelMap(0.03, 50_000, 4)
    expected = r"depth has dtype uint16, but depth must be float32 metres; .*gcross_core\.image\.depth_mm_to_m"
    with pytest.raises(InputError, match=expected):
        vm.integrate(color, depth_mm, K, np.eye(4))
    votes = LabelVotes()
    with pytest.raises(InputError, match=expected):
        vm.integrate_labelled(color, depth_mm, K, np.eye(4), {"label": votes}, {"label": np.ones((H, W), np.int64)})
    assert len(vm) == 0 and vm.frames_integrated == 0 and len(votes) == 0
    stats = vm.integrate(color, depth_mm_to_m(depth_mm), K, np.eye(4))
    assert stats.frame_index == 0 and stats.valid_pixels == H * W


def test_running_mean_color_and_counts():
    vm = VoxelMap(VOX, 10_000, 2)
    for value in (10, 20, 60):
        vm.integrate(solid_color((value, 2 * value, 255 - value)), plane_depth(1.0), K, np.eye(4))
    np.testing.assert_allclose(vm.colors(), np.tile([30, 60, 225], (len(vm), 1)), atol=1e-3)
    once = VoxelMap(VOX, 10_000, 2)
    once.integrate(solid_color((0, 0, 0)), plane_depth(1.0), K, np.eye(4))
    np.testing.assert_array_equal(vm.counts(), 3 * once.counts())
    np.testing.assert_array_equal(vm.last_seen(), np.full(len(vm), 2))
    # The position is a running mean too: frames at 1.00 and 1.02 m (same voxels) average to 1.01.
    pos = VoxelMap(1.0, 10_000, 2)  # large voxels: both frames land in the same four
    pos.integrate(solid_color((0, 0, 0)), plane_depth(1.01), K, np.eye(4))
    pos.integrate(solid_color((0, 0, 0)), plane_depth(1.03), K, np.eye(4))
    np.testing.assert_allclose(pos.coords()[:, 2], 1.02, atol=1e-5)


def test_probability_fusion_is_a_running_mean_not_the_last_label():
    vm = VoxelMap(VOX, 10_000, 3)
    vm.integrate(solid_color((0, 0, 0)), plane_depth(1.0), K, np.eye(4))
    n = len(vm)
    np.testing.assert_array_equal(vm.labels(), -1)
    np.testing.assert_array_equal(vm.confidence(), 0)
    rows = np.arange(n // 2)  # the other half is never segmented
    first = np.tile([0.9, 0.1, 0.0], (len(rows), 1))
    second = np.tile([0.3, 0.6, 0.1], (len(rows), 1))
    assert vm.fuse_probabilities(rows, first) == len(rows)
    vm.fuse_probabilities(rows, second)
    labels, conf = vm.labels(), vm.confidence()
    assert np.all(labels[rows] == 0)  # the last update alone says 1
    np.testing.assert_allclose(conf[rows], 0.6, atol=1e-6)
    np.testing.assert_allclose(vm.probabilities()[rows], np.tile([0.6, 0.35, 0.05], (len(rows), 1)), atol=1e-6)
    assert np.all(labels[n // 2:] == -1) and np.all(conf[n // 2:] == 0)
    # A third, confident update tips the mean: (0.9 + 0.3 + 0) / 3 < (0.1 + 0.6 + 1) / 3.
    vm.fuse_probabilities(rows, np.tile([0.0, 1.0, 0.0], (len(rows), 1)))
    assert np.all(vm.labels()[rows] == 1)


def test_fuse_with_snapshot_survives_eviction():
    vm = VoxelMap(VOX, 10_000, 2)
    vm.integrate(solid_color((0, 0, 0)), plane_depth(1.0), K, np.eye(4))
    snap = vm.snapshot()
    assert len(snap) == len(vm) and snap.coords.shape == (len(vm), 3)
    snap.coords[:] = 0  # a copy: the map is unaffected
    assert np.all(vm.coords()[:, 2] > 0.9)
    # Meanwhile the map moves on and evicts the voxels the snapshot holds, except those seen again.
    small = VoxelMap(VOX, len(vm) + 100, 2, evict_fraction=0.0)
    small.integrate(solid_color((0, 0, 0)), plane_depth(1.0), K, np.eye(4))
    snap = small.snapshot()
    keep_depth = plane_depth(1.0)
    keep_depth[:, W // 2:] = 1.2  # right half now at 1.2 m: ~400 new voxels, left-half voxels seen again
    small.integrate(solid_color((0, 0, 0)), keep_depth, K, np.eye(4))
    assert small.layout_version > snap.layout_version and len(small) <= small.max_voxels
    probs = np.tile([0.2, 0.8], (len(snap), 1))
    fused = small.fuse_probabilities(np.arange(len(snap)), probs, snapshot=snap)
    still_there = np.isin(snap.keys, small.keys())
    assert fused == still_there.sum() and 0 < fused < len(snap)
    lab = dict(zip(small.keys().tolist(), small.labels().tolist()))
    assert all(lab[k] == 1 for k in snap.keys[still_there].tolist())
    assert sum(v == 1 for v in lab.values()) == fused


def test_eviction_bound_and_order(caplog):
    # fx = 10 px at 2 m spreads pixels 0.2 m apart, so with 0.05 m voxels every pixel is its own voxel
    # and counts equal the number of frames that saw a voxel.
    w, h = 12, 10
    Ks = np.array([[10.0, 0, 5.5], [0, 10.0, 4.5], [0, 0, 1]])
    col = solid_color((0, 0, 0), h, w)
    vm = VoxelMap(VOX, 3 * w * h, 2, evict_fraction=0.0)
    A, B, C, D = (plane_depth(z, h, w) for z in (2.0, 2.5, 3.0, 3.5))
    partial = A.copy()
    partial[:, w // 2:] = 0  # left half of plane A only
    vm.integrate(col, A, Ks, np.eye(4))  # frame 0: A
    vm.integrate(col, B, Ks, np.eye(4))  # frame 1: B
    vm.integrate(col, partial, Ks, np.eye(4))  # frame 2: left half of A again (count 2)
    vm.integrate(col, C, Ks, np.eye(4))  # frame 3: C; map now full (A, B, C)
    assert len(vm) == 3 * w * h
    with caplog.at_level(logging.WARNING, logger="gcross_core.mapping.fusion"):
        stats = vm.integrate(col, D, Ks, np.eye(4))  # frame 4: D needs w*h slots
    assert stats.evicted == w * h and len(vm) == 3 * w * h
    assert any("evicted" in r.message and str(w * h) in r.message for r in caplog.records)
    depth_of = np.round(vm.coords()[:, 2], 3)
    # Least recently seen first: A's right half (last seen in frame 0, w*h/2 voxels), then half of B (frame
    # 1); A's left half, seen again in frame 2, stays.
    a_left = (depth_of == 2.0) & (vm.coords()[:, 0] < 0)
    assert a_left.sum() == w * h // 2 and not ((depth_of == 2.0) & (vm.coords()[:, 0] > 0)).any()
    assert (depth_of == 2.5).sum() == w * h // 2
    assert (depth_of == 3.0).sum() == w * h and (depth_of == 3.5).sum() == w * h


def test_eviction_ties_on_last_seen_go_by_count():
    w, h = 12, 10  # one voxel per pixel, as above
    Ks = np.array([[10.0, 0, 5.5], [0, 10.0, 4.5], [0, 0, 1]])
    col = solid_color((0, 0, 0), h, w)
    left_a = np.where(np.arange(w) < w // 2, 2.0, 0)[None, :].repeat(h, 0).astype(np.float32)
    left_a_right_c = np.where(np.arange(w) < w // 2, 2.0, 3.0)[None, :].repeat(h, 0).astype(np.float32)
    three_cols_d = np.where(np.arange(w) < 3, 3.5, 0)[None, :].repeat(h, 0).astype(np.float32)
    vm = VoxelMap(VOX, w * h, 2, evict_fraction=0.0)
    vm.integrate(col, left_a, Ks, np.eye(4))
    vm.integrate(col, left_a_right_c, Ks, np.eye(4))  # both halves last seen now; A's left half counts 2
    stats = vm.integrate(col, three_cols_d, Ks, np.eye(4))  # 3 * h new voxels: evicted from C (count 1)
    depth_of = np.round(vm.coords()[:, 2], 3)
    assert stats.evicted == 3 * h and len(vm) == w * h
    assert (depth_of == 2.0).sum() == w * h // 2
    assert (depth_of == 3.0).sum() == w * h // 2 - 3 * h
    assert (depth_of == 3.5).sum() == 3 * h


def test_eviction_keeps_size_bounded_over_many_frames():
    rng = np.random.default_rng(1)
    vm = VoxelMap(0.02, 6_000, 2)  # each frame below brings ~4800 voxels
    for k in range(6):
        pose = rot_z(60 * k)
        pose[:3, 3] = rng.uniform(-1, 1, 3)
        depth = rng.uniform(1.0, 3.0, (H, W)).astype(np.float32)
        stats = vm.integrate(solid_color((k, k, k)), depth, K, pose)
        assert len(vm) <= 6_000 and stats.map_voxels == len(vm)
        assert vm._cap <= 6_000  # storage never grows past the bound either
    assert vm.evicted_total > 0
    # A frame with more new voxels than max_voxels keeps the best-observed ones.
    tiny = VoxelMap(0.02, 50, 2)
    stats = tiny.integrate(solid_color((0, 0, 0)), rng.uniform(1, 3, (H, W)).astype(np.float32), K, np.eye(4))
    assert len(tiny) == 50 and stats.new_voxels == 50 and stats.evicted == stats.frame_voxels - 50


def test_depth_normals_face_the_camera_and_skip_edges():
    depth = plane_depth(2.0)
    depth[:, W // 2:] = 3.0  # occlusion edge in the middle
    n = depth_normals(depth, K)
    assert n.shape == (H, W, 3)
    np.testing.assert_allclose(n[10, 10], [0, 0, -1], atol=1e-5)
    np.testing.assert_array_equal(n[:, W // 2 - 1], 0)  # across the jump
    np.testing.assert_array_equal(n[0], 0)  # border
    # A plane tilted about the camera y axis: x = 0.5 (z - 2) in camera coordinates.
    # A plane tilted about the camera y axis, x + z = 2: x = u z / fx gives z = 2 / (u / fx + 1).
    u = np.arange(W) - K[0, 2]
    tilted = np.tile((2.0 / (u / K[0, 0] + 1)).astype(np.float32), (H, 1))
    nt = depth_normals(tilted, K)[H // 2, W // 2]
    expected = -np.array([1.0, 0, 1.0]) / np.sqrt(2)  # toward the camera at the origin
    np.testing.assert_allclose(nt, expected, atol=1e-4)


@pytest.mark.parametrize("case, match", [
    ("size", "depth image 80x60 does not match color 40x60"),
    ("color_dtype", "color_rgb .*expected uint8"),
    ("depth_dtype", "depth has dtype float64, expected float32 metres"),
    ("depth_ndim", "depth has shape"),
    ("pose_nan", "cam_to_map contains NaN"),
    ("pose_scaled", "cam_to_map is not rigid"),
    ("pose_shape", "cam_to_map has shape"),
    ("K_shape", "K has shape"),
    ("K_focal", "K has focal lengths"),
    ("K_nan", "K contains NaN"),
])
def test_bad_input_raises_value_error(case, match):
    vm = VoxelMap(VOX, 1000, 2)
    color, depth, K_, pose = solid_color((0, 0, 0)), plane_depth(1.0), K.copy(), np.eye(4)
    if case == "size":
        color = solid_color((0, 0, 0), H, W // 2)
    elif case == "color_dtype":
        color = color.astype(np.float32)
    elif case == "depth_dtype":
        depth = depth.astype(np.float64)
    elif case == "depth_ndim":
        depth = depth[..., None]
    elif case == "pose_nan":
        pose[0, 3] = np.nan
    elif case == "pose_scaled":
        pose[:3, :3] *= 2
    elif case == "pose_shape":
        pose = pose[:3]
    elif case == "K_shape":
        K_ = np.eye(4)
    elif case == "K_focal":
        K_[0, 0] = -5
    elif case == "K_nan":
        K_[0, 2] = np.nan
    with pytest.raises(ValueError, match=match):
        vm.integrate(color, depth, K_, pose)
    assert len(vm) == 0 and vm.frames_integrated == 0


def test_bad_probabilities_and_constructor_args():
    vm = VoxelMap(VOX, 1000, 3)
    vm.integrate(solid_color((0, 0, 0)), plane_depth(1.0), K, np.eye(4))
    good = np.tile([0.2, 0.3, 0.5], (2, 1))
    with pytest.raises(ValueError, match="probs has shape"):
        vm.fuse_probabilities(np.arange(2), good[:, :2])
    with pytest.raises(ValueError, match="do not sum to 1"):
        vm.fuse_probabilities(np.arange(2), good * 2)
    with pytest.raises(ValueError, match="out of range"):
        vm.fuse_probabilities(np.array([0, len(vm)]), good)
    with pytest.raises(ValueError, match="duplicates"):
        vm.fuse_probabilities(np.array([1, 1]), good)
    with pytest.raises(ValueError, match="voxel_size_m"):
        VoxelMap(0.0, 10, 2)
    with pytest.raises(ValueError, match="max_voxels"):
        VoxelMap(0.02, 0, 2)
    with pytest.raises(ValueError, match="num_classes"):
        VoxelMap(0.02, 10, 0)


def test_concurrent_integrate_and_segment_updates():
    vm = VoxelMap(0.02, 3_000, 2)
    rng = np.random.default_rng(2)
    errors = []

    def segment_worker():
        try:
            for i in range(20):
                snap = vm.snapshot(with_labels=bool(i % 2))
                assert len(snap.keys) == len(snap.coords) == len(snap.normals) == len(snap.counts)
                assert snap.labels is None or len(snap.labels) == len(snap)
                probs = np.tile([0.7, 0.3], (len(snap), 1))
                vm.fuse_probabilities(np.arange(len(snap)), probs, snapshot=snap)
        except Exception as e:  # surfaced in the main thread below
            errors.append(e)

    t = threading.Thread(target=segment_worker)
    t.start()
    for k in range(15):
        pose = rot_z(25 * k)
        vm.integrate(solid_color((k, 0, 0)), rng.uniform(1, 3, (H, W)).astype(np.float32), K, pose)
    t.join()
    assert not errors, errors
    assert len(vm) <= 3_000
    labels = vm.labels()
    assert set(np.unique(labels)) <= {-1, 0}


def test_label_votes_majority_across_frames_and_buffering():
    from gcross_core.mapping.label_votes import LabelVotes

    votes = LabelVotes()
    keys = np.array([10, 20, 30], np.int64)
    # frame 1: voxel 10 gets ids 3, 3, 5; voxel 20 only unlabelled pixels; voxel 30 id 7
    votes.add(keys, np.array([0, 0, 0, 1, 1, 2]), np.array([3, 3, 5, 0, 0, 7]))
    # frame 2: voxel 10 gets 5, 5, 5 -> 5 wins 4 to 2; voxel 30 gets 2 -> tie 1:1 with 7, smaller id wins
    votes.add(keys, np.array([0, 0, 0, 2]), np.array([5, 5, 5, 2]))
    np.testing.assert_array_equal(votes.majority(np.array([10, 20, 30, 40])), [5, -1, 2, -1])
    assert len(votes) == 4  # (10, 3), (10, 5), (30, 7), (30, 2)
    with pytest.raises(ValueError, match="negative"):
        votes.add(keys, np.array([0]), np.array([-2]))
