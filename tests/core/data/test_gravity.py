"""Up direction from cameras / dominant plane, and the transform that makes it +z (synthetic inputs)."""
import numpy as np
import pytest

from gcross_core.data.frames import Frame, FrameList
from gcross_core.data.gravity import (estimate_up, parse_up, rotation_to_z_up, up_from_cameras,
                                      up_from_plane)
from gcross_core.errors import InputError
from gcross_core.mapping.frame_sets import fuse_frames_to_points


def _rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _tilted_up(seed=0):
    rng = np.random.default_rng(seed)
    up = rng.normal(size=3)
    return up / np.linalg.norm(up)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_to_z_up_maps_up_to_z_and_is_rigid(seed):
    up = _tilted_up(seed)
    T = rotation_to_z_up(up)
    R = T[:3, :3]
    assert np.allclose(R @ up, [0, 0, 1], atol=1e-12)
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(R), 1)
    assert np.allclose(T[:3, 3], 0) and np.allclose(T[3], [0, 0, 0, 1])


def test_rotation_to_z_up_degenerate_directions():
    assert np.allclose(rotation_to_z_up([0, 0, 2]), np.eye(4))
    T = rotation_to_z_up([0, 0, -1])
    assert np.allclose(T[:3, :3] @ [0, 0, -1], [0, 0, 1]) and np.isclose(np.linalg.det(T[:3, :3]), 1)
    with pytest.raises(InputError, match="up"):
        rotation_to_z_up([0, 0, 0])


def _cameras_around(up_world, n=12, pitch=0.4, roll_noise=0.1, seed=0):
    """Cameras looking horizontally-ish around a vertical axis ``up_world`` with random roll."""
    rng = np.random.default_rng(seed)
    # Camera in a z-up world: x right, y down = -z, z forward = horizontal.
    base = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float).T  # columns: camera axes in world
    to_world = rotation_to_z_up(up_world)[:3, :3].T  # z-up world -> tilted world
    poses = []
    for k in range(n):
        yaw = 2 * np.pi * k / n
        R = _rot([0, 0, 1], yaw) @ base @ _rot([1, 0, 0], -pitch * rng.uniform(0, 1)) \
            @ _rot([0, 0, 1], roll_noise * rng.normal())
        T = np.eye(4)
        T[:3, :3] = to_world @ R
        T[:3, 3] = rng.normal(size=3)
        poses.append(T)
    return np.stack(poses)


def test_up_from_cameras_recovers_the_tilted_vertical():
    up = _tilted_up(3)
    est = up_from_cameras(_cameras_around(up))
    assert np.isclose(np.linalg.norm(est), 1)
    assert np.degrees(np.arccos(np.clip(est @ up, -1, 1))) < 5


def test_up_from_cameras_rejects_cancelling_and_bad_poses():
    T = np.stack([np.eye(4), np.diag([1.0, -1.0, -1.0, 1.0])])  # one camera upside down against the other
    with pytest.raises(InputError, match="cancel"):
        up_from_cameras(T)
    with pytest.raises(InputError, match=r"\[N, 4, 4\]"):
        up_from_cameras(np.zeros((3, 3)))


def _table_scene(up, seed=0, n_table=3000, n_objects=600, noise=0.002):
    """A tilted table plane (normal = up) with box-shaped clutter standing on it, plus outliers."""
    rng = np.random.default_rng(seed)
    R = rotation_to_z_up(up)[:3, :3].T  # z-up -> tilted
    table = np.c_[rng.uniform(-0.5, 0.5, (n_table, 2)), rng.normal(0, noise, n_table)]
    objs = np.c_[rng.uniform(-0.2, 0.2, (n_objects, 2)), rng.uniform(0.02, 0.3, n_objects)]
    pts = np.concatenate([table, objs]) @ R.T + np.array([0.3, -0.2, 1.5])
    return pts


@pytest.mark.parametrize("seed", [0, 1])
def test_up_from_plane_finds_the_table_normal_oriented_up(seed):
    up = _tilted_up(10 + seed)
    pts = _table_scene(up, seed)
    est = up_from_plane(pts, seed=seed)  # orientation from the side holding the objects
    assert np.degrees(np.arccos(np.clip(est @ up, -1, 1))) < 2
    cam = np.array([0.3, -0.2, 1.5]) + 2.0 * up  # a camera above the table
    est2 = up_from_plane(pts, seed=seed, toward=cam)
    assert np.degrees(np.arccos(np.clip(est2 @ up, -1, 1))) < 2
    below = np.array([0.3, -0.2, 1.5]) - 2.0 * up
    assert up_from_plane(pts, seed=seed, toward=below) @ up < -0.99


def test_up_from_plane_is_reproducible_and_checks_input():
    pts = _table_scene(_tilted_up(5))
    assert np.array_equal(up_from_plane(pts, seed=4), up_from_plane(pts, seed=4))
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        up_from_plane(np.zeros((5, 2)))
    with pytest.raises(InputError, match="collinear"):
        up_from_plane(np.c_[np.arange(10.0), np.zeros(10), np.zeros(10)], iterations=20)


def _frame_of_plane(T_cam, up, w=40, h=30, f=30.0):
    """A depth image of the plane through the origin with normal ``up``, seen from camera pose T_cam."""
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    v, u = np.mgrid[0:h, 0:w]
    rays = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u, float)], -1)  # camera frame, z = 1
    d_world = rays @ T_cam[:3, :3].T
    o = T_cam[:3, 3]
    t = -(o @ up) / (d_world @ up)  # ray parameter = depth along z
    depth = np.where(t > 0, t, 0).astype(np.float32)
    return Frame(color=np.full((h, w, 3), 128, np.uint8), depth_m=depth, K_color=K, K_depth=K,
                 cam_to_world=T_cam)


def test_estimate_up_methods_on_frames():
    up = _tilted_up(7)
    poses = _cameras_around(up, n=8, pitch=0.0, roll_noise=0.0)
    # Put each camera 1.5 m above the plane through the origin and pitch it down by 50 degrees.
    frames = []
    for T in poses:
        T = T.copy()
        T[:3, :3] = T[:3, :3] @ _rot([1, 0, 0], -np.radians(50))
        T[:3, 3] = 1.5 * up + 0.2 * T[:3, 0]
        frames.append(_frame_of_plane(T, up))
    fl = FrameList(frames)
    points = fuse_frames_to_points(fl, 0.05)[0]
    for method in ("cameras", "plane"):
        est = estimate_up(fl, method, points=points)
        assert np.degrees(np.arccos(np.clip(est @ up, -1, 1))) < 3, method
    with pytest.raises(InputError, match="needs the scene's points"):
        estimate_up(fl, "plane")
    # One frame looking down at the table: the plane still gives gravity, the camera gives its own tilt.
    one = fl.subset([0])
    assert estimate_up(one, "plane", points=fuse_frames_to_points(one, 0.05)[0]) @ up > 0.999
    assert estimate_up(one, "cameras") @ up < 0.9
    assert np.allclose(estimate_up(None, "given", up=(0, 0, 3)), [0, 0, 1])
    with pytest.raises(InputError, match="unknown"):
        estimate_up(fl, "gravity")
    with pytest.raises(InputError, match="needs the up vector"):
        estimate_up(fl, "given")


def test_parse_up():
    assert parse_up("cameras") == ("cameras", None) and parse_up(" Plane ") == ("plane", None)
    m, v = parse_up("0,0,2")
    assert m == "given" and np.allclose(v, [0, 0, 1])
    with pytest.raises(InputError, match="x,y,z"):
        parse_up("up")
