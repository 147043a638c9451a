"""The up direction of a scene whose world frame is not gravity-aligned, and the transform making it +z.

The encoder is trained on scenes whose z axis points up (ScanNet, the synthetic rooms; the pretraining
augmentations rotate about z only, paper Table S.1). Scenes recorded in a camera's frame break that:
mOSD's frames have the identity pose (world = the first camera's optical frame: y down, z forward, the
table tilted in it), 7-Scenes' world frame is its first camera. Three ways to give the up direction:

- ``cameras``: the mean camera "down" over a sequence, negated (:func:`up_from_cameras`). A hand-held or
  robot-mounted camera is held roughly upright, so its image y axis (down in the OpenCV camera frame)
  averages to gravity over many frames. Needs several frames with varied yaw; useless for one frame
  whose camera looks down at a table (it then returns the camera's own tilt).
- ``plane``: the normal of the dominant plane of the points (:func:`up_from_plane`, RANSAC), oriented
  toward the cameras. Right for a tabletop or a floor that fills much of the view; wrong when a wall
  dominates.
- ``given``: the user states the up vector in world coordinates.

The tabletop configs (mOSD) use ``plane``: each mOSD scene is one frame looking down at a table that is
the largest surface in view, so the table normal is gravity. The real-frame pretraining scenes from
7-Scenes use ``cameras``: a room sequence of hundreds of hand-held frames whose dominant plane may be
a wall. :func:`rotation_to_z_up` turns the estimate into the rigid transform applied to the points
(or to every camera pose).
NumPy only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gcross_core.errors import InputError

UP_METHODS = ("cameras", "plane", "given")


def _unit(v, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise InputError(f"{what} is {v.tolist()}, expected 3 finite numbers")
    n = float(np.linalg.norm(v))
    if n < 1e-9:
        raise InputError(f"{what} is the zero vector, expected a direction")
    return v / n


def up_from_cameras(cam_to_world: np.ndarray,  # [N, 4, 4] camera-to-world poses
                    camera_down: Sequence[float] = (0.0, 1.0, 0.0),  # "down" in the camera frame (OpenCV: +y)
                    ) -> np.ndarray:
    """Unit up vector [3]: minus the mean over the frames of the camera's down axis in world coordinates.

    Raises InputError when the poses are not [N, 4, 4] finite, or when the down axes cancel out (cameras
    rolled every way: the mean is shorter than 0.1), where no up direction can be read off them.
    """
    T = np.asarray(cam_to_world, dtype=np.float64)
    if T.ndim == 2:
        T = T[None]
    if T.ndim != 3 or T.shape[1:] != (4, 4) or len(T) == 0:
        raise InputError(f"cam_to_world has shape {T.shape}, expected [N, 4, 4] camera-to-world poses, N >= 1")
    if not np.all(np.isfinite(T)):
        raise InputError("cam_to_world holds NaN or inf, expected finite poses")
    d = _unit(camera_down, "camera_down")
    downs = T[:, :3, :3] @ d  # [N, 3] world direction of each camera's down axis
    norms = np.linalg.norm(downs, axis=1, keepdims=True)
    mean = (downs / np.maximum(norms, 1e-12)).mean(axis=0)
    if np.linalg.norm(mean) < 0.1:
        raise InputError(f"the down axes of the {len(T)} cameras cancel out (mean length "
                         f"{np.linalg.norm(mean):.3f}); give the up direction or use the plane method")
    return -mean / np.linalg.norm(mean)


def up_from_plane(points: np.ndarray,  # [N, 3] metres
                  distance_threshold: float = 0.01,  # inlier distance to the plane, metres
                  iterations: int = 500,
                  seed: int = 0,
                  toward: Optional[np.ndarray] = None,  # [K, 3] or [3] camera centres: the normal faces them
                  max_points: int = 50_000,
                  ) -> np.ndarray:
    """Unit normal [3] of the dominant plane (most inliers), refined by least squares on its inliers.

    RANSAC with a seeded generator, so the result is reproducible. Orientation: toward the mean of
    ``toward`` (the cameras see the top of a table or floor); without it, toward the side holding more
    of the off-plane points (objects stand on a table, furniture on a floor).
    Raises InputError for fewer than 3 finite points or a degenerate (collinear) cloud.
    """
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3:
        raise InputError(f"points has shape {P.shape}, expected [N, 3]")
    P = P[np.all(np.isfinite(P), axis=1)]
    if len(P) < 3:
        raise InputError(f"points holds {len(P)} finite points, expected at least 3 to fit a plane")
    if not distance_threshold > 0:
        raise InputError(f"distance_threshold must be > 0, got {distance_threshold}")
    rng = np.random.default_rng(seed)
    sample = P if len(P) <= max_points else P[rng.choice(len(P), max_points, replace=False)]
    best_n, best_count = None, -1
    for _ in range(max(int(iterations), 1)):
        a, b, c = sample[rng.choice(len(sample), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        count = int((np.abs((sample - a) @ n) < distance_threshold).sum())
        if count > best_count:
            best_n, best_count, best_a = n, count, a
    if best_n is None:
        raise InputError("points are collinear or coincident; no plane can be fitted")
    inl = sample[np.abs((sample - best_a) @ best_n) < distance_threshold]
    centroid = inl.mean(axis=0)
    if len(inl) >= 3:
        _, _, vt = np.linalg.svd(inl - centroid, full_matrices=False)
        n = vt[2]
    else:
        n = best_n
    if toward is not None:
        t = np.asarray(toward, dtype=np.float64).reshape(-1, 3)
        side = float((t.mean(axis=0) - centroid) @ n)
    else:
        dist = (sample - centroid) @ n
        off = np.abs(dist) >= distance_threshold
        side = float(np.sign(dist[off]).sum())
    return n if side >= 0 else -n


def rotation_to_z_up(up: Sequence[float]) -> np.ndarray:
    """[4, 4] rigid transform (pure rotation) that maps the unit vector ``up`` onto +z.

    The smallest such rotation (about up x z); up = -z gives the half turn about x.
    """
    u = _unit(up, "up")
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(u, z)
    s, c = float(np.linalg.norm(v)), float(u @ z)
    T = np.eye(4)
    if s < 1e-12:
        if c < 0:
            T[:3, :3] = np.diag([1.0, -1.0, -1.0])
        return T
    k = v / s
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    T[:3, :3] = np.eye(3) + s * Kx + (1 - c) * (Kx @ Kx)  # Rodrigues
    return T


def parse_up(text: str) -> tuple:
    """``cameras`` / ``plane`` / ``x,y,z`` (a given up vector) -> (method, up or None) for :func:`estimate_up`."""
    t = str(text).strip().lower()
    if t in ("cameras", "plane"):
        return t, None
    try:
        vals = [float(x) for x in t.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise InputError(f"up {text!r}: expected 'cameras', 'plane' or three comma-separated numbers x,y,z")
    return "given", tuple(_unit(vals, f"up {text!r}"))


def estimate_up(frames, method: str = "cameras", up: Optional[Sequence[float]] = None, *,
                points: Optional[np.ndarray] = None, every: int = 1,
                distance_threshold: float = 0.01, seed: int = 0) -> np.ndarray:
    """Unit up vector [3] of a scene's world frame, from its frames (a ``FrameSet``; every ``every``-th).

    method ``cameras``: :func:`up_from_cameras` over the frame poses. ``plane``: :func:`up_from_plane` over
    ``points`` [N, 3] (required: a scene's points, or its frames fused first with
    ``gcross_core.mapping.frame_sets.fuse_frames_to_points``), oriented toward the camera centres.
    ``given``: ``up`` normalised.
    """
    if method not in UP_METHODS:
        raise InputError(f"up method {method!r} is unknown, expected one of {', '.join(UP_METHODS)}")
    if method == "given":
        if up is None:
            raise InputError("up method 'given' needs the up vector (x, y, z)")
        return _unit(up, "up")
    if frames is None or len(frames) == 0:
        raise InputError(f"up method {method!r} needs frames, got none")
    idx = list(range(0, len(frames), max(int(every), 1)))
    poses = np.stack([frames.cam_to_world(i) for i in idx])
    if method == "cameras":
        return up_from_cameras(poses)
    if points is None:
        raise InputError("up method 'plane' needs the scene's points (fuse its frames first: "
                         "gcross_core.mapping.frame_sets.fuse_frames_to_points)")
    return up_from_plane(points, distance_threshold=distance_threshold, seed=seed, toward=poses[:, :3, 3])
