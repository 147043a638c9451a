"""Rasterization settings shared by both render backends, and the backend names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from gcross_core.errors import ConfigError

BACKENDS = ("auto", "reference", "gsplat")


@dataclass(frozen=True)
class RenderConfig:
    """Rasterization settings shared by both backends (gsplat 'classic' conventions)."""

    near_plane_m: float = 0.01  # Gaussians whose camera z is below this are culled
    far_plane_m: float = 1e10
    eps2d: float = 0.3  # px^2 added to the diagonal of Sigma_2D so that tiny Gaussians still cover a pixel
    tile_size: Optional[int] = None  # px; None: 8 for the reference (fastest on CPU), 16 for gsplat (1..32 there)
    chunk_size: int = 32  # reference only: Gaussians per tile composited per step; changes speed only
    batch_elements: int = 1 << 19  # reference only: tiles x chunk x tile pixels per step (working memory)

    def __post_init__(self) -> None:
        if not 0 < self.near_plane_m < self.far_plane_m:
            raise ConfigError(f"need 0 < near_plane_m < far_plane_m, got {self.near_plane_m}, {self.far_plane_m}")
        if self.eps2d < 0:
            raise ConfigError(f"eps2d must be >= 0, got {self.eps2d}")
        if self.tile_size is not None and self.tile_size < 1:
            raise ConfigError(f"tile_size must be a positive number of pixels or None, got {self.tile_size}")
        if self.chunk_size < 1 or self.batch_elements < 1:
            raise ConfigError(f"chunk_size and batch_elements must be >= 1, got {self.chunk_size}, "
                              f"{self.batch_elements}")
