"""Camera and rigid-body geometry shared by data loading, fusion and rendering.

Conventions: intrinsics K are 3x3 pinhole in pixels (OpenCV: x right, y down, z forward); poses are 4x4
homogeneous matrices named after what they map, e.g. ``cam_to_world``; quaternions are (w, x, y, z).
NumPy only; the differentiable rotation/covariance helpers live with the renderer (``render/reference.py``).
"""
from __future__ import annotations

import numpy as np
import transforms3d


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics for an image resized by (sx, sy) = (new_w / old_w, new_h / old_h).

    Pixel centres sit at integer coordinates + 0.5 in the continuous image, so the principal point maps
    as (c + 0.5) * s - 0.5.
    """
    K = np.asarray(K, dtype=np.float64).copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def rotation_z(angle_rad: float) -> np.ndarray:  # -> [3, 3] float32
    """Rotation by ``angle_rad`` about +z (counter-clockwise seen from above)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (or a stack [..., 4, 4])."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def is_valid_pose(T: np.ndarray, tol: float = 1e-3) -> bool:
    """True for a finite 4x4 rigid transform (orthonormal rotation, last row 0 0 0 1).

    ScanNet marks frames without tracking by -inf poses; those fail here.
    """
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return bool(np.allclose(R @ R.T, np.eye(3), atol=tol) and abs(np.linalg.det(R) - 1) < tol
                and np.allclose(T[3], [0, 0, 0, 1], atol=tol))


def transform_points(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points [N, 3]."""
    return pts @ T[:3, :3].T + T[:3, 3]


def backproject_depth(depth_m: np.ndarray, K: np.ndarray, max_depth_m: float = np.inf):
    """Camera-frame points of every valid depth pixel.

    depth_m: [H, W] float metres; zero, NaN, inf and values beyond max_depth_m are invalid.
    Returns (points_cam [M, 3] float32, pixel_index [M] int64 into the flattened image).
    """
    if depth_m.ndim != 2:
        raise ValueError(f"depth image has shape {depth_m.shape}, expected [H, W]")
    h, w = depth_m.shape
    flat = depth_m.reshape(-1)
    valid = np.isfinite(flat) & (flat > 0) & (flat <= max_depth_m)
    idx = np.flatnonzero(valid)
    z = flat[idx].astype(np.float32)
    u = (idx % w).astype(np.float32)
    v = (idx // w).astype(np.float32)
    x = (u - K[0, 2]) * z / K[0, 0]
    y = (v - K[1, 2]) * z / K[1, 1]
    return np.stack([x, y, z], axis=1).astype(np.float32), idx


def pose_from_quat(t_xyz, q_wxyz) -> np.ndarray:
    """4x4 from translation and unit quaternion (w, x, y, z)."""
    T = np.eye(4)
    T[:3, :3] = transforms3d.quaternions.quat2mat(np.asarray(q_wxyz, dtype=np.float64))
    T[:3, 3] = t_xyz
    return T


def quat_from_pose(T: np.ndarray):
    """(translation [3], quaternion (w, x, y, z) [4]) of a 4x4 rigid transform."""
    return np.asarray(T[:3, 3], dtype=np.float64), transforms3d.quaternions.mat2quat(T[:3, :3])
