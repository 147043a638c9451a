"""Packed voxel keys: three signed integer voxel coordinates in one non-negative int64 (numba-free, so that
the map's key helpers import without the compiled kernels)."""
from __future__ import annotations

import numpy as np


KEY_BITS = 21  # bits per axis in a packed voxel key: 3 * 21 = 63 bits fit a non-negative int64
KEY_OFFSET = 1 << (KEY_BITS - 1)  # voxel coordinates in [-2^20, 2^20): +-21 km at 2 cm voxels
KEY_MASK = (1 << KEY_BITS) - 1


def pack_keys(grid: np.ndarray) -> np.ndarray:
    """Integer voxel coordinates [N, 3] (within +-2^20) -> packed int64 keys [N]; order is x, then y, then z."""
    g = grid.astype(np.int64) + KEY_OFFSET
    return (g[:, 0] << (2 * KEY_BITS)) | (g[:, 1] << KEY_BITS) | g[:, 2]


def unpack_keys(keys: np.ndarray) -> np.ndarray:
    """Packed voxel keys [N] int64 -> integer voxel coordinates [N, 3] int64."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.stack([(keys >> (2 * KEY_BITS)) & KEY_MASK, (keys >> KEY_BITS) & KEY_MASK, keys & KEY_MASK],
                    axis=1) - KEY_OFFSET
