"""Containers passed between the encoder, the Gaussian head, the renderer and the losses.

Every container is a plain dataclass of tensors. Batches follow the Pointcept convention: all items
concatenated along the first axis, with an ``offset`` tensor holding the cumulative end index of each
scene (``offset[-1] == N``), so there is never any padding.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor


def offset_to_batch(offset: Tensor) -> Tensor:
    """Cumulative end indices [B] -> per-row scene index [N] (int64)."""
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)


def _check_rows(name: str, t: Tensor, n: int, trailing: tuple) -> None:
    if t.shape[0] != n or tuple(t.shape[1:]) != trailing:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {(n, *trailing)}")


@dataclass
class PointBatch:
    """A batch of point clouds, concatenated.

    The rows are the points the encoder sees (normally one per occupied grid cell after grid sampling);
    ``inverse`` maps every original point back to its row so callers can return one value per input point.
    """

    coord: Tensor  # [N, 3] float32, metres, world (or augmented world) frame
    feat: Tensor  # [N, C] float32, input features (default C=6: RGB in 0..1 + unit normal)
    offset: Tensor  # [B] int64, cumulative end index of each scene; offset[-1] == N
    grid_coord: Optional[Tensor] = None  # [N, 3] int32, integer grid cell of each row (>= 0 per scene)
    inverse: Optional[Tensor] = None  # [N_orig] int64, row of the concatenated batch for each original point
    inverse_offset: Optional[Tensor] = None  # [B] int64, cumulative end index of original points per scene

    def __post_init__(self) -> None:
        n = self.coord.shape[0]
        if self.coord.ndim != 2 or self.coord.shape[1] != 3:
            raise ValueError(f"coord has shape {tuple(self.coord.shape)}, expected [N, 3]")
        if self.feat.ndim != 2 or self.feat.shape[0] != n:
            raise ValueError(f"feat has shape {tuple(self.feat.shape)}, expected [{n}, C]")
        if self.offset.ndim != 1 or len(self.offset) == 0 or int(self.offset[-1]) != n:
            raise ValueError(f"offset {self.offset.tolist()} must be non-empty and end at N={n}")
        if self.grid_coord is not None:
            _check_rows("grid_coord", self.grid_coord, n, (3,))

    @property
    def num_scenes(self) -> int:
        return len(self.offset)

    @property
    def batch(self) -> Tensor:
        """[N] int64 scene index per row."""
        return offset_to_batch(self.offset)

    def to(self, device) -> "PointBatch":
        return PointBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                             for f in fields(self)})


@dataclass
class Gaussians:
    """3D Gaussians of one or more scenes, concatenated; ``batch`` says which scene each belongs to."""

    means: Tensor  # [G, 3] float32, world metres
    quats: Tensor  # [G, 4] float32, rotation as unit quaternion (w, x, y, z)
    scales: Tensor  # [G, 3] float32, standard deviations along the rotated axes, metres (> 0)
    colors: Tensor  # [G, 3] float32, RGB in 0..1
    opacities: Tensor  # [G] float32, in 0..1
    features: Tensor  # [G, d_f] float32, low-dimensional feature rendered by eq. 15 (d_f may be 0)
    batch: Tensor  # [G] int64, scene index of each Gaussian

    def __post_init__(self) -> None:
        g = self.means.shape[0]
        _check_rows("means", self.means, g, (3,))
        _check_rows("quats", self.quats, g, (4,))
        _check_rows("scales", self.scales, g, (3,))
        _check_rows("colors", self.colors, g, (3,))
        _check_rows("opacities", self.opacities, g, ())
        if self.features.ndim != 2 or self.features.shape[0] != g:
            raise ValueError(f"features has shape {tuple(self.features.shape)}, expected [{g}, d_f]")
        _check_rows("batch", self.batch, g, ())

    def __len__(self) -> int:
        return self.means.shape[0]

    def select(self, mask: Tensor) -> "Gaussians":
        """Subset by a boolean mask [G] or index tensor."""
        return Gaussians(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def scene(self, b: int) -> "Gaussians":
        return self.select(self.batch == b)

    def to(self, device) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class Cameras:
    """Pinhole cameras, OpenCV convention (x right, y down, z forward)."""

    world_to_cam: Tensor  # [C, 4, 4] float32, rigid transform world -> camera
    K: Tensor  # [C, 3, 3] float32, intrinsics in pixels for the rendered width x height
    batch: Tensor  # [C] int64, scene index each camera looks at

    def __post_init__(self) -> None:
        c = self.world_to_cam.shape[0]
        _check_rows("world_to_cam", self.world_to_cam, c, (4, 4))
        _check_rows("K", self.K, c, (3, 3))
        _check_rows("batch", self.batch, c, ())

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    def to(self, device) -> "Cameras":
        return Cameras(self.world_to_cam.to(device), self.K.to(device), self.batch.to(device))


@dataclass
class RenderOutput:
    """What the renderer returns for C cameras of H x W pixels."""

    color: Tensor  # [C, H, W, 3] eq. 3, alpha-composited color (background black)
    depth: Tensor  # [C, H, W] eq. 14, alpha-composited camera-space z (not normalised by alpha)
    expected_depth: Tensor  # [C, H, W] depth / alpha where alpha > 0, else 0
    features: Tensor  # [C, H, W, d_f] eq. 15, alpha-composited features
    alpha: Tensor  # [C, H, W] accumulated opacity, 1 - prod(1 - alpha_i)
