"""Images and cameras: depth units, pinhole intrinsics checks and color registration.

The one place that knows

- depth units: inside the library depth is float32 metres, 0 = no measurement. On disk (SensReader PNGs)
  and on the wire (ROS ``16UC1``, REP 118) it is uint16 millimetres, where 0 means no measurement and so
  does 65535 (the largest value; 7-Scenes and some drivers use it for "no return"). So the largest depth
  that survives metres -> millimetres -> metres is 65.534 m; anything beyond becomes 0.
- what a usable pinhole ``K`` is (zero skew, positive focal lengths, finite);
- how a color image is resampled into another camera at the same pose (depth registration).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image

from gcross_core.errors import InputError

MM_PER_M = 1000.0
DEPTH_MM_INVALID = 65535  # uint16 millimetres that mean "no measurement" besides 0
MAX_DEPTH_MM = DEPTH_MM_INVALID - 1
SKEW_TOL = 1e-6  # |K[0, 1]|, |K[1, 0]| above this is a skewed camera, which nothing here models


def depth_mm_to_m(depth_mm: np.ndarray) -> np.ndarray:  # [H, W] uint16 mm -> [H, W] float32 m
    """Millimetres -> metres; 0 and 65535 become 0 (no measurement).

    A division (not a multiplication by 0.001) so uint16 millimetres and the float32 metres a driver
    computes as mm / 1000 give bit-identical values.
    """
    depth_mm = np.asarray(depth_mm)
    if depth_mm.dtype != np.uint16:
        raise InputError(f"depth has dtype {depth_mm.dtype}, expected uint16 millimetres")
    depth_m = depth_mm.astype(np.float32) / np.float32(MM_PER_M)
    depth_m[depth_mm == DEPTH_MM_INVALID] = 0.0
    return depth_m


def depth_m_to_mm(depth_m: np.ndarray) -> np.ndarray:  # [H, W] float m -> [H, W] uint16 mm
    """Metres -> rounded millimetres; NaN, inf, <= 0 and beyond 65.534 m become 0 (no measurement)."""
    d = np.asarray(depth_m, dtype=np.float64)
    mm = np.rint(np.where(np.isfinite(d), d, 0.0) * MM_PER_M)
    ok = (mm > 0) & (mm <= MAX_DEPTH_MM)
    return np.where(ok, mm, 0).astype(np.uint16)


_MM_TO_M_HINT = "convert millimetres once where the image is read (gcross_core.image.depth_mm_to_m)"


def check_depth_m(depth: np.ndarray) -> np.ndarray:  # [H, W] float32 metres -> the same array
    """``depth`` if it is an [H, W] float32 image of metres; else an InputError.

    Nothing past the reader that decoded a depth image takes millimetres: an integer image here is
    millimetres that were never converted, which would otherwise read as depths 1000 times too far.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise InputError(f"depth has shape {depth.shape}, expected [H, W]")
    if depth.dtype != np.float32:
        if np.issubdtype(depth.dtype, np.integer):
            raise InputError(f"depth has dtype {depth.dtype}, but depth must be float32 metres; {_MM_TO_M_HINT}")
        raise InputError(f"depth has dtype {depth.dtype}, expected float32 metres")
    return depth


def has_valid_depth(depth_m: np.ndarray, max_depth_m: float) -> bool:  # depth_m: [H, W] float32
    """True when some pixel of a depth image in metres holds a reading in (0, ``max_depth_m``].

    Checked before any other work, so that a frame without depth costs nothing. NaN and inf compare
    false and drop out.
    """
    depth_m = check_depth_m(depth_m)
    return bool(np.any((depth_m > 0) & (depth_m <= max_depth_m)))


def check_intrinsics(K, name: str = "K") -> np.ndarray:  # -> [3, 3] float64
    """``K`` as float64 if it is a finite zero-skew pinhole matrix with fx, fy > 0; else an InputError."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"{name} has shape {K.shape}, expected [3, 3] pinhole intrinsics")
    if not np.all(np.isfinite(K)):
        raise InputError(f"{name} contains NaN or inf, expected finite intrinsics")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(f"{name} has focal lengths fx={K[0, 0]}, fy={K[1, 1]}, expected both > 0")
    if abs(K[0, 1]) > SKEW_TOL or abs(K[1, 0]) > SKEW_TOL or not np.allclose(K[2], [0, 0, 1]):
        raise InputError(f"{name} is {K.tolist()}, expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    return K


def _target_to_color(K_color: np.ndarray, K_target: np.ndarray) -> Tuple[float, float, float, float]:
    """(a, b, c, d) with color pixel ``(a u + b, c v + d)`` seen by target pixel (u, v), same pose.

    Both intrinsics have zero skew, so ``K_color @ inv(K_target)`` is an axis-aligned affine map.
    """
    M = np.asarray(K_color, np.float64) @ np.linalg.inv(np.asarray(K_target, np.float64))
    return M[0, 0], M[0, 2], M[1, 1], M[1, 2]


def resample_color(color: np.ndarray,  # [Hc, Wc, 3] uint8
                   K_color: np.ndarray,  # [3, 3] intrinsics of ``color``
                   K_target: np.ndarray,  # [3, 3] intrinsics of the wanted image (same pose)
                   width: int, height: int) -> np.ndarray:  # -> [height, width, 3] uint8
    """Color image as seen by another pinhole camera at the same pose (area-averaged when shrinking).

    Target pixel -> color pixel is an axis-aligned affine map (:func:`_target_to_color`): a crop-and-resize,
    which PIL does with sub-pixel boxes. Pixel centres sit at integer indices (see
    ``geometry.scale_intrinsics``); PIL's box is in pixel-edge coordinates, hence the +-0.5.
    """
    hc, wc = color.shape[:2]
    a, b, c, d = _target_to_color(K_color, K_target)
    box = (b - 0.5 * a + 0.5, d - 0.5 * c + 0.5, a * (width - 0.5) + b + 0.5, c * (height - 0.5) + d + 0.5)
    if (width, height) == (wc, hc) and np.allclose(box, (0, 0, wc, hc), atol=1e-6):
        return color.copy()
    box = np.array(box)
    overshoot = max(-box[0], -box[1], box[2] - wc, box[3] - hc)
    if overshoot > 1e-6:
        # The target sees past the color image's border (PIL refuses such boxes): extend it by its edge.
        pad = int(np.ceil(overshoot)) + 1
        color = np.pad(color, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        box = box + pad
    else:
        box = np.clip(box, 0, [wc, hc, wc, hc])  # rounding error only
    # shrinking: area averaging (exact block means at integer factors); enlarging: bilinear
    resample = Image.BOX if max(a, c) > 1 + 1e-9 else Image.BILINEAR
    out = Image.fromarray(color).resize((int(width), int(height)), resample, box=tuple(map(float, box)))
    return np.asarray(out)


def resample_ids_nearest(ids: np.ndarray,  # [Hc, Wc] integer ids (labels, instances) in the color camera
                         K_color: np.ndarray,  # [3, 3] intrinsics of ``ids``
                         K_target: np.ndarray,  # [3, 3] intrinsics of the wanted image (same pose)
                         width: int, height: int) -> np.ndarray:  # -> [height, width] same dtype
    """An id image (2D labels) as seen by another pinhole camera at the same pose, by nearest neighbour:
    ids are never blended. Target pixels that fall outside the source image get 0 (= none)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"id image has shape {ids.shape}, expected [H, W]")
    hc, wc = ids.shape
    if (width, height) == (wc, hc) and np.allclose(K_color, K_target):
        return ids.copy()
    a, b, c, d = _target_to_color(K_color, K_target)
    u = np.rint(a * np.arange(width) + b).astype(np.int64)
    v = np.rint(c * np.arange(height) + d).astype(np.int64)
    out = np.zeros((int(height), int(width)), dtype=ids.dtype)
    iu, iv = (u >= 0) & (u < wc), (v >= 0) & (v < hc)
    out[np.ix_(iv, iu)] = ids[np.ix_(v[iv], u[iu])]
    return out


def color_seen_mask(color_hw: Tuple[int, int],  # (Hc, Wc) of the color image
                    K_color: np.ndarray,  # [3, 3]
                    K_target: np.ndarray,  # [3, 3] of the wanted image (same pose)
                    width: int, height: int) -> np.ndarray:  # -> [height, width] bool
    """Target pixels whose centre falls on the color image (the map of :func:`_target_to_color`).

    A depth camera with a wider field of view than the color camera (ScanNet's) sees a border the color
    camera does not; :func:`resample_color` extends the color's edge there, this mask says where.
    """
    hc, wc = int(color_hw[0]), int(color_hw[1])
    a, b, c, d = _target_to_color(K_color, K_target)
    x = a * np.arange(int(width)) + b
    y = c * np.arange(int(height)) + d
    eps = 1e-6
    return (((y >= -0.5 - eps) & (y <= hc - 0.5 + eps))[:, None]
            & ((x >= -0.5 - eps) & (x <= wc - 0.5 + eps))[None, :])


def register_color_to_depth(color: np.ndarray,  # [Hc, Wc, 3] uint8
                            K_color: np.ndarray,  # [3, 3]
                            K_depth: np.ndarray,  # [3, 3]
                            depth_hw: Tuple[int, int],
                            ) -> Tuple[np.ndarray, np.ndarray]:  # ([Hd, Wd, 3] uint8, [Hd, Wd] bool seen)
    """The color image resampled into the depth camera (shared pose), and where the color camera sees.

    The depth camera may see beyond the color image (ScanNet's depth field of view is wider): ``seen``
    is False there, and depth without a color of its own is dropped by the callers.
    """
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[2] != 3 or color.dtype != np.uint8:
        raise InputError(f"color image has shape {color.shape} {color.dtype}, expected [H, W, 3] uint8")
    hd, wd = int(depth_hw[0]), int(depth_hw[1])
    rgb = resample_color(color, K_color, K_depth, wd, hd)
    return rgb, color_seen_mask(color.shape[:2], K_color, K_depth, wd, hd)


def resize_depth_nearest(depth_m: np.ndarray, width: int, height: int) -> np.ndarray:
    """[Hd, Wd] -> [height, width] by nearest neighbour (no averaging across depth edges)."""
    hd, wd = depth_m.shape
    if (hd, wd) == (height, width):
        return depth_m.copy()
    rows = np.minimum(((np.arange(height) + 0.5) * hd / height).astype(np.int64), hd - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * wd / width).astype(np.int64), wd - 1)
    return depth_m[rows[:, None], cols[None, :]]
