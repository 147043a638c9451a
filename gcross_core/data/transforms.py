"""Pretraining augmentation (paper Table S.1) that keeps the camera views aligned with the points.

Table S.1: rotation about z in [-pi, pi], about x and y in [-pi/64, pi/64], scaling in [0.9, 1.1],
random flip (p = 0.5), point shuffle; all with p = 1 except the flip. As in Pointcept, the rotations turn
about the centre of the scene's bounding box and the flip mirrors x and y independently; afterwards the
scene is shifted so that its box is centred in x, y and starts at z = 0 (Pointcept's CenterShift).

The whole geometric part is one 4x4 matrix ``A = [s Q | a]`` with Q orthogonal (det -1 after a single
flip): points ``p' = A p``, normals ``n' = Q n``. Every view follows:

- cameras: ``world_to_cam' = diag(s, s, s, 1) @ world_to_cam @ A^-1``. The camera point of ``p'`` is then
  ``s`` times the camera point of ``p``: the same pixel, at ``s`` times the depth, so
- depth maps are multiplied by ``s``; the images stay as they are.

With a flip, ``world_to_cam'`` has a rotation part with det -1 (a reflected camera). Projection
``R p + t`` and ``Sigma_cam = R Sigma R^T`` are unchanged by that, so renderers that do not assume an
orthonormal, right-handed R render the same pixels; images, depth and cached teacher features stay valid
as they are. ``flip_cameras="mirror_image"`` instead keeps every camera rigid: it composes the
reflection with a mirror of the camera x axis and flips the image, the depth map and cached features
left-right (``cx -> W - 1 - cx``), so the augmented points land on the mirrored pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from gcross_core.errors import ConfigError

FLIP_CAMERA_MODES = ("reflect", "mirror_image")


@dataclass(frozen=True)
class AugmentConfig:
    rotate_z_rad: float = math.pi  # Table S.1: z rotation uniform in [-pi, pi]
    rotate_xy_rad: float = math.pi / 64  # Table S.1: x and y rotations uniform in [-pi/64, pi/64]
    scale: Tuple[float, float] = (0.9, 1.1)  # Table S.1: uniform scaling
    flip_p: float = 0.5  # Table S.1; applied to x and to y independently, as Pointcept's RandomFlip
    shuffle: bool = True  # Table S.1: shuffle the point order
    center_shift: bool = True  # centre x, y and put z_min at 0 after augmenting
    flip_cameras: str = "reflect"  # "reflect" or "mirror_image" (see the module docstring)

    def __post_init__(self) -> None:
        if self.flip_cameras not in FLIP_CAMERA_MODES:
            raise ConfigError(f"flip_cameras={self.flip_cameras!r}: expected one of {FLIP_CAMERA_MODES}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"scale range {self.scale} must satisfy 0 < low <= high")
        if not 0 <= self.flip_p <= 1:
            raise ConfigError(f"flip_p must be in [0, 1], got {self.flip_p}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation (evaluation, visual checks)."""
        return cls(rotate_z_rad=0.0, rotate_xy_rad=0.0, scale=(1.0, 1.0), flip_p=0.0, shuffle=False,
                   center_shift=False)


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def _translation(t) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = t
    return T


@dataclass(frozen=True)
class Augmentation:
    """One drawn augmentation: ``p' = matrix @ [p, 1]`` with ``matrix[:3, :3] = scale * Q``."""

    matrix: np.ndarray  # [4, 4] float64
    scale: float
    flip_cameras: str = "reflect"

    @property
    def rotation(self) -> np.ndarray:
        """[3, 3] orthogonal part Q (det -1 when the scene is mirrored)."""
        return self.matrix[:3, :3] / self.scale

    @property
    def reflects(self) -> bool:
        return bool(np.linalg.det(self.matrix[:3, :3]) < 0)

    def points(self, coord: np.ndarray) -> np.ndarray:  # [N, 3] -> [N, 3] float32
        return (coord @ self.matrix[:3, :3].T + self.matrix[:3, 3]).astype(np.float32)

    def normals(self, normal: np.ndarray) -> np.ndarray:  # [N, 3] -> [N, 3] float32
        # Q is orthogonal and the scaling uniform, so normals turn with Q and keep unit length.
        return (normal @ self.rotation.T).astype(np.float32)

    def world_to_cam(self, world_to_cam: np.ndarray) -> np.ndarray:
        """[..., 4, 4] original world_to_cam -> augmented (reflected when ``reflects``; see module doc)."""
        S = np.diag([self.scale, self.scale, self.scale, 1.0])
        return S @ np.asarray(world_to_cam, dtype=np.float64) @ np.linalg.inv(self.matrix)

    @property
    def mirrors_images(self) -> bool:
        """True when views are flipped left-right (``mirror_image`` mode and a reflecting draw)."""
        return self.flip_cameras == "mirror_image" and self.reflects

    def view(self,
             world_to_cam: np.ndarray,  # [4, 4]
             K: np.ndarray,  # [3, 3] intrinsics of the images below
             image: np.ndarray,  # [H, W, 3]
             depth_m: np.ndarray,  # [H, W] float metres, 0 = invalid
             ):
        """One view of the augmented scene: (world_to_cam' [4, 4], K' [3, 3], image', depth_m')."""
        image, depth_m = np.asarray(image), np.asarray(depth_m)
        if image.ndim != 3 or depth_m.shape != image.shape[:2]:
            raise ValueError(f"image {image.shape} and depth {depth_m.shape} must be [H, W, 3] and [H, W]")
        w2c = self.world_to_cam(world_to_cam)
        K = np.asarray(K, dtype=np.float64).copy()
        depth = (depth_m * np.float32(self.scale)).astype(np.float32)
        if self.mirrors_images:
            w2c = np.diag([-1.0, 1.0, 1.0, 1.0]) @ w2c  # mirror the camera x axis: rigid again
            K[0, 2] = image.shape[1] - 1 - K[0, 2]  # pixel u -> W - 1 - u
            image = image[:, ::-1]
            depth = depth[:, ::-1]
        return w2c, K, np.ascontiguousarray(image), np.ascontiguousarray(depth)


def sample_augmentation(coord: np.ndarray,  # [N, 3] original points (for the rotation centre and shift)
                        cfg: AugmentConfig, rng: np.random.Generator) -> Augmentation:
    """Draw one augmentation of Table S.1 for a scene."""
    coord = np.asarray(coord, dtype=np.float64)
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise ValueError(f"coord has shape {coord.shape}, expected non-empty [N, 3]")
    center = (coord.min(0) + coord.max(0)) / 2
    # Order as Pointcept's pipeline: rotate z, x, y, then scale, then flip.
    Q = (_rot(1, rng.uniform(-cfg.rotate_xy_rad, cfg.rotate_xy_rad))
         @ _rot(0, rng.uniform(-cfg.rotate_xy_rad, cfg.rotate_xy_rad))
         @ _rot(2, rng.uniform(-cfg.rotate_z_rad, cfg.rotate_z_rad)))
    s = float(rng.uniform(*cfg.scale))
    flip = np.diag([-1.0 if rng.random() < cfg.flip_p else 1.0, -1.0 if rng.random() < cfg.flip_p else 1.0, 1.0])
    L = np.eye(4)
    L[:3, :3] = s * flip @ Q
    A = _translation(center) @ L @ _translation(-center)
    if cfg.center_shift:
        moved = coord @ A[:3, :3].T + A[:3, 3]
        lo, hi = moved.min(0), moved.max(0)
        A = _translation([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]]) @ A
    return Augmentation(A, s, cfg.flip_cameras)


class SampleStream:
    """The random generator a dataset's ``__getitem__`` draws from when no caller passes one.

    Seeded by the dataset's ``seed`` and, inside a DataLoader worker, also by that worker's seed (torch
    derives it from the loader's generator), so workers never repeat each other's draws and the global
    numpy RNG is neither read nor advanced. Reproducible runs go through ``dataset.sample(index, rng)``
    with a generator per (seed, epoch, index) instead (the trainer's ``SeededDataset``).
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._worker_seed: Optional[int] = None
        self._rng: Optional[np.random.Generator] = None

    def generator(self) -> np.random.Generator:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker_seed = None if info is None else int(info.seed)
        if self._rng is None or worker_seed != self._worker_seed:
            self._worker_seed = worker_seed
            self._rng = np.random.default_rng(self.seed if worker_seed is None else [self.seed, worker_seed])
        return self._rng
