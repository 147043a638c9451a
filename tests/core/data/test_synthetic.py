"""Synthetic rooms: deterministic, frames consistent with the points, written as readable scene folders."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from gcross_core.data import SCANNET20_CLASSES, SYNTHETIC_CLASSES, load_scene, make_room
from gcross_core.data.synthetic import RoomConfig, room_boxes, write_rooms
from gcross_core.geometry import backproject_depth, transform_points

ROOM = dict(num_points=30_000, num_views=3, width=64, height=48)


@pytest.fixture(scope="module")
def room():
    return make_room(5, **ROOM)


def distance_to_box_surfaces(p, center, half, yaw):
    """[M] distance of each point to the nearest box surface (exact signed-distance formula)."""
    c, s = np.cos(yaw), np.sin(yaw)
    best = np.full(len(p), np.inf)
    for b in range(len(center)):
        d = p - center[b]
        q = np.stack([c[b] * d[:, 0] + s[b] * d[:, 1], -s[b] * d[:, 0] + c[b] * d[:, 1], d[:, 2]], 1)
        dq = np.abs(q) - half[b]
        sd = np.linalg.norm(np.maximum(dq, 0), axis=1) + np.minimum(dq.max(1), 0)
        best = np.minimum(best, np.abs(sd))
    return best


def test_same_seed_same_room_other_seed_other_room(room):
    again = make_room(5, **ROOM)
    np.testing.assert_array_equal(again.coord, room.coord)
    np.testing.assert_array_equal(again.color, room.color)
    for f, g in zip(room.frames, again.frames):
        np.testing.assert_array_equal(f.color, g.color)
        np.testing.assert_array_equal(f.depth_m, g.depth_m)
    other = make_room(6, **ROOM)
    assert other.coord.shape != room.coord.shape or not np.allclose(other.coord, room.coord)
    # the point budget draws from its own stream: layout and cameras stay
    fewer = make_room(5, **{**ROOM, "num_points": 5000})
    np.testing.assert_array_equal(fewer.frames.frame(1).depth_m, room.frames.frame(1).depth_m)


def test_points_labels_and_normals_are_well_formed(room):
    n = room.num_points
    assert 0.8 * ROOM["num_points"] <= n <= ROOM["num_points"]
    np.testing.assert_allclose(np.linalg.norm(room.normal, axis=1), 1.0, atol=1e-5)
    assert room.class_names == SYNTHETIC_CLASSES
    assert room.segment.min() >= 0 and room.segment.max() < len(SYNTHETIC_CLASSES)
    seg20 = room.extra["segment20"]
    assert [SCANNET20_CLASSES[j] for j in seg20[:50]] == [SYNTHETIC_CLASSES[i] for i in room.segment[:50]]
    assert {"wall", "floor"} <= {SYNTHETIC_CLASSES[i] for i in np.unique(room.segment)}
    assert len(np.unique(room.segment)) >= 5
    # colors differ between classes more than within them (a learnable signal)
    means = np.array([room.color[room.segment == k].mean(0) for k in np.unique(room.segment)])
    assert np.min(np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(len(means), 1)]) > 15


def test_frames_agree_with_the_sampled_surfaces(room):
    center, half, yaw, _ = room_boxes(5, **ROOM)
    # every sampled point lies on a box surface, and faces its normal's side outwards
    assert distance_to_box_surfaces(room.coord.astype(np.float64), center, half, yaw).max() < 1e-5
    tree = cKDTree(room.coord)
    spacing = np.sqrt(np.median(tree.query(room.coord, k=2)[0][:, 1] ** 2))
    for f in room.frames:
        assert f.color.shape == (48, 64, 3) and f.depth_m.shape == (48, 64)
        assert (f.depth_m > 0).mean() > 0.5
        pts_cam, pix = backproject_depth(f.depth_m, f.K_depth)
        world = transform_points(f.cam_to_world, pts_cam.astype(np.float64))
        # exact depth: back-projected pixels lie on the boxes (float32 depth: micrometres)
        assert distance_to_box_surfaces(world, center, half, yaw).max() < 2e-5
        # and on the sampled surfaces: near a sample, in its tangent plane, with its color
        d, j = tree.query(world)
        assert np.median(d) < 2 * spacing
        plane = np.abs(np.sum((world - room.coord[j]) * room.normal[j], axis=1))
        assert np.median(plane) < 1e-3
        color_err = np.abs(f.color.reshape(-1, 3)[pix].astype(np.float64) - room.color[j]).mean(1)
        assert np.median(color_err) < 8.0
        # the camera looks at the surface: normals face it
        view = f.cam_to_world[:3, 3] - world
        assert np.mean(np.sum(view * room.normal[j], axis=1) > 0) > 0.95


def test_ceiling_closes_the_room_and_is_ignored():
    r = make_room(1, num_points=4000, num_views=2, width=32, height=24, ceiling=True)
    assert (r.segment == -1).any() and (r.extra["segment20"][r.segment == -1] == -1).all()
    top = (r.coord[:, 2] > r.coord[:, 2].max() - 1e-4) & (r.normal[:, 2] < -0.5)  # faces looking down
    assert top.sum() > 100
    assert (r.segment[top] == -1).all()
    assert all((f.depth_m > 0).all() for f in r.frames)  # every ray hits something


def test_make_synthetic_cli_writes_loadable_rooms_and_keeps_existing(tmp_path):
    # the command line, run as its users do (a separate process) ...
    script = Path(__file__).resolve().parents[3] / "training" / "make_synthetic.py"
    run = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--rooms", "2", "--views", "2",
                          "--seed", "7", "--width", "32", "--height", "24", "--points", "3000", "--quiet"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert "wrote 2 rooms" in run.stderr
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == ["synthetic_0007", "synthetic_0008"]
    s = load_scene(tmp_path / "synthetic_0007", segment="segment")
    ref = make_room(7, num_points=3000, num_views=2, width=32, height=24)
    np.testing.assert_allclose(s.coord, ref.coord)
    np.testing.assert_array_equal(s.segment, ref.segment)
    assert s.class_names == SYNTHETIC_CLASSES and len(s.frames) == 2
    np.testing.assert_array_equal(s.frames.frame(1).color, ref.frames.frame(1).color)
    assert np.abs(s.frames.frame(1).depth_m - ref.frames.frame(1).depth_m).max() <= 0.0005 + 1e-6
    # ... and the library call it makes: existing rooms are kept, new ones written
    mtime = (tmp_path / "synthetic_0007" / "coord.npy").stat().st_mtime_ns
    cfg = RoomConfig(num_points=3000, num_views=2, width=32, height=24)
    assert write_rooms(tmp_path, 3, seed=7, cfg=cfg, progress=False) == 1
    assert (tmp_path / "synthetic_0007" / "coord.npy").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_0007", "synthetic_0008", "synthetic_0009"]
    assert write_rooms(tmp_path, 1, seed=7, cfg=cfg, overwrite=True, progress=False) == 1
    assert (tmp_path / "synthetic_0007" / "coord.npy").stat().st_mtime_ns != mtime
